"""yolopt optimize: try compression and deployment variants of a model within a time budget, measure each
end to end, recommend one per scenario, and write a report and a deploy bundle.

    >>> from yolopt.pipeline import OptimizeSpec, optimize
    >>> res = optimize(OptimizeSpec("yolov5n.pt", "coco128.yaml", scenario="realtime", time_budget_s=3600))
    >>> res.recommendation.variant, res.files["html"]
"""

from .records import OptimizeResults, VariantResult
from .run import optimize
from .spec import SCENARIOS, TARGETS, OptimizeError, OptimizeSpec, parse_duration

__all__ = ["OptimizeError", "OptimizeResults", "OptimizeSpec", "SCENARIOS", "TARGETS", "VariantResult", "optimize",
           "parse_duration"]
