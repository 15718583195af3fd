"""One inference API over every artifact yolopt can produce.

    >>> from yolopt import runtime
    >>> m = runtime.load("yolov5n.onnx")   # .pt/.safetensors, .onnx, .xml, .torchscript, .engine
    >>> y = m(x)                            # (B,3,H,W) float [0,1] RGB -> torch.Tensor (B,N,5+nc)

Every backend has the same call and the same attributes (``names``, ``nc``, ``stride``,
``imgsz``, ``input_shape``, ``dynamic``, ``batch``, ``end2end``, ``name``, ``path``).
"""

from .backends import (
    Backend,
    OnnxBackend,
    OpenVINOBackend,
    ParallelBackend,
    TensorRTBackend,
    TorchBackend,
    TorchScriptBackend,
    backend_for,
    load,
)
from ..errors import RuntimeBackendError

__all__ = [
    "Backend", "TorchBackend", "OnnxBackend", "OpenVINOBackend", "TorchScriptBackend", "TensorRTBackend",
    "ParallelBackend", "backend_for", "load", "RuntimeBackendError",
]
