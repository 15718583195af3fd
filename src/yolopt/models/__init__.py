"""YOLOv5 modules, the yaml-schema model builder and checkpoint I/O."""

from .configs import builtin_config, builtin_names, load_config
from .yolo import Detect, DetectionModel

__all__ = ["Detect", "DetectionModel", "builtin_config", "builtin_names", "load_config"]
