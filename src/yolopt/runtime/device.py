"""Device selection: one rule for every command and for training."""

from __future__ import annotations

import torch

from ..errors import YoloptError


def pick_device(spec: str | torch.device | None) -> torch.device:
    """``None``/``auto`` -> cuda:0 when available else cpu; ``0`` -> cuda:0; ``cpu``, ``cuda:1``..."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec in (None, "", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec.isdigit():
        spec = f"cuda:{spec}"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise YoloptError(f"--device {spec}: not a device (use cpu, cuda:0 or 0)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise YoloptError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
    return dev
