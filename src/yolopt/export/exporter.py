"""Export a fused YOLOv5 model to a deployable artifact, and verify it.

One :class:`ExportSpec` describes an export; :func:`export` runs it with the :class:`Exporter`
registered for ``spec.format`` in :data:`EXPORTERS` (ONNX, OpenVINO IR, TorchScript, TensorRT
here; :func:`register_exporter` adds more). Every artifact is first written into a temporary
folder next to the target, loaded back through :mod:`yolopt.runtime`, compared with the PyTorch
model, and only then moved into place: a failed export leaves nothing behind.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import __version__
from ..data.images import sample_images
from ..choices import PRECISIONS
from ..errors import ExportError, YoloptError
from ..models.checkpoint import load_model
from ..ops.sizes import check_imgsz
from .verify import NOTHING_HINT, VERIFY_NMS, VERIFY_NMS_INT8, VerifyOptions, VerifyResult, tolerance, verify

log = logging.getLogger("yolopt")

TRT_MAGIC = b"YOLOPT1\0"

# Every precision name yolopt knows. Which of them a format exports is its exporter's business; the
# others get one line saying why not and what to do instead (below, when no exporter takes them).
NOT_EXPORTED = {
    "bf16": "it is a runtime precision; export fp32 and run the fp32 artifact at precision bf16 on a CPU that "
            "has AVX-512 BF16",
    "int8": "quantization is a separate step; export fp32 (or fp16) and quantize the artifact",
}


@dataclass
class ExportSpec:
    """Everything one export needs; :func:`export` checks it and fills in the defaults."""

    format: str = "onnx"  # a key of EXPORTERS
    imgsz: int | tuple[int, int] = 640  # one size or (h, w), multiples of the model stride
    batch: int = 1
    dynamic: bool = False  # dynamic batch, height and width
    precision: str = "fp32"  # fp32 | fp16 | bf16 | int8; which ones a format accepts is the exporter's business
    nms: bool = False  # post-processing inside the graph (formats registered with nms=True)
    raw_head: bool = False  # end at Detect's convs; boxes are decoded outside (ops.decode_raw), for candidates only
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    opset: int = 17
    simplify: bool = True  # onnxslim clean-up of the ONNX graph
    out: str | Path | None = None  # file (or folder for folder formats); default next to the weights
    verify: bool = True  # False: no verification run (internal callers exporting to a temp dir)
    verify_images: list | None = None  # images to verify on (default: the shared sample images, else a
    #                                     generated scene, made to produce detections for --nms artifacts)
    atol: float | None = None  # overrides the verification limit on scores
    device: str | None = None  # None: cuda when the format or precision needs it, else cpu
    # int8 (formats that quantize while exporting, litert): the calibration images, square-letterboxed at imgsz
    calib_data: str | Path | None = None  # a dataset yaml: its train split
    calib_images: list | None = None  # or images: files, folders, globs, .txt lists
    calib: int = 256  # at most this many (a fixed random subset of more; data.calib.CALIB_IMAGES)


@dataclass
class ExportResult:
    format: str
    path: Path
    files: list[Path]
    size_mb: float
    seconds: float  # writing the artifact
    verify: VerifyResult | None = None  # None when the spec said verify=False
    metadata: dict = field(default_factory=dict)
    verify_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"format": self.format, "path": str(self.path), "files": [str(f) for f in self.files],
                "size_mb": self.size_mb, "seconds": self.seconds, "verify_seconds": self.verify_seconds,
                "metadata": self.metadata, "verify": self.verify.to_dict() if self.verify else None}


# write(model, tmp_out, spec, meta, workdir) -> files. ``model`` is the fused fp32 PyTorch model (do not
# modify it: see ``traceable``); ``tmp_out`` the artifact's path inside the temporary folder; ``spec``
# resolved (imgsz a (h, w) tuple, device a string, out the final path); ``meta`` the metadata to store;
# ``workdir`` a scratch folder for intermediate files. Returns the files to move into place, all in
# ``tmp_out``'s folder, ``tmp_out`` among them (moved last, so a reader never sees half an artifact).
WriteFn = Callable[[torch.nn.Module, Path, ExportSpec, dict, Path], list[Path]]


@dataclass(frozen=True)
class Exporter:
    name: str  # the --format value
    suffix: str  # of the artifact file (yolopt.runtime.open picks the runtime by suffix)
    write: WriteFn
    precisions: tuple[str, ...] = ("fp32",)  # precisions it exports
    needs_gpu: bool = False  # the format itself needs a CUDA GPU (TensorRT)
    cuda_precisions: tuple[str, ...] = ()  # precisions that need a CUDA GPU in this format (FP16 tracing)
    nms: bool = False  # supports spec.nms (post-processing inside the graph)
    folder: bool = False  # the artifact is several files: default out is <stem>_<name>/<stem><suffix>
    check: Callable[[ExportSpec, str], None] | None = None  # raises ExportError when a tool is missing
    description: str = ""
    refused: tuple[tuple[str, str], ...] = ()  # (precision, why this format cannot export it)


EXPORTERS: dict[str, Exporter] = {}


@dataclass(frozen=True)
class ExporterTraits:
    """What a registered format supports (see :class:`Exporter`); ``description`` defaults to the first
    line of the write function's docstring."""

    precisions: tuple[str, ...] = ("fp32",)
    needs_gpu: bool = False
    cuda_precisions: tuple[str, ...] = ()
    nms: bool = False
    folder: bool = False
    check: Callable[[ExportSpec, str], None] | None = None
    description: str = ""
    refused: tuple[tuple[str, str], ...] = ()  # (precision, why not): the one line a request for it gets


