"""COCO mAP of any model (in memory, a file, or a runtime backend) on a YOLO-format dataset.

    >>> from yolopt.evaluate import evaluate
    >>> res = evaluate(model, "coco128.yaml", max_images=32)   # ValResult: map50_95, map50, mode, speed_ms...
"""

from .validate import EvalSpec, ValResult, ValSummary, evaluate

__all__ = ["EvalSpec", "ValResult", "ValSummary", "evaluate"]
