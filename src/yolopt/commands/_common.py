"""Helpers shared by CLI sub-commands: loading models for a command, JSON output."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..evaluate.validate import check_imgsz
from ..models.checkpoint import atomic_write

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


def load_for_inference(weights: str, imgsz: int, device: torch.device, threads: int | None = None,
                       workers: int = 1):
    """Open any model file through :mod:`yolopt.runtime`; returns (backend, imgsz).

    PyTorch weights are fused and moved to ``device``; exported artifacts (.onnx, .xml,
    .torchscript, .engine) run on their own runtime. For a fixed-shape artifact ``imgsz`` becomes
    the artifact's input size. ``workers > 1`` spreads each batch over that many sessions.
    """
    from ..runtime import ParallelBackend, backend_for
    from ..runtime import load as load_backend

    kind = backend_for(weights)
    kwargs = {"device": device} if kind in ("torch", "torchscript") else {}
    if kind == "tensorrt":
        kwargs = {"device": str(device) if device.type == "cuda" else "cuda:0"}
    if workers > 1 and threads is None:
        import os

        threads = max(1, (os.cpu_count() or 1) // workers)
    if threads:
        torch.set_num_threads(int(threads))  # pre/post-processing (letterbox, NMS) runs in torch too
    backend = load_backend(weights, threads=threads, **kwargs)
    if not backend.dynamic and backend.imgsz:
        if imgsz != backend.imgsz[0] or backend.imgsz[0] != backend.imgsz[1]:
            log.warning("%s has a fixed %dx%d input; using it instead of --imgsz %d", weights, *backend.imgsz, imgsz)
        imgsz = backend.imgsz[0] if backend.imgsz[0] == backend.imgsz[1] else backend.imgsz
    else:
        imgsz = check_imgsz(imgsz, int(backend.stride.max()))
    if workers > 1:
        backend = ParallelBackend(backend, workers)
    return backend, imgsz


def write_json(path: str | Path, payload) -> None:
    text = json.dumps(payload, indent=1, default=float)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
    log.info("wrote %s", path)


def add_common_model_args(p, imgsz: int = 640) -> None:
    p.add_argument("--imgsz", type=int, default=imgsz, help=f"inference size in pixels (default {imgsz}); rounded up to the model stride")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel inference streams (separate sessions in threads; default 1)")
    p.add_argument("--threads", type=int, help="intra-op threads per session (default: runtime's choice)")
    p.add_argument("--device", default="auto", help="cpu, cuda:0 / 0, or auto (CUDA when available; default)")