def register_exporter(name: str, suffix: str, traits: ExporterTraits | None = None, *, override: bool = False):
    """Decorator: register ``write`` (see ``WriteFn``) as the exporter of format ``name``, with ``traits``.

    The new format needs nothing else: option checks, device choice, metadata, verification and the
    atomic move into place are :func:`export`'s. Its artifact must open with ``yolopt.runtime.open``
    (by suffix) and its precisions need a ``verify.TOLERANCE`` entry.
    """
    t = traits or ExporterTraits()
    bad = [p for p in (*t.precisions, *t.cuda_precisions) if p not in PRECISIONS]
    if bad:
        raise ValueError(f"exporter '{name}': unknown precision(s) {bad} (known: {', '.join(PRECISIONS)})")

    def deco(write: WriteFn) -> WriteFn:
        if name in EXPORTERS and not override:
            raise ValueError(f"export format '{name}' is already registered")
        EXPORTERS[name] = Exporter(name, suffix.lower(), write, tuple(t.precisions), t.needs_gpu,
                                   tuple(t.cuda_precisions), t.nms, t.folder, t.check,
                                   t.description or (write.__doc__ or "").strip().split("\n")[0],
                                   tuple(t.refused))
        return write

    return deco


def _join(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# --- helpers for exporters ---------------------------------------------------------------------------

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def traceable(model, device, precision: str = "fp32"):
    """A fused, frozen copy of ``model`` on ``device`` in ``precision``, ready to trace."""
    m = copy.deepcopy(model).float().eval()
    if not m.is_fused:
        m.fuse()
    m.detect._grids = {}  # grids must be traced, not baked in from an earlier run
    for p in m.parameters():
        p.requires_grad_(False)
    return m.to(torch.device(device)).to(_DTYPES[precision])


def _example_input(spec: ExportSpec, dtype=None) -> torch.Tensor:
    return torch.zeros(spec.batch, 3, *spec.imgsz, device=spec.device, dtype=dtype or _DTYPES[spec.precision])


def _enc(meta: dict) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in meta.items()}


def export_metadata(model, spec: ExportSpec) -> dict:
    """The metadata every artifact carries (values JSON-encoded in the file)."""
    return {
        "format": "yolopt-export",
        "yolopt_version": __version__,
        "names": list(model.names),
        "nc": int(model.nc),
        "stride": [int(s) for s in model.stride],
        "imgsz": list(spec.imgsz),
        "batch": int(spec.batch),
        "dynamic": bool(spec.dynamic),
        "precision": spec.precision,
        "nms": {"conf": spec.conf, "iou": spec.iou, "max_det": spec.max_det} if spec.nms else None,
        **({"head": "raw", "anchors": (model.detect.anchors * model.detect.stride.view(-1, 1, 1)).tolist()}
           if spec.raw_head else {}),
    }


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


# --- the built-in formats ----------------------------------------------------------------------------

