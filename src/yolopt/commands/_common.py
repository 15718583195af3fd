"""Helpers shared by CLI sub-commands: loading models for a command, JSON output."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..evaluate.validate import check_imgsz
from ..models.checkpoint import atomic_write, load_model

log = logging.getLogger("yolopt")


def pick_device(spec: str | None) -> torch.device:
    if spec in (None, "", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec.isdigit():
        spec = f"cuda:{spec}"
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from ..errors import YoloptError

        raise YoloptError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
    return dev


def load_for_inference(weights: str, imgsz: int, device: torch.device):
    """Load, fuse and move a model; returns (model, imgsz rounded to the stride)."""
    model = load_model(weights).fuse().to(device).eval()
    imgsz = check_imgsz(imgsz, int(model.stride.max()))
    return model, imgsz


def write_json(path: str | Path, payload) -> None:
    text = json.dumps(payload, indent=1, default=float)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
    log.info("wrote %s", path)


def add_common_model_args(p, imgsz: int = 640) -> None:
    p.add_argument("--imgsz", type=int, default=imgsz, help=f"inference size in pixels (default {imgsz}); rounded up to the model stride")
    p.add_argument("--device", default="auto", help="cpu, cuda:0 / 0, or auto (CUDA when available; default)")
