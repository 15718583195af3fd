"""One inference API over every model yolopt can open.

    >>> from yolopt import runtime
    >>> m = runtime.open("yolov5n.onnx", threads=2)   # .pt/.safetensors, .onnx, .xml, .torchscript, .engine, .param, .tflite, .pte
    >>> m = runtime.open(model)                       # an in-memory DetectionModel (e.g. pruned)
    >>> y = m(x)                                      # (B,3,H,W) float [0,1] RGB -> torch.Tensor (B,N,5+nc)

Every backend has the same call and the same attributes (``names``, ``nc``, ``stride``,
``imgsz``, ``input_shape``, ``dynamic``, ``batch``, ``end2end``, ``name``, ``path``,
``precision``, ``letterbox_mode``) and ``resolve_imgsz()`` / ``clone()`` / ``describe()``.
"""

from ..errors import RuntimeBackendError
from .backends import (
    PRECISIONS,
    Backend,
    OnnxBackend,
    OpenVINOBackend,
    ParallelBackend,
    TensorRTBackend,
    TorchBackend,
    TorchScriptBackend,
    backend_for,
    check_precision,
    default_threads,
    open,
    predict_above,
    torch_threads,
)
from .device import pick_device
from .edge import ExecuTorchBackend, LiteRTBackend, NcnnBackend, ncnn_default_threads

__all__ = [
    "Backend", "TorchBackend", "OnnxBackend", "OpenVINOBackend", "TorchScriptBackend", "TensorRTBackend",
    "ParallelBackend", "NcnnBackend", "LiteRTBackend", "ExecuTorchBackend", "PRECISIONS", "backend_for", "check_precision",
    "default_threads", "ncnn_default_threads", "open", "pick_device", "predict_above", "torch_threads",
    "RuntimeBackendError",
]