@register_exporter("onnx", ".onnx", ExporterTraits(precisions=("fp32", "fp16"), cuda_precisions=("fp16",), nms=True))
def write_onnx(model, out: Path, spec: ExportSpec, meta: dict, workdir: Path | None = None) -> list[Path]:
    """ONNX: fused, onnxslim-cleaned, optional in-graph NMS, metadata in metadata_props."""
    import onnx

    m = traceable(model, spec.device, spec.precision)
    outputs = ["output0"]
    if spec.raw_head:
        m.detect.raw_head = True
        outputs = [f"raw{i}" for i in range(m.detect.nl)]
    dyn = None
    if spec.dynamic:
        dyn = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}}
        if spec.raw_head:
            dyn = {"images": dyn["images"], **{o: {0: "batch", 2: f"h{i}", 3: f"w{i}"} for i, o in enumerate(outputs)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(m, _example_input(spec), str(out), dynamo=False, opset_version=spec.opset,
                              input_names=["images"], output_names=outputs, dynamic_axes=dyn,
                              do_constant_folding=True)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"{out.name}: torch.onnx.export failed ({_first_line(e)})") from None
    proto = onnx.load(str(out))
    if spec.simplify:
        try:
            import onnxslim
        except ImportError:
            raise ExportError("onnxslim is not installed (pip install 'yolopt[deploy]')") from None
        proto = onnxslim.slim(proto)
    if spec.nms:
        from .onnx_nms import append_nms

        proto = append_nms(proto, spec.conf, spec.iou, spec.max_det)
    del proto.metadata_props[:]
    for k, v in _enc(meta).items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "yolopt"
    proto.producer_version = __version__
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return [out]


def _intermediate_onnx(model, spec: ExportSpec, meta: dict, workdir: Path) -> Path:
    """An fp32 ONNX traced on the CPU, for formats converted from ONNX."""
    path = workdir / "intermediate.onnx"
    write_onnx(model, path, replace(spec, precision="fp32", device="cpu"), meta, workdir)
    return path


@register_exporter("openvino", ".xml", ExporterTraits(precisions=("fp32", "fp16"), nms=True, folder=True))
def write_openvino(model, out: Path, spec: ExportSpec, meta: dict, workdir: Path) -> list[Path]:
    """OpenVINO IR (.xml + .bin) converted from the ONNX; fp16 = FP16-compressed weights (runs on CPUs)."""
    try:
        import openvino as ov
    except ImportError:
        raise ExportError("OpenVINO export needs the `openvino` package (pip install 'yolopt[deploy]')") from None
    ovm = ov.convert_model(str(_intermediate_onnx(model, spec, meta, workdir)))
    for k, v in _enc(meta).items():
        ovm.set_rt_info(v, ["yolopt", k])
    ov.save_model(ovm, str(out), compress_to_fp16=spec.precision == "fp16")
    return [out.with_suffix(".bin"), out]


class _CastInput(torch.nn.Module):
    """Casts the input to the model's dtype, so an fp16 TorchScript artifact also takes fp32 input."""

    def __init__(self, model, dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x):
        return self.model(x.to(self.dtype))


@register_exporter("torchscript", ".torchscript",
                   ExporterTraits(precisions=("fp32", "fp16"), cuda_precisions=("fp16",)))
def write_torchscript(model, out: Path, spec: ExportSpec, meta: dict, workdir: Path | None = None) -> list[Path]:
    """TorchScript (traced, frozen); metadata in the extra file config.txt."""
    dtype = _DTYPES[spec.precision]
    m = traceable(model, spec.device, spec.precision)
    if dtype != torch.float32:
        m = _CastInput(m, dtype).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(m, _example_input(spec, torch.float32), strict=False, check_trace=False)
        ts = torch.jit.freeze(ts.eval())
    torch.jit.save(ts, str(out), _extra_files={"config.txt": json.dumps(_enc(meta))})
    return [out]


def _check_tensorrt(spec: ExportSpec, name: str) -> None:
    from ..runtime.backends import require_tensorrt

    try:
        require_tensorrt(name)
    except YoloptError as e:
        raise ExportError(str(e).replace(f"{name}: ", f"{name}: format tensorrt: ", 1), fields=("format",)) from None


@register_exporter("tensorrt", ".engine", ExporterTraits(precisions=("fp32", "fp16"), needs_gpu=True,
                                                          check=_check_tensorrt))
def write_tensorrt(model, out: Path, spec: ExportSpec, meta: dict, workdir: Path, workspace_gb: float = 4.0,
                   max_batch: int | None = None) -> list[Path]:
    """TensorRT engine built from the ONNX (fp16 = FP16 builder flag), behind a yolopt metadata header."""
    from ..runtime.backends import require_tensorrt

    onnx_path = _intermediate_onnx(model, spec, meta, workdir)
    try:
        trt = require_tensorrt(out)
    except YoloptError as e:
        raise ExportError(str(e)) from None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{out.name}: TensorRT could not parse the ONNX model ({errs[:300]})")
    inp = network.get_input(0)
    if spec.dynamic:
        profile = builder.create_optimization_profile()
        h, w = spec.imgsz
        mb = max_batch or max(1, spec.batch * 2)
        profile.set_shape(inp.name, (1, 3, 32, 32), (spec.batch, 3, h, w), (mb, 3, max(h, w) * 2, max(h, w) * 2))
        config.add_optimization_profile(profile)
    if spec.precision == "fp16":
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast FP16; building the engine in FP16 anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    elif hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: TF32 convolutions differ like fp16 ones
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{out.name}: TensorRT engine build failed (see the TensorRT log above)")
    head = json.dumps(_enc(meta)).encode()
    with open(out, "wb") as f:
        f.write(TRT_MAGIC + len(head).to_bytes(4, "little") + head)
        f.write(bytes(serialized))
    return [out]


# --- export ------------------------------------------------------------------------------------------

def get_exporter(fmt: str) -> Exporter:
    ex = EXPORTERS.get(str(fmt).lower())
    if ex is None:
        raise ExportError(f"unknown export format '{fmt}' (choose from {', '.join(EXPORTERS)})")
    return ex


def _check_precision(ex: Exporter, precision: str) -> None:
    if precision in ex.precisions:
        return
    why = dict(ex.refused).get(precision)
    if why:
        raise ExportError(f"precision {precision}: format {ex.name} cannot export it: {why}",
                          fields=("precision", "format"))
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision}: unknown precision (choose from {', '.join(ex.precisions)})",
                          fields=("precision",))
    others = [e.name for e in EXPORTERS.values() if precision in e.precisions]
    if precision in NOT_EXPORTED and not others:
        raise ExportError(f"precision {precision} is not an export precision: {NOT_EXPORTED[precision]}",
                          fields=("precision",))
    hint = ""
    if others and precision == "int8":  # the formats that quantize while exporting, and the usual way
        hint = (f" (format {_join(others)} export{'s' if len(others) == 1 else ''} int8; or quantize the artifact: "
                "yolopt quantize)")
    raise ExportError(f"precision {precision}: format {ex.name} exports {_join(ex.precisions)}{hint}",
                      fields=("precision", "format"))


