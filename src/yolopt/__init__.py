"""yolopt: make trained YOLOv5 detectors fast and small, and measure it.

    >>> import yolopt
    >>> model = yolopt.load("yolov5n.pt")          # safe: no code from the pickle runs
    >>> dets = yolopt.predict(model, "bus.jpg")    # list of Detections, one per image
"""

__version__ = "0.1.0"

from .detect import predict  # noqa: E402
from .models.checkpoint import load_model as load  # noqa: E402
from .models.checkpoint import save_model as save  # noqa: E402

__all__ = ["__version__", "load", "save", "predict"]
