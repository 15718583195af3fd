"""Exporters for edge runtimes: NCNN (converted by pnnx) and LiteRT (TFLite, converted by litert-torch).

Registered in :data:`yolopt.export.EXPORTERS` on import; the artifact is verified and moved into place by
:func:`yolopt.export.export` like every other format.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from ..errors import ExportError, YoloptError
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


# --- LiteRT (TFLite) ------------------------------------------------------------------------------------------

# LiteRT's converter, installed with --no-deps (the Makefile's LITERT_CONVERTER; docs/edge.md says why): what it
# imports is in the edge extra
LITERT_CONVERTER = ("litert-torch==0.10.0", "litert-converter==0.5.0")
LITERT_CONVERTER_INSTALL = f"pip install --no-deps {' '.join(LITERT_CONVERTER)}"
LITERT_METADATA = "yolopt"  # the name of the TFLite Metadata entry that holds yolopt's metadata (JSON)
# the converter's child process: python -m yolopt.export.litert_child JOB.json (tests replace it)
LITERT_CHILD = [sys.executable, "-m", "yolopt.export.litert_child"]
LITERT_TIMEOUT = 3600  # seconds; yolov5n converts in about a minute on one core


def _check_litert(spec: ExportSpec, name: str) -> None:
    """Format litert needs litert-torch (the converter) and ai-edge-litert (to verify the result): one line
    naming the install when either is missing. Found without importing them (the converter imports jax)."""
    missing = [pkg for mod, pkg in (("litert_torch", "litert-torch"), ("ai_edge_litert", "ai-edge-litert"))
               if not _findable(mod)]
    if missing:
        fix = (f"{EDGE_INSTALL}, then {LITERT_CONVERTER_INSTALL}" if "litert-torch" in missing
               else f"{EDGE_INSTALL}, or pip install ai-edge-litert")
        raise ExportError(f"{name}: format litert needs the {' and '.join(missing)} package"
                          f"{'s' if len(missing) > 1 else ''}, not installed ({fix})", fields=("format",))
    if spec.dynamic:
        raise ExportError(f"{name}: format litert exports a fixed input size, not a dynamic one",
                          fields=("dynamic", "format"))
    if spec.precision == "int8" and not (spec.calib_data or spec.calib_images):
        raise ExportError(f"{name}: format litert at precision int8 is calibrated on images: give a dataset "
                          "(--data DATA.yaml, its train split) or --calib-images DIR", fields=("calib_data",))


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails, or sys.modules[module] = None
        return False


def embed_tflite_metadata(tflite: Path, meta: dict) -> None:
    """Add yolopt's metadata to a ``.tflite`` as a TFLite ``Metadata`` entry named ``yolopt`` (JSON, the same
    fields an ONNX artifact has in ``metadata_props``); rewrites the file in place."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as fb

    raw = tflite.read_bytes()
    model = fb.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    for b in model.buffers or []:  # data stored after the flatbuffer (ai-edge-quantizer writes so) goes inline
        if b.offset and b.offset > 1:
            b.data = np.frombuffer(raw[b.offset:b.offset + b.size], dtype=np.uint8)
            b.offset = b.size = 0
    buf = fb.BufferT()
    buf.data = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    model.buffers.append(buf)
    entry = fb.MetadataT()
    entry.name, entry.buffer = LITERT_METADATA, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != LITERT_METADATA.encode()] + [entry]
    b = flatbuffers.Builder(tflite.stat().st_size + 65536)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    tflite.write_bytes(b.Output())


def calibration_set(spec: ExportSpec, n: int | None = None):
    """The int8 :class:`~yolopt.data.calib.CalibrationSet` of ``spec`` (its dataset's train split, or its images;
    ``n`` images, default ``spec.calib``), each decoded once here so that a bad file is one line before minutes of
    conversion."""
    from ..data.calib import CalibrationSet

    n = spec.calib if n is None else n
    cs = (CalibrationSet.from_images(spec.calib_images, spec.imgsz, n) if spec.calib_images else
          CalibrationSet.from_data(spec.calib_data, spec.imgsz, n))
    cs.check()
    return cs


def litert_calibration(spec: ExportSpec) -> list[str]:
    """The int8 calibration image paths of ``spec`` (:func:`calibration_set`), for the converter's child process."""
    return [str(Path(p).resolve()) for p in calibration_set(spec).paths]