def _check_options(ex: Exporter, spec: ExportSpec) -> None:
    if spec.nms and not ex.nms:
        raise ExportError(f"NMS in the graph is available for {_join(e.name for e in EXPORTERS.values() if e.nms)} "
                          f"exports, not {ex.name}", fields=("nms",))
    if spec.nms and (not 0 <= spec.conf <= 1 or not 0 <= spec.iou <= 1):
        raise ExportError(f"NMS thresholds must be in [0, 1], got conf={spec.conf} iou={spec.iou}",
                          fields=("conf", "iou"))
    if spec.nms and spec.max_det < 1:
        raise ExportError(f"max_det {spec.max_det}: must be at least 1", fields=("max_det",))
    if spec.batch < 1:
        raise ExportError(f"batch {spec.batch}: must be at least 1", fields=("batch",))
    if spec.raw_head and (ex.name != "onnx" or spec.nms):
        raise ExportError("a raw head (boxes decoded outside the graph) is an ONNX export without in-graph NMS"
                          + (f", not {ex.name}" if ex.name != "onnx" else ""), fields=("raw_head", "format", "nms"))


def _device(ex: Exporter, spec: ExportSpec) -> str:
    """The device to trace/build on: cuda when the format or precision needs it (checked), else cpu."""
    needs_cuda = ex.needs_gpu or spec.precision in ex.cuda_precisions
    what = f"format {ex.name}" if ex.needs_gpu else f"precision {spec.precision}, format {ex.name},"
    fields = ("format",) if ex.needs_gpu else ("precision", "format")
    if spec.device is None:
        if not needs_cuda:
            return "cpu"
        if not torch.cuda.is_available():
            cpu_ok = [e.name for e in EXPORTERS.values()
                      if spec.precision in e.precisions and spec.precision not in e.cuda_precisions
                      and not e.needs_gpu]
            hint = f"; on a CPU use format {' or '.join(cpu_ok)} at precision {spec.precision}" if cpu_ok else ""
            why = "" if ex.needs_gpu else f" ({spec.precision} tracing)"
            raise ExportError(f"{what} needs a CUDA GPU{why} and none is available{hint}", fields=fields)
        return "cuda:0"
    from ..runtime.device import pick_device

    dev = pick_device(spec.device)
    if needs_cuda and dev.type != "cuda":
        raise ExportError(f"{what} needs a CUDA GPU, not device {spec.device}", fields=(*fields, "device"))
    return str(dev)


