"""``yolopt profile``: where the time goes in a YOLOv5 model, and why.

    >>> from yolopt.profile import ProfileSpec, profile_model
    >>> report = profile_model("yolov5n.pt", ProfileSpec(imgsz=640))
    >>> report["params"], report["flops"], report["latency_ms"], report["findings"][0]["message"]
"""

from .core import BACKENDS, ProfileSpec, profile_model

__all__ = ["BACKENDS", "ProfileSpec", "profile_model"]