@register_exporter("litert", ".tflite", ExporterTraits(precisions=("fp32", "fp16", "int8"), check=_check_litert))
def write_litert(model, out: Path, spec: ExportSpec, meta: dict, workdir: Path) -> list[Path]:
    """LiteRT (.tflite) converted by litert-torch; fp16 weights or int8 (ai-edge-quantizer); metadata inside."""
    from ..models.checkpoint import save_model

    wd = workdir.resolve()
    calib = litert_calibration(spec) if spec.precision == "int8" else None
    job = {"model": str(save_model(model, wd / "model.safetensors")), "imgsz": list(spec.imgsz),
           "batch": int(spec.batch), "precision": spec.precision, "split": False, "calib": calib,
           "out": str(out.resolve()), "error": str(wd / "error.txt"), "threads": 1}
    if calib:
        meta["calibration"] = {"images": len(calib), "source": str(spec.calib_data or spec.calib_images)}
    (wd / "job.json").write_text(json.dumps(job), encoding="utf-8")
    paths = [p for p in sys.path if p] + os.environ.get("PYTHONPATH", "").split(os.pathsep)  # yolopt as imported here
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(p for p in paths if p)),
           "LITERT_TORCH_SHOW_PROGRESS": "n", "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        r = subprocess.run([*LITERT_CHILD, str(wd / "job.json")], capture_output=True, text=True, cwd=wd, env=env,
                           timeout=LITERT_TIMEOUT)
    except OSError as e:
        raise ExportError(f"{out.name}: cannot run the LiteRT converter ({_first_line(e)})") from None
    except subprocess.TimeoutExpired:
        raise ExportError(f"{out.name}: the LiteRT converter did not finish in {LITERT_TIMEOUT} s") from None
    err = wd / "error.txt"
    if r.returncode != 0 or not out.is_file():
        why = err.read_text(encoding="utf-8").strip() if err.is_file() else _converter_error(r)
        raise ExportError(f"{out.name}: litert-torch could not convert the model ({why[:300]})")
    embed_tflite_metadata(out, meta)
    return [out]


# --- ExecuTorch (.pte, XNNPACK) -------------------------------------------------------------------------------

# ExecuTorch, installed with --no-deps (the Makefile's EXECUTORCH; docs/edge.md says why): its declared
# dependencies add coremltools, pandas, hydra, tokenizers... that neither its export path nor its runtime imports;
# what they do import beyond torch and the edge extra is ruamel.yaml and tabulate (the Makefile line installs them)
EXECUTORCH = ("executorch==1.5.1", "ruamel.yaml==0.19.1", "tabulate==0.10.0")
EXECUTORCH_INSTALL = f"pip install --no-deps {' '.join(EXECUTORCH)}"
EXECUTORCH_METADATA = "yolopt_metadata"  # the constant method of the .pte that returns yolopt's metadata (JSON bytes)
# int8 (PT2E, XNNPACKQuantizer): int8 weights per channel, int8 activations per tensor (histogram observers),
# calibrated on images; Detect (its 1x1 convs and the decode) stays float. Quantizing it too puts boxes (0-640 px)
# and scores (0-1) behind one int8 scale in the output concat: every score rounds to 0 (docs/edge.md, "INT8").
EXECUTORCH_CALIB = 64  # calibration images by default: the histogram observers cost ~1 s per 640 px image


def _check_executorch(spec: ExportSpec, name: str) -> None:
    """Format executorch needs the executorch package (its exporter and its runtime are one wheel), found without
    importing it; fixed input size, batch as given."""
    missing = [pkg for mod, pkg in (("executorch", "executorch"), ("ruamel.yaml", "ruamel.yaml"),
                                                       ("tabulate", "tabulate"))
               if not _findable(mod)]
    if missing:
        raise ExportError(f"{name}: format executorch needs the {' and '.join(missing)} package"
                          f"{'s' if len(missing) > 1 else ''}, not installed ({EXECUTORCH_INSTALL})",
                          fields=("format",))
    if spec.dynamic:
        raise ExportError(f"{name}: format executorch exports a fixed input size, not a dynamic one",
                          fields=("dynamic", "format"))
    if spec.precision == "int8" and not (spec.calib_data or spec.calib_images):
        raise ExportError(f"{name}: format executorch at precision int8 is calibrated on images: give a dataset "
                          "(--data DATA.yaml, its train split) or --calib-images DIR", fields=("calib_data",))


