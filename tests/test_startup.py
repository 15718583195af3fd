"""`yolopt --help` starts without torch; the torch-free choice lists agree with the registries they name."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_torch():
    """Building the whole parser (every sub-command's register) imports no heavy runtime."""
    code = ("import sys; from yolopt.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino', 'cv2') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"yolopt --help imports {r.stdout.strip()}"


def test_choices_match_the_registries():
    from yolopt.choices import EXPORT_FORMATS, PRECISIONS
    from yolopt.export import EXPORTERS
    from yolopt.runtime import PRECISIONS as RUNTIME_PRECISIONS

    assert tuple(EXPORTERS) == EXPORT_FORMATS
    assert RUNTIME_PRECISIONS == PRECISIONS
