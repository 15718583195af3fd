"""Compression: structured channel pruning (Torch-Pruning dependency graph), BN-L1 sparsity training,
least-squares reconstruction of a pruned model's convs from the unpruned one (no labels), output
distillation, function-preserving widening of a C3 block (give a pruned model channels back where it
lacks them), unstructured magnitude pruning (for comparison). See docs/compress.md.

    >>> from yolopt.compress import PruneSpec, prune
    >>> res = prune(model, PruneSpec(ratio=0.3, method="slim", round_to=8))
    >>> yolopt.save(res.model, "pruned.safetensors")

The whole ``yolopt prune`` workflow (measure, prune, reconstruct, fine-tune, save, report):

    >>> rep = run_prune(PruneWorkflowSpec("yolov5n.pt", target_flops=0.5, data="coco128.yaml", finetune=4))
"""

from ..engine.distill import OutputDistillation, check_teacher, output_distillation_loss
from .prune import (
    BACKENDS,
    METHODS,
    ChannelPruner,
    PruneResult,
    PruneSpec,
    layer_channels,
    measure_latency,
    model_flops,
    prune,
)
from .recipe import CompressReport, CompressSpec, run_compress
from .reconstruct import FitOptions, ReconstructStats, reconstruct
from .sparsity import BNSparsity, safe_prune_ratio
from .unstructured import magnitude_prune
from .widen import widen_c3
from .workflow import PruneReport, PruneStep, PruneSummary, PruneWorkflowSpec, run_prune

__all__ = ["BNSparsity", "OutputDistillation", "check_teacher", "magnitude_prune", "output_distillation_loss",
           "safe_prune_ratio", "BACKENDS", "METHODS", "ChannelPruner", "PruneResult", "PruneSpec", "layer_channels",
           "measure_latency", "model_flops", "prune", "reconstruct", "FitOptions", "ReconstructStats", "widen_c3",
           "PruneReport", "PruneStep", "PruneSummary", "PruneWorkflowSpec", "run_prune", "CompressSpec", "CompressReport",
           "run_compress"]