def metadata_tensor(meta: dict) -> torch.Tensor:
    """yolopt's metadata as a uint8 tensor of its JSON bytes (what the ``yolopt_metadata`` method returns)."""
    return torch.tensor(list(json.dumps(meta).encode("utf-8")), dtype=torch.uint8)


def _not_in_detect(node) -> bool:
    """True for a graph node outside the Detect head (by the module stack torch.export records)."""
    from ..models.yolo import Detect

    stack = node.meta.get("nn_module_stack") or {}
    return not any(isinstance(t, type) and issubclass(t, Detect) or isinstance(t, str) and t.endswith(".Detect")
                   for _, t in stack.values())


def _quantize_pt2e(m, x: torch.Tensor, spec: ExportSpec, meta: dict):
    """The exported program of ``m`` quantized by XNNPACK's PT2E quantizer, calibrated on ``spec``'s images
    (square-letterboxed like inference), Detect left float."""
    import numpy as np

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    cs = calibration_set(spec, spec.calib if spec.calib != ExportSpec.calib else EXECUTORCH_CALIB)

    class HeadFloat(XNNPACKQuantizer):
        """XNNPACK's quantizer with Detect's nodes left float: their annotations are removed once annotation is
        done. (Its filter function does not do it: the cat annotator of executorch 1.5.1 ignores the filter, and
        the decode's concat then shares one int8 scale.)"""

        def annotate(self, model):
            model = super().annotate(model)
            for node in model.graph.nodes:
                if not _not_in_detect(node):
                    node.meta.pop(Q_ANNOTATION_KEY, None)
            return model

    q = HeadFloat().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad():
        gm = torch.export.export(m, (x,), strict=False).module()
        prepared = prepare_pt2e(gm, q)
        for b in cs.batches():
            prepared(torch.from_numpy(np.ascontiguousarray(b)))
        converted = convert_pt2e(prepared)
        ep = torch.export.export(converted, (x,), strict=False)
    meta["calibration"] = {"images": len(cs), "source": str(spec.calib_data or spec.calib_images)}
    meta["quantization"] = {"method": "pt2e-xnnpack", "weights": "int8 per channel", "activations": "int8 per tensor",
                            "float": "Detect (1x1 convs and decode)"}
    return ep


@register_exporter("executorch", ".pte", ExporterTraits(precisions=("fp32", "int8"), check=_check_executorch))
def write_executorch(model, out: Path, spec: ExportSpec, meta: dict, workdir: Path) -> list[Path]:
    """ExecuTorch (.pte) lowered to XNNPACK; metadata inside (a constant method). int8: PT2E with XNNPACK's
    quantizer, calibrated on images, the Detect head float."""
    h, w = spec.imgsz
    m = traceable(model, "cpu", "fp32")
    x = torch.zeros(int(spec.batch), 3, h, w)
    from ..runtime.edge import quiet_executorch_import

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # executorch's passes warn about deprecated torch APIs, per node
        try:
            with quiet_executorch_import():
                from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
                from executorch.exir import to_edge_transform_and_lower
        except ImportError as e:  # an executorch whose own imports fail (a missing dependency)
            raise ExportError(f"{out.name}: executorch cannot be imported ({_first_line(e)}; {EXECUTORCH_INSTALL})"
                              ) from None
        if spec.precision == "int8":
            try:
                ep = _quantize_pt2e(m, x, spec, meta)
            except YoloptError:  # a bad calibration image or dataset: its own line
                raise
            except Exception as e:  # noqa: BLE001 - any quantizer failure is one line
                raise ExportError(f"{out.name}: PT2E quantization failed ({_first_line(e)[:300]})") from None
        try:
            if spec.precision != "int8":
                with torch.no_grad():
                    ep = torch.export.export(m, (x,), strict=False)
            prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                               constant_methods={EXECUTORCH_METADATA: metadata_tensor(meta)})
            buf = prog.to_executorch().buffer
        except Exception as e:  # noqa: BLE001 - any converter failure is one line
            raise ExportError(f"{out.name}: executorch could not lower the model ({_first_line(e)[:300]})") from None
    out.write_bytes(buf)
    return [out]
