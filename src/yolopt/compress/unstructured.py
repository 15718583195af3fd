"""Unstructured magnitude pruning, kept for comparison with channel pruning.

    >>> from yolopt.compress.unstructured import magnitude_prune
    >>> res = magnitude_prune(model, sparsity=0.5)      # a copy; half of the conv weights set to 0

Weights are zeroed with ``torch.nn.utils.prune`` (global L1 over every ``Conv2d`` except the Detect
outputs) and the masks are made permanent (``prune.remove``): the zeros stay *inside dense tensors*.
So the model has exactly as many parameters, the same file size and the same FLOPs, and dense
runtimes (PyTorch, ONNX Runtime, OpenVINO on CPU) run it no faster; the report says so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import YoloptError
from ..models.yolo import DetectionModel


@dataclass
class UnstructuredResult:
    """``model``: the copy with zeros. ``sparsity``: the fraction of prunable weights that are 0."""

    model: DetectionModel
    sparsity: float
    params: int  # parameter count: unchanged by design
    zeros: int  # weights equal to 0 after pruning
    prunable: int  # weights that took part

    def to_dict(self) -> dict:
        return {"method": "magnitude", "sparsity": self.sparsity, "params_before": self.params,
                "params_after": self.params, "zeros": self.zeros, "prunable": self.prunable,
                "note": "unstructured: zeros stay in dense tensors; same parameter count, size and FLOPs, and no "
                        "speed-up on dense runtimes"}


def magnitude_prune(model: DetectionModel, sparsity: float) -> UnstructuredResult:
    """A copy of ``model`` with the ``sparsity`` fraction of smallest-|w| conv weights (global) set to 0."""
    import torch.nn.utils.prune as tprune

    if not 0.0 < sparsity < 1.0:
        raise YoloptError(f"sparsity {sparsity:g}: must be between 0 and 1 (exclusive)", fields=("sparsity",))
    m = copy.deepcopy(model).eval()
    det = set(m.detect.m)
    convs = [(mod, "weight") for mod in m.modules() if isinstance(mod, nn.Conv2d) and mod not in det]
    tprune.global_unstructured(convs, pruning_method=tprune.L1Unstructured, amount=sparsity)
    for mod, name in convs:
        tprune.remove(mod, name)  # permanent: weight is a plain dense Parameter again
    with torch.no_grad():
        zeros = sum(int((mod.weight == 0).sum()) for mod, _ in convs)
        total = sum(mod.weight.numel() for mod, _ in convs)
    return UnstructuredResult(m, zeros / total, m.num_params(), zeros, total)
