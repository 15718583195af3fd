"""Export YOLOv5 models to deployable artifacts, each verified against PyTorch. See ``yolopt export``.

``export(model_or_path, ExportSpec(format=..., precision=...))`` runs the :class:`Exporter` registered
for the format in ``EXPORTERS``; ``register_exporter`` adds a format.
"""

from .exporter import (
    EXPORTERS,
    PRECISIONS,
    Exporter,
    ExporterTraits,
    ExportResult,
    ExportSpec,
    export,
    export_metadata,
    get_exporter,
    register_exporter,
    traceable,
)
from .edge import write_executorch, write_litert, write_ncnn  # registers the edge formats (ncnn, litert, executorch)  # noqa: F401
from .verify import TOLERANCE, VERIFY_NMS, Tolerance, VerifyOptions, VerifyResult, tolerance, verify, verify_inputs

__all__ = [
    "EXPORTERS", "PRECISIONS", "TOLERANCE", "ExportResult", "ExportSpec", "Exporter", "ExporterTraits", "Tolerance",
    "VERIFY_NMS", "VerifyOptions", "VerifyResult",
    "export", "export_metadata", "get_exporter", "register_exporter", "tolerance", "traceable", "verify",
    "verify_inputs",
]