def _imgsz(imgsz, stride: int) -> tuple[int, int]:
    if isinstance(imgsz, int):
        imgsz = (imgsz, imgsz)
    try:
        h, w = (int(v) for v in imgsz)
    except (TypeError, ValueError):
        raise ExportError(f"imgsz {imgsz}: expected one size or two (H W)", fields=("imgsz",)) from None
    if h <= 0 or w <= 0:
        raise ExportError(f"imgsz {h}x{w}: sizes must be positive", fields=("imgsz",))
    return check_imgsz(h, stride), check_imgsz(w, stride)  # rounded up like every other command


def output_path(ex: Exporter, out: str | Path | None, weights: Path | None) -> Path:
    """Where the artifact goes: ``out`` (suffix added; a folder for folder formats) or next to ``weights``."""
    stem = weights.stem if weights is not None else "model"
    if out is None:
        if weights is None:
            raise ExportError("an in-memory model needs an output path (ExportSpec.out)")
        if ex.folder:
            return weights.parent / f"{stem}_{ex.name}" / f"{stem}{ex.suffix}"
        return weights.with_suffix(ex.suffix)
    as_folder = str(out).endswith(("/", "\\"))  # `--out exp/`: a folder, even before it exists
    out = Path(out)
    if out.suffix.lower() == ex.suffix and not out.is_dir():
        return out
    if ex.folder or as_folder or out.is_dir():
        return out / f"{stem}{ex.suffix}"
    return out.with_suffix(ex.suffix) if out.suffix else out.parent / (out.name + ex.suffix)


def _calibration_samples(spec: ExportSpec, n: int = 4) -> list[Path]:
    """The first ``n`` calibration images of an int8 export: real images, to verify on when no others are given."""
    from ..data.calib import CalibrationSet

    cs = (CalibrationSet.from_images(spec.calib_images, spec.imgsz, spec.calib) if spec.calib_images else
          CalibrationSet.from_data(spec.calib_data, spec.imgsz, spec.calib))
    return list(cs.paths[:n])


def _nothing_to_compare(problem: str, others: list[VerifyResult]) -> tuple[str, bool]:
    """A "nothing to compare" verification ``problem`` with its answer: do the images hold nothing, or does
    the model detect nothing at all? ``others``: verifications of the same model on other images. Returns the
    text and whether the model is blind (no detection anywhere)."""
    head = problem.replace(NOTHING_HINT, "").rstrip(" .")
    hits = [r for r in others if r.detections_torch]
    if hits:
        return (f"{head}. The model does detect objects elsewhere ({hits[0].detections_torch} on "
                f"{_sources_text(hits[0].sources)}): give verification images with objects of its classes", False)
    srcs = list(dict.fromkeys(s for r in others for s in r.sources if s not in head))
    also = f" (nor on {_sources_text(srcs)})" if srcs else ""
    return (f"{head}. The PyTorch model itself detects nothing{also}: the model is the problem, not the "
            "verification images; check it with val (is it trained, on these classes?)", True)


def _sources_text(sources: list) -> str:
    return ", ".join(map(str, sources[:2])) + (f" and {len(sources) - 2} more" if len(sources) > 2 else "")


