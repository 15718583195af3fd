"""Export YOLOv5 models to deployable artifacts, each verified against PyTorch. See ``yolopt export``."""

from .exporter import FORMATS, ExportResult, export, export_onnx_file
from .verify import VerifyResult, verify, verify_inputs

__all__ = ["FORMATS", "ExportResult", "export", "export_onnx_file", "VerifyResult", "verify", "verify_inputs"]
