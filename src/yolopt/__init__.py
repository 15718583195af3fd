"""yolopt: make trained YOLOv5 detectors fast and small, and measure it.

    >>> import yolopt
    >>> model = yolopt.load("yolov5n.pt")          # safe: no code from the pickle runs
    >>> dets = yolopt.predict(model, "bus.jpg")    # list of Detections, one per image

``import yolopt`` does not import torch: ``load``, ``save`` and ``predict`` are resolved on first use,
so the command line starts fast for commands that need no model.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "save", "predict"]

_LAZY = {"predict": ("detect", "predict"), "load": ("models.checkpoint", "load_model"),
         "save": ("models.checkpoint", "save_model")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