def _make_dirs(folder: Path) -> list[Path]:
    """mkdir -p; returns the folders it created, deepest first (to remove them again on failure)."""
    created = []
    p = folder
    while not p.exists():
        created.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def export(model_or_path, spec: ExportSpec | None = None) -> ExportResult:
    """Export a model (a .pt/.safetensors path or an in-memory DetectionModel) as ``spec`` says.

    The artifact is written into a temporary folder next to its target, verified there (unless
    ``spec.verify`` is False) and moved into place only when it passes. User errors and failed
    verification raise :class:`yolopt.errors.ExportError` with one line.
    """
    spec = spec or ExportSpec()
    ex = get_exporter(spec.format)
    _check_precision(ex, spec.precision)
    _check_options(ex, spec)
    if spec.verify:
        tolerance(spec.precision)  # a precision without verification limits fails before any work
    weights = None if isinstance(model_or_path, torch.nn.Module) else Path(model_or_path)
    name = str(weights) if weights is not None else str(spec.out or "model")
    if ex.check:
        ex.check(spec, name)
    device = _device(ex, spec)
    model = load_model(weights) if weights is not None else model_or_path
    imgsz = _imgsz(spec.imgsz, int(model.stride.max()))
    out = output_path(ex, spec.out, weights)
    spec = replace(spec, format=ex.name, imgsz=imgsz, device=device, out=out)
    meta = export_metadata(model, spec)
    ref = copy.deepcopy(model).float().eval()
    if not ref.is_fused:
        ref.fuse()

    t0 = time.perf_counter()
    created = _make_dirs(out.parent)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.stem}.export.", dir=out.parent))
    final: list[Path] = []
    try:
        tmp_out = tmpdir / out.name
        workdir = tmpdir / ".work"
        workdir.mkdir()
        try:
            files = [Path(f) for f in ex.write(ref, tmp_out, spec, meta, workdir)]
        except ExportError as e:  # writers name their temporary file: name the destination, folder included
            msg = str(e)
            if msg.startswith(f"{tmp_out.name}: "):
                raise type(e)(f"{out}: " + msg[len(tmp_out.name) + 2:], fields=e.fields) from e
            raise
        if tmp_out not in files or any(f.parent != tmpdir or not f.is_file() for f in files):
            raise ExportError(f"{out}: exporter '{ex.name}' returned {[str(f) for f in files]}, expected files "
                              f"next to {tmp_out} including it")
        seconds = time.perf_counter() - t0
        vres, t1 = None, time.perf_counter()
        if spec.verify:
            from ..runtime import open as open_backend

            backend = open_backend(tmp_out)
            images = spec.verify_images or sample_images()  # real images with objects, when there are any
            # int8: the model's own calibration images come next (a generated scene has nothing at conf 0.25)
            own = _calibration_samples(spec) if spec.precision == "int8" and (spec.calib_data or spec.calib_images) \
                else None
            images = images or own
            opt = VerifyOptions(batch=spec.batch, dynamic=spec.dynamic, atol=spec.atol,
                                nms=VERIFY_NMS_INT8 if spec.precision == "int8" else VERIFY_NMS)
            vres = verify(backend, ref, imgsz, spec.precision, opt, images=images, raise_on_fail=False)
            tried = [vres]
            if vres.problem and images and not spec.verify_images:  # the samples hold none of this model's classes
                vres = verify(backend, ref, imgsz, spec.precision, opt, images=own if images != own else None,
                              raise_on_fail=False)
                tried.append(vres)
            if vres.problem and spec.verify_images:  # the given images, or the model itself?
                probe = sample_images()
                tried += [verify(backend, ref, imgsz, spec.precision, opt, images=im, raise_on_fail=False)
                          for im in ([probe, None] if probe else [None])]
            del backend
            blind = False
            if vres.problem:
                vres.problem, blind = _nothing_to_compare(vres.problem, tried[1:] if spec.verify_images else tried)
            if not vres.passed:
                raise ExportError(f"{out}: verification FAILED, artifact not written: {vres.summary()}",
                                  fields=("verify_source",) if vres.problem and not blind else ())
        verify_seconds = time.perf_counter() - t1
        for f in [f for f in files if f != tmp_out] + [tmp_out]:  # the file that opens the artifact last
            dest = out.parent / f.name
            os.replace(f, dest)
            final.append(dest)
    except BaseException:
        for f in final:
            f.unlink(missing_ok=True)
        shutil.rmtree(tmpdir, ignore_errors=True)
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(tmpdir, ignore_errors=True)
    size = sum(f.stat().st_size for f in final) / 1e6
    return ExportResult(ex.name, out, [final[-1], *final[:-1]], size, seconds, vres, meta, verify_seconds)
