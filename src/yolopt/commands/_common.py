"""Helpers shared by CLI sub-commands: loading models for a command, JSON output."""

from __future__ import annotations

import logging

import torch

from ..fileio import write_json  # noqa: F401 - re-used by commands
from ..ops.sizes import check_imgsz
from ..runtime.device import pick_device  # noqa: F401

log = logging.getLogger("yolopt")


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


def add_common_model_args(p, imgsz: int = 640) -> None:
    p.add_argument("--imgsz", type=int, default=imgsz, help=f"inference size in pixels (default {imgsz}); rounded up to the model stride")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel inference streams (separate sessions in threads; default 1)")
    p.add_argument("--threads", type=int, help="intra-op threads per session (default: runtime's choice)")
    p.add_argument("--device", default="auto", help="cpu, cuda:0 / 0, or auto (CUDA when available; default)")
