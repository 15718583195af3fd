"""Names the command line offers as choices, importable without torch (``yolopt --help`` stays fast).

The registries they describe (``export.EXPORTERS``, the runtime backends) import torch; tests check that
these names and the registries agree.
"""

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
EXPORT_FORMATS = ("onnx", "openvino", "torchscript", "tensorrt", "ncnn", "litert", "executorch")  # export.EXPORTERS, in registration order
