"""yolopt optimize: try compression and deployment variants of a model within a time budget, measure each
end to end, recommend one per scenario, and write a report and a deploy bundle.

    >>> from yolopt.pipeline import OptimizeSpec, optimize
    >>> res = optimize(OptimizeSpec("yolov5n.pt", "coco128.yaml", scenario="realtime", time_budget_s=3600))
    >>> res.recommendation.variant, res.files["html"]
"""

from .records import OptimizeResults, VariantResult
from .spec import SCENARIOS, TARGET_CHOICES, TARGETS, OptimizeError, OptimizeSpec, parse_duration


def __getattr__(name: str):
    if name == "optimize":  # imported on first use: `yolopt optimize --help` needs only the spec's names
        from .run import optimize

        return optimize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OptimizeError", "OptimizeResults", "OptimizeSpec", "SCENARIOS", "TARGET_CHOICES", "TARGETS", "VariantResult", "optimize",
           "parse_duration"]
