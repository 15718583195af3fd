"""Export YOLOv5 models to deployable artifacts, each verified against PyTorch. See ``yolopt export``.

``export(model_or_path, ExportSpec(format=..., precision=...))`` runs the :class:`Exporter` registered
for the format in ``EXPORTERS``; ``register_exporter`` adds a format.
"""

from .exporter import (
    EXPORTERS,
    PRECISIONS,
    Exporter,
    ExportResult,
    ExportSpec,
    export,
    export_metadata,
    get_exporter,
    register_exporter,
    traceable,
)
from .verify import TOLERANCE, Tolerance, VerifyResult, tolerance, verify, verify_inputs

__all__ = [
    "EXPORTERS", "PRECISIONS", "TOLERANCE", "ExportResult", "ExportSpec", "Exporter", "Tolerance", "VerifyResult",
    "export", "export_metadata", "get_exporter", "register_exporter", "tolerance", "traceable", "verify",
    "verify_inputs",
]
