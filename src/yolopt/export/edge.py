"""Exporters for edge runtimes: NCNN (converted by pnnx).

Registered in :data:`yolopt.export.EXPORTERS` on import; the artifact is verified and moved into place by
:func:`yolopt.export.export` like every other format.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import torch

from ..errors import ExportError
from .exporter import ExporterTraits, ExportSpec, _first_line, register_exporter, traceable

EDGE_INSTALL = "pip install 'yolopt[edge]'"

# why NCNN exports no INT8 here (ncnn's own quantization tools are not in the pip wheels)
NCNN_INT8 = ("the ncnn and pnnx pip wheels ship no ncnn2table / ncnn2int8 (ncnn's INT8 calibration and conversion "
             "tools); export fp32, or quantize for onnxruntime or openvino")


def _check_ncnn(spec: ExportSpec, name: str) -> None:
    """Format ncnn needs pnnx (the converter) and ncnn (to verify the result); one line when either is missing."""
    missing = [m for m in ("pnnx", "ncnn") if not _importable(m)]
    if missing:
        raise ExportError(f"{name}: format ncnn needs the {' and '.join(missing)} package"
                          f"{'s' if len(missing) > 1 else ''}, not installed ({EDGE_INSTALL}, or pip install "
                          f"{' '.join(missing)})", fields=("format",))
    if spec.dynamic:
        raise ExportError(f"{name}: format ncnn exports a fixed input size, not a dynamic one",
                          fields=("dynamic", "format"))
    if spec.batch != 1:
        raise ExportError(f"{name}: format ncnn takes one image per call (batch 1, not {spec.batch}); the runtime "
                          "runs a batch image by image", fields=("batch", "format"))


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def ncnn_metadata_path(param: str | Path) -> Path:
    """The yolopt metadata file beside an NCNN ``.param``: ``<stem>.json``."""
    return Path(param).with_suffix(".json")


@register_exporter("ncnn", ".param", ExporterTraits(precisions=("fp32", "fp16"), folder=True, check=_check_ncnn,
                                                    refused=(("int8", NCNN_INT8),)))
def write_ncnn(model, out: Path, spec: ExportSpec, meta: dict, workdir: Path) -> list[Path]:
    """NCNN (.param + .bin) converted by pnnx from the traced model; fp16 = fp16 weights; metadata in <stem>.json."""
    import pnnx

    h, w = spec.imgsz
    m = traceable(model, "cpu", "fp32")
    pt = workdir / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ts = torch.jit.trace(m, torch.zeros(1, 3, h, w), strict=False, check_trace=False)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"{out.name}: torch.jit.trace failed ({_first_line(e)})") from None
        ts.save(str(pt))
    bin_path = out.with_suffix(".bin")
    fp16 = int(spec.precision == "fp16")  # pnnx stores fp16 weights unless told fp16=0
    wd = workdir.resolve()  # pnnx runs in the work folder: every path it gets is absolute
    cmd = [pnnx.EXEC_PATH, str(pt.resolve()), f"inputshape=[1,3,{h},{w}]f32", "device=cpu", f"fp16={fp16}",
           f"ncnnparam={out.resolve()}", f"ncnnbin={bin_path.resolve()}", f"ncnnpy={wd / 'ncnn.py'}",
           f"pnnxparam={wd / 'pnnx.param'}", f"pnnxbin={wd / 'pnnx.bin'}", f"pnnxpy={wd / 'pnnx.py'}",
           f"pnnxonnx={wd / 'pnnx.onnx'}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=wd, timeout=1800)
    except OSError as e:
        raise ExportError(f"{out.name}: cannot run the pnnx converter ({_first_line(e)})") from None
    if r.returncode != 0 or not out.is_file() or not bin_path.is_file():
        raise ExportError(f"{out.name}: pnnx could not convert the model ({_converter_error(r)})")
    meta_path = ncnn_metadata_path(out)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return [bin_path, meta_path, out]


def _converter_error(r: subprocess.CompletedProcess) -> str:
    """The converter's first error line (pnnx logs its passes on stderr), else its exit status."""
    lines = [ln.strip() for ln in (r.stderr or "").splitlines() + (r.stdout or "").splitlines() if ln.strip()]
    err = next((ln for ln in lines if any(w in ln.lower() for w in ("error", "exception", "failed", "abort"))),
               None)
    return err[:300] if err else f"exit status {r.returncode}, no output files"
