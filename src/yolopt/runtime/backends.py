"""Inference backends: PyTorch, ONNX Runtime, OpenVINO, TorchScript, TensorRT (NCNN and LiteRT: edge.py).

All of them map a float (B,3,H,W) RGB batch in [0,1] (torch tensor or numpy array) to a
``torch.Tensor`` on the CPU: decoded ``(B,N,5+nc)`` predictions, or, for an artifact exported
with ``--nms`` (``end2end``), the final detections ``(K,7)`` = [batch, x1, y1, x2, y2, conf, cls].
"""

from __future__ import annotations

import ast
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..choices import PRECISIONS
from ..data.letterbox import to_pixels
from ..errors import RuntimeBackendError
from ..machine import has_native_bf16, has_native_fp16, usable_cpus
from .altstack import compile_openvino, preserve_sigaltstack

log = logging.getLogger("yolopt")

METADATA_FORMAT = "yolopt-export"
SUFFIXES = {
    ".pt": "torch", ".pth": "torch", ".safetensors": "torch",
    ".onnx": "onnxruntime", ".xml": "openvino", ".torchscript": "torchscript", ".engine": "tensorrt", ".trt": "tensorrt",
    ".param": "ncnn", ".tflite": "litert", ".pte": "executorch",
}
FOLDER_SUFFIXES = {".xml": "openvino", ".param": "ncnn"}  # a folder holding exactly one such file opens as it


# OpenVINO's INFERENCE_PRECISION_HINT for each compute precision (int8 comes from the IR itself)
_OV_HINT = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}


def check_precision(precision: str | None, where: str = "--precision") -> str | None:
    """``None`` or a known precision name; anything else is one clear error."""
    if precision is None:
        return None
    p = str(precision).lower()
    if p not in PRECISIONS:
        raise RuntimeBackendError(f"{where} {precision}: unknown precision (choose one of {', '.join(PRECISIONS)})")
    return p


def artifact_precision(meta: dict) -> str:
    """The precision an artifact was written in: ``precision`` metadata, or the older ``half`` flag."""
    p = meta.get("precision")
    if isinstance(p, str) and p.lower() in PRECISIONS:
        return p.lower()
    return "fp16" if meta.get("half") else "fp32"


_LITERAL_MAX = 1_000_000  # characters; class-name dicts of thousands of classes are far below this


def decode_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata strings -> python values (missing keys are absent); nothing is ever evaluated.

    yolopt writes JSON. Upstream YOLOv5's ``export.py`` writes ``str(value)``: ``stride`` "32"
    and ``names`` "{0: 'person', 1: 'bicycle', ...}" (a Python dict's repr), which are read with
    ``ast.literal_eval`` - literals only (strings, numbers, tuples, lists, dicts, booleans,
    None), no names, calls or attributes. A value that is neither stays a string; values that
    are not strings (a sidecar yaml's) pass through.
    """
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if not isinstance(v, str):
            out[k] = v
            continue
        try:
            out[k] = json.loads(v)
            continue
        except ValueError:
            pass
        try:
            out[k] = ast.literal_eval(v.strip()) if len(v) <= _LITERAL_MAX else v
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            out[k] = v
    return out


def upstream_sidecar_metadata(xml: str | Path) -> dict[str, Any]:
    """``names`` / ``stride`` from the yaml upstream writes next to an OpenVINO IR it exported.

    YOLOv5's ``export.py`` writes ``<stem>.yaml`` beside ``<stem>.xml``; Ultralytics' later
    exporters write ``metadata.yaml``. Read with ``yaml.safe_load`` (no tags, no code); {} when
    there is none or it is unreadable (with a warning).
    """
    import yaml

    xml = Path(xml)
    for cand in (xml.with_suffix(".yaml"), xml.parent / "metadata.yaml"):
        if not cand.is_file():
            continue
        try:
            data = yaml.safe_load(cand.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            log.warning("%s: unreadable metadata yaml (%s); ignored", cand, _first_line(e))
            continue
        if isinstance(data, dict):
            return {k: data[k] for k in ("names", "stride") if k in data}
    return {}


def _class_names(names: Any) -> list[str] | None:
    """A list of class names from a list, or a dict ``{index: name}`` with indices 0..n-1; else None."""
    if isinstance(names, dict):
        try:
            items = sorted((int(k), v) for k, v in names.items())
        except (TypeError, ValueError):
            return None
        if [i for i, _ in items] != list(range(len(items))):
            return None
        names = [v for _, v in items]
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, (str, int, float)) and not isinstance(n, bool)
                                                          for n in names):
        return [str(n) for n in names]
    return None


def _positive_int(v: Any) -> int | None:
    try:
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return n if n > 0 and n == v else None


class Backend:
    """Common interface. Subclasses implement ``_run(np.ndarray) -> np.ndarray | torch.Tensor``."""

    name = "base"
    path: Path
    names: list[str]
    nc: int
    stride: torch.Tensor
    imgsz: tuple[int, int] | None = None  # the export size (h, w), when known
    batch: int | None = None  # fixed batch size, None when dynamic
    dynamic: bool = True  # spatial size may vary
    end2end: bool = False  # NMS inside the artifact
    nms: dict | None = None  # thresholds baked in when end2end
    precision: str = "fp32"  # what the backend computes in (fp32 unless asked otherwise)
    artifact_precision: str = "fp32"  # what the file stores (fp16 weights run at fp32 on most CPUs)
    uint8_input: bool = False  # the graph takes letterboxed uint8 pixels (quantized artifacts)
    raw_head: bool = False  # the artifact ends at Detect's convs; ``__call__`` decodes (ops.decode_raw)
    anchors: np.ndarray | None = None  # (nl, na, 2) anchor sizes in input pixels, for a raw head
    threads: int | None = None
    device: Any = "cpu"

    def _init_meta(self, meta: dict[str, Any], stride_default=(8, 16, 32), nc_output: int | None = None) -> None:
        """Names, class count, stride, size and precision from decoded metadata (yolopt's or upstream's).

        ``nc_output``: the class count the model's output shape says (5 + nc columns), when known;
        it wins over the metadata. Class names that cannot be read, or whose count does not match,
        become numbered names with a warning - never characters of a string.
        """
        where = getattr(self, "path", "model")
        nc = nc_output if nc_output and nc_output > 0 else _positive_int(meta.get("nc"))
        raw = meta.get("names")
        names = _class_names(raw)
        if names is not None and nc is not None and len(names) != nc:
            log.warning("%s: the metadata names %d classes but the model predicts %d; using numbered class names",
                        where, len(names), nc)
            names = None
        elif names is None and raw is not None:
            log.warning("%s: class names in the metadata are not a list or an {index: name} mapping (%s); using "
                        "numbered class names", where, str(raw)[:60])
        if names is None:
            names = [str(i) for i in range(nc or 80)]
        self.names = names
        self.nc = len(names)
        st = meta.get("stride", list(stride_default))
        st = list(st) if isinstance(st, (list, tuple)) else [st]
        if not st or any(not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1024 for v in st):
            log.warning("%s: unreadable stride %s in the metadata; assuming %s", where, str(meta.get("stride"))[:40],
                        list(stride_default))
            st = list(stride_default)
        self.stride = torch.tensor([float(v) for v in st], dtype=torch.float32)
        if meta.get("imgsz") is not None:
            im = meta["imgsz"]
            try:
                self.imgsz = (int(im[0]), int(im[1])) if isinstance(im, (list, tuple)) else (int(im), int(im))
            except (TypeError, ValueError, IndexError):
                log.warning("%s: unreadable imgsz %s in the metadata; ignored", where, str(im)[:40])
        self.end2end = bool(meta.get("nms"))
        self.nms = meta.get("nms") or None
        self.raw_head = meta.get("head") == "raw"
        if self.raw_head:
            try:
                self.anchors = np.asarray(meta["anchors"], dtype=np.float32).reshape(len(self.stride), -1, 2)
            except (KeyError, TypeError, ValueError):
                raise RuntimeBackendError(f"{where}: a raw-head artifact without readable anchors in its "
                                          f"metadata") from None
        self.artifact_precision = artifact_precision(meta)
        self.version = meta.get("yolopt_version")

    # --- shape handling -------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple:
        """(B, 3, H, W) with ``None`` for dynamic dimensions."""
        h, w = (self.imgsz if (self.imgsz and not self.dynamic) else (None, None))
        return (self.batch, 3, h, w)

    @property
    def fixed_shape(self) -> bool:
        return not self.dynamic

    def check_input(self, x: np.ndarray) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise RuntimeBackendError(f"{self.path}: expected a (B,3,H,W) input, got shape {tuple(x.shape)}")
        if not self.dynamic and self.imgsz and tuple(x.shape[2:]) != tuple(self.imgsz):
            raise RuntimeBackendError(
                f"{self.path}: input size {x.shape[2]}x{x.shape[3]} does not match the artifact's fixed input "
                f"{self.imgsz[0]}x{self.imgsz[1]} (use --imgsz {self.imgsz[0]}, or export with --dynamic)")
        s = int(self.stride.max())
        if self.dynamic and (x.shape[2] % s or x.shape[3] % s):
            raise RuntimeBackendError(
                f"{self.path}: input size {x.shape[2]}x{x.shape[3]} is not a multiple of the stride {s}")

    def __call__(self, x, conf: float | None = None) -> torch.Tensor:
        """``x``: ``(B, 3, H, W)`` letterboxed input -> ``(B, N, 5+nc)`` predictions (or an end2end artifact's
        ``(K, 7)`` rows). ``conf``: the score threshold the caller's NMS applies; a raw-head artifact then
        decodes only the cells whose objectness can pass it (the other rows could not survive NMS)."""
        a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        # uint8 pixels pass straight into a graph that takes them; anything else becomes float32
        a = np.ascontiguousarray(a, dtype=np.uint8 if a.dtype == np.uint8 and self.uint8_input else np.float32)
        self.check_input(a)
        if self.raw_head:
            return self._decoded(a, conf)
        if self.batch is None or a.shape[0] == self.batch:
            return self._wrap(self._run(a))
        # fixed batch: run in chunks, zero-padding the last one
        outs = []
        for i in range(0, a.shape[0], self.batch):
            chunk = a[i:i + self.batch]
            n = chunk.shape[0]
            if n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)])
            y = self._wrap(self._run(chunk))
            if self.end2end:
                y = y[y[:, 0] < n]
                y[:, 0] += i
            else:
                y = y[:n]
            outs.append(y)
        return torch.cat(outs, 0)

    def _decoded(self, a: np.ndarray, conf: float | None) -> torch.Tensor:
        from ..ops.decode import decode_raw

        step = self.batch or a.shape[0]
        outs = []
        for i in range(0, a.shape[0], step):
            chunk = a[i:i + step]
            n = chunk.shape[0]
            if n < step:  # fixed batch: zero-pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(decode_raw(self._run_all(chunk), self.anchors, self.stride.tolist(), conf)[:n])
        return torch.from_numpy(pad_rows(outs))

    def _run_all(self, x: np.ndarray) -> list:
        """Every output of the artifact (a raw head's per-level maps); backends that support raw heads override."""
        raise RuntimeBackendError(f"{self.path}: {self.name} cannot run a raw-head artifact")

    @staticmethod
    def _wrap(y) -> torch.Tensor:
        if isinstance(y, (list, tuple)):
            y = y[0]
        t = y if isinstance(y, torch.Tensor) else torch.from_numpy(np.asarray(y))
        return t.float().cpu()

    def _run(self, x: np.ndarray):  # pragma: no cover - abstract
        raise NotImplementedError

    _open_kwargs: dict = {}

    def clone(self) -> "Backend":
        """An independent instance (its own session) for another stream/thread: same device, threads,
        precision and providers."""
        return type(self)(self.path, **self._open_kwargs)

    def resolve_imgsz(self, imgsz: int | tuple[int, int]) -> int | tuple[int, int]:
        """The input size to feed: a fixed-shape artifact's own size, else ``imgsz`` rounded up to the stride."""
        from ..ops.sizes import check_imgsz

        if not self.dynamic and self.imgsz:
            h, w = self.imgsz
            req = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
            if tuple(req) != (h, w):
                log.warning("%s has a fixed %dx%d input; using it instead of --imgsz %s", self.path, h, w,
                            "x".join(map(str, dict.fromkeys(req))))
            return h if h == w else (h, w)
        s = int(self.stride.max())
        if isinstance(imgsz, int):
            return check_imgsz(imgsz, s)
        return tuple(check_imgsz(int(v), s) for v in imgsz)

    @property
    def default_imgsz(self) -> int | tuple[int, int]:
        """The input size an exported artifact was made for (its metadata), else 640 (PyTorch weights too): the
        default of predict and val."""
        if not self.imgsz or self.name.startswith("torch"):
            return 640
        h, w = self.imgsz
        return h if h == w else (h, w)

    def default_letterbox(self) -> str:
        """The letterbox an image gets by default: an artifact's own (rect for a dynamic one, square for a fixed
        one); square for PyTorch, like upstream's detect.py at a fixed size."""
        return "square" if self.name.startswith("torch") else self.letterbox_mode

    @property
    def letterbox_mode(self) -> str:
        """How images must be letterboxed for this artifact: ``rect`` (any shape) or ``square`` (fixed input)."""
        return "rect" if self.dynamic else "square"

    def describe(self) -> dict:
        return {"backend": self.name, "path": str(self.path), "nc": self.nc, "imgsz": self.imgsz,
                "batch": self.batch, "dynamic": self.dynamic, "end2end": self.end2end, "precision": self.precision,
                "artifact_precision": self.artifact_precision, "threads": self.threads, "device": str(self.device)}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} input={self.input_shape}>"


@contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` torch intra-op threads, then put the process-wide setting back."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _unsupported(path, runtime: str, precision: str, why: str) -> RuntimeBackendError:
    return RuntimeBackendError(f"{path}: --precision {precision} is not available with {runtime}: {why}")


def _cpu_precision_check(path, runtime: str, precision: str) -> None:
    """bf16 / fp16 compute on a CPU only where the CPU has it in hardware (no silent emulation)."""
    if precision == "bf16" and not has_native_bf16():
        raise _unsupported(path, runtime, precision, "this CPU has no AVX-512 BF16 or AMX-BF16 "
                           "(see `lscpu`); use fp32")
    if precision == "fp16" and not has_native_fp16():
        raise _unsupported(path, runtime, precision, "this CPU has no AVX-512 FP16 or AMX-FP16; use fp32 "
                           "(fp16 compute needs a CUDA GPU or such a CPU)")


class TorchBackend(Backend):
    """A PyTorch ``DetectionModel`` (upstream .pt, yolopt .safetensors, or a module in memory).

    Files are fused on load unless ``fuse=False``; :meth:`from_model` wraps a module as it is (no copy,
    no fusion), on the device its parameters are on. ``threads`` applies only while the backend runs.
    """

    name = "torch"

    def __init__(self, path=None, threads: int | None = None, fuse: bool = True, device: str | torch.device | None = None,
                 precision: str | None = None, model=None):
        from ..models.checkpoint import load_model

        self.path = Path(path) if path is not None else Path("<model>")
        self.threads = threads
        self.fuse = fuse
        self.name = "torch" if fuse else "torch-unfused"
        if model is None:
            model = load_model(self.path)
            if fuse:
                model = model.fuse()
        if device is None:
            p = next(model.parameters(), None)
            device = p.device if p is not None else "cpu"
        self.device = torch.device(device)
        precision = check_precision(precision) or "fp32"
        if precision == "int8":
            raise _unsupported(self.path, "torch", precision, "INT8 comes from `yolopt quantize` artifacts")
        if self.device.type == "cpu":
            _cpu_precision_check(self.path, "torch", precision)
        elif precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise _unsupported(self.path, "torch", precision, "this GPU has no bf16")
        self.precision = precision
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        model = model.to(self.device).eval()
        self.model = model.to(self.dtype) if self.dtype != torch.float32 else model
        self._init_meta({"names": list(model.names), "nc": model.nc, "stride": [float(s) for s in model.stride]})
        imgsz = (getattr(model, "provenance", None) or {}).get("imgsz") or getattr(model, "imgsz", None)
        self.imgsz = (int(imgsz), int(imgsz)) if isinstance(imgsz, (int, float)) else None
        self._open_kwargs = {"threads": threads, "fuse": fuse, "device": self.device, "precision": precision}

    @classmethod
    def from_model(cls, model, threads: int | None = None, device=None, precision: str | None = None,
                   name: str = "<model>") -> "TorchBackend":
        """Wrap an in-memory ``DetectionModel`` (used as is: no copy, no fusion)."""
        b = cls(name, threads=threads, fuse=True, device=device, precision=precision, model=model)
        b.name = "torch"
        return b

    def __call__(self, x, conf: float | None = None) -> torch.Tensor:
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.check_input(t)
        with torch_threads(self.threads), torch.inference_mode():
            return self.model(t.to(self.device, self.dtype)).float().cpu()

    def __getattr__(self, item):
        # anything else (yaml, parameters(), model internals) is the wrapped DetectionModel's
        model = self.__dict__.get("model")
        if model is None:
            raise AttributeError(item)
        return getattr(model, item)

    def clone(self) -> "TorchBackend":
        import copy

        return TorchBackend(self.path, model=copy.deepcopy(self.model), **self._open_kwargs)


class OnnxBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path, threads: int | None = None, providers: list[str] | None = None,
                 precision: str | None = None, profiling: str | None = None, device=None, spin: bool = True):
        """``spin=False``: idle intra-op threads sleep instead of spin-waiting for the next kernel (ORT's
        ``session.intra_op.allow_spinning``), so they do not take a core from the decode / NMS around each call."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeBackendError(f"{path}: onnxruntime is not installed (pip install 'yolopt[deploy]')") from None
        self.path = Path(path)
        self.threads = threads
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.spin = spin
        if profiling:  # a file prefix: per-node timings for `yolopt profile`
            so.enable_profiling = True
            so.profile_file_prefix = str(profiling)
        avail = ort.get_available_providers()
        if providers is None:
            want_cuda = device is None or torch.device(device).type == "cuda"
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in avail and (want_cuda or p != "CUDAExecutionProvider")]
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises several exception types
            raise RuntimeBackendError(f"{self.path}: not a loadable ONNX model ({_first_line(e)})") from None
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        shape = self.session.get_outputs()[0].shape
        if meta.get("head") == "raw":  # (B, na*(5+nc), ny, nx) per level
            na = _raw_na(meta)
            cols = shape[1] // na if shape and isinstance(shape[1], int) and na else None
        else:
            cols = shape[-1] if shape else None
        self._init_meta(meta, nc_output=cols - 5 if isinstance(cols, int) and not meta.get("nms") else None)
        if "float16" in inp.type:
            self.artifact_precision = "fp16"
        self.precision = self._check_precision(check_precision(precision))
        b, _, h, w = inp.shape
        self.batch = b if isinstance(b, int) else None
        self.dynamic = not (isinstance(h, int) and isinstance(w, int))
        if not self.dynamic:
            self.imgsz = (h, w)
        self.in_dtype = {"tensor(float16)": np.float16, "tensor(uint8)": np.uint8}.get(inp.type, np.float32)
        self.uint8_input = self.in_dtype == np.uint8  # quantized graphs take the letterboxed pixels themselves
        self._open_kwargs = {"threads": threads, "providers": list(self.providers), "precision": precision,
                             "spin": spin}

    def _check_precision(self, want: str | None) -> str:
        have = self.artifact_precision
        if want is None or want == have:
            return have
        if want == "bf16":
            raise _unsupported(self.path, "onnxruntime", want, "ONNX Runtime has no bf16 CPU kernels for this "
                               "model; run the artifact with OpenVINO (export --format openvino)")
        raise _unsupported(self.path, "onnxruntime", want, f"this artifact is {have}; ONNX Runtime runs an artifact "
                           f"in the precision it was exported in (export it with --precision {want})")

    def _run(self, x):
        return self._run_all(x, self.output_names[:1])[0]

    def _run_all(self, x, names: list[str] | None = None) -> list:
        if self.uint8_input and x.dtype != np.uint8:  # float [0, 1] -> the pixels it came from
            x = to_pixels(x)
        return self.session.run(names, {self.input_name: x.astype(self.in_dtype, copy=False)})


class OpenVINOBackend(Backend):
    """An OpenVINO IR, compiled with an explicit inference precision.

    OpenVINO's CPU plugin would otherwise run an FP32 IR in bf16 on CPUs with AVX-512 BF16 or AMX,
    silently changing results (and, for small models, often speed for the worse). yolopt always
    sets ``INFERENCE_PRECISION_HINT``: f32 unless another precision is asked for, and reads back
    what the compiled model reports (``compiled_precision``).
    """

    name = "openvino"

    def __init__(self, path, threads: int | None = None, device: str = "CPU", precision: str | None = None,
                 profiling: bool = False):
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeBackendError(f"{path}: openvino is not installed (pip install 'yolopt[deploy]')") from None
        self.path = Path(path)
        self.threads = threads
        self.device = str(device or "CPU").upper()
        bin_path = self.path.with_suffix(".bin")
        if self.path.suffix.lower() == ".xml" and not bin_path.exists():
            raise RuntimeBackendError(f"{self.path}: OpenVINO weights file {bin_path.name} is missing next to it")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as e:  # noqa: BLE001
            raise RuntimeBackendError(f"{self.path}: not a loadable OpenVINO IR ({_first_line(e)})") from None
        meta = {}
        if model.has_rt_info(["yolopt"]):
            for k in ("format", "names", "nc", "stride", "imgsz", "batch", "dynamic", "nms", "precision", "half",
                      "yolopt_version"):
                if model.has_rt_info(["yolopt", k]):
                    meta[k] = model.get_rt_info(["yolopt", k]).astype(str)
        else:  # an IR exported by upstream: its metadata is a yaml beside the .xml
            meta = upstream_sidecar_metadata(self.path)
        meta = decode_metadata(meta)
        cols = model.outputs[0].get_partial_shape()[-1] if model.outputs[0].get_partial_shape().rank.is_static else None
        self._init_meta(meta, nc_output=cols.get_length() - 5 if cols is not None and cols.is_static
                        and not meta.get("nms") else None)
        want = check_precision(precision) or ("int8" if self.artifact_precision == "int8" else "fp32")
        caps = set()
        if self.device == "CPU":
            with preserve_sigaltstack():  # the first query loads the CPU plugin, which swaps the signal stack
                caps = set(core.get_property(self.device, "OPTIMIZATION_CAPABILITIES"))
        if self.device == "CPU":
            if want == "bf16" and "BF16" not in caps:
                raise _unsupported(self.path, "openvino", want, "this CPU has no AVX-512 BF16 or AMX-BF16 "
                                   f"(OpenVINO reports {', '.join(sorted(caps))}); use fp32")
            if want == "fp16" and "FP16" not in caps:
                raise _unsupported(self.path, "openvino", want, "this CPU has no native fp16 compute "
                                   f"(OpenVINO reports {', '.join(sorted(caps))}); use fp32")
        if want == "int8" and self.artifact_precision != "int8":
            raise _unsupported(self.path, "openvino", want, f"this artifact is {self.artifact_precision}; INT8 needs "
                               "a quantized IR")
        cfg: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": _OV_HINT[want]}
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = int(threads)
        if profiling:
            cfg["PERF_COUNT"] = "YES"
        try:
            self.compiled = compile_openvino(model, self.device, cfg, core=core)
        except Exception as e:  # noqa: BLE001
            raise RuntimeBackendError(f"{self.path}: OpenVINO cannot compile this IR ({_first_line(e)})") from None
        self.precision = want
        with preserve_sigaltstack():
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.compiled_precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)  # f32 / bf16 / f16
        ps = model.inputs[0].get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in ps]
        self.batch = dims[0]
        self.dynamic = dims[2] is None or dims[3] is None
        if not self.dynamic:
            self.imgsz = (dims[2], dims[3])
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self._open_kwargs = {"threads": threads, "device": self.device, "precision": precision,
                             "profiling": profiling}

    def _run(self, x):
        with self._lock:  # one infer request per backend; clone() for parallel streams
            res = self.request.infer({0: x})
            return np.array(res[self.compiled.outputs[0]])

    def describe(self) -> dict:
        return {**super().describe(), "compiled_precision": self.compiled_precision}


class TorchScriptBackend(Backend):
    name = "torchscript"

    def __init__(self, path, threads: int | None = None, device: str | torch.device = "cpu",
                 precision: str | None = None):
        self.path = Path(path)
        self.threads = threads
        self.device = torch.device(device or "cpu")
        extra = {"config.txt": ""}
        try:
            self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra).eval()
        except Exception as e:  # noqa: BLE001
            raise RuntimeBackendError(f"{self.path}: not a loadable TorchScript file ({_first_line(e)})") from None
        meta = decode_metadata(json.loads(extra["config.txt"])) if extra["config.txt"] else {}
        meta = {k: (json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v) for k, v in meta.items()}
        self._init_meta(meta)
        want = check_precision(precision)
        if want not in (None, self.artifact_precision):
            raise _unsupported(self.path, "torchscript", want, f"this artifact was traced in {self.artifact_precision}")
        self.precision = self.artifact_precision
        self.batch = None if meta.get("dynamic") else meta.get("batch")
        self.dynamic = bool(meta.get("dynamic", False))
        self._open_kwargs = {"threads": threads, "device": self.device, "precision": precision}

    def _run(self, x):
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        with torch_threads(self.threads), torch.inference_mode():
            return self.module(torch.from_numpy(x).to(self.device, dtype))


class TensorRTBackend(Backend):
    """A serialized TensorRT engine, run on CUDA through torch tensors as I/O buffers."""

    name = "tensorrt"

    def __init__(self, path, threads: int | None = None, device: str = "cuda:0", precision: str | None = None):
        self.path = Path(path)
        self.threads = threads
        trt = require_tensorrt(self.path)
        self.device = torch.device(device)
        logger = trt.Logger(trt.Logger.WARNING)
        blob = self.path.read_bytes()
        # yolopt engines start with a length-prefixed JSON metadata block
        meta: dict = {}
        if blob[:8] == b"YOLOPT1\0":
            n = int.from_bytes(blob[8:12], "little")
            meta = decode_metadata(json.loads(blob[12:12 + n]))
            blob = blob[12 + n:]
        with trt.Runtime(logger) as rt:
            self.engine = rt.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise RuntimeBackendError(f"{self.path}: not a TensorRT engine for this TensorRT/GPU version")
        self.context = self.engine.create_execution_context()
        self._init_meta(meta)
        want = check_precision(precision)
        if want not in (None, self.artifact_precision):
            raise _unsupported(self.path, "tensorrt", want, f"this engine was built for {self.artifact_precision}")
        self.precision = self.artifact_precision
        self._open_kwargs = {"threads": threads, "device": str(self.device), "precision": precision}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        shp = tuple(self.engine.get_tensor_shape(self.input_name))
        self.batch = shp[0] if shp[0] > 0 else None
        self.dynamic = shp[2] < 0 or shp[3] < 0
        if not self.dynamic:
            self.imgsz = (shp[2], shp[3])
        self._trt = trt

    def _run(self, x):
        trt = self._trt
        dt = torch.float16 if self.engine.get_tensor_dtype(self.input_name) == trt.DataType.HALF else torch.float32
        inp = torch.from_numpy(x).to(self.device, dt).contiguous()
        self.context.set_input_shape(self.input_name, tuple(inp.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        if min(out_shape) < 0:
            raise RuntimeBackendError(f"{self.path}: data-dependent output shape {out_shape} is not supported")
        odt = torch.float16 if self.engine.get_tensor_dtype(self.output_name) == trt.DataType.HALF else torch.float32
        out = torch.empty(out_shape, dtype=odt, device=self.device)
        self.context.set_tensor_address(self.input_name, inp.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeBackendError(f"{self.path}: TensorRT execution failed")
        stream.synchronize()
        return out


def require_tensorrt(path) -> Any:
    """The ``tensorrt`` module, or one clear error when it or a CUDA GPU is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeBackendError(f"{path}: TensorRT needs the `tensorrt` Python package and an NVIDIA GPU; "
                                  "`tensorrt` is not installed") from None
    if not torch.cuda.is_available():
        raise RuntimeBackendError(f"{path}: TensorRT needs a CUDA GPU; none is available on this machine")
    return trt


class ParallelBackend(Backend):
    """Spread each batch over N independent backend instances (streams) run in threads.

    ONNX Runtime, OpenVINO and PyTorch release the GIL while they compute, so N sessions with
    ``threads = cores / N`` each overlap their work.
    """

    def __init__(self, backend: Backend, workers: int):
        self.base = backend
        self.workers = max(1, int(workers))
        self.replicas = [backend] + [backend.clone() for _ in range(self.workers - 1)]
        self.pool = ThreadPoolExecutor(self.workers)
        for k in ("name", "path", "names", "nc", "stride", "imgsz", "batch", "dynamic", "end2end", "nms", "precision",
                  "artifact_precision", "uint8_input", "raw_head", "anchors", "threads", "device"):
            setattr(self, k, getattr(backend, k))

    def __call__(self, x, conf: float | None = None) -> torch.Tensor:
        n = x.shape[0]
        if n == 1 or self.workers == 1:
            return self.base(x, conf=conf)
        step = max(self.batch or 1, -(-n // self.workers))
        parts = [(i, x[i:i + step]) for i in range(0, n, step)]
        futs = [self.pool.submit(self.replicas[k % self.workers], p, conf) for k, (_, p) in enumerate(parts)]
        outs = [f.result() for f in futs]
        if self.end2end:
            for (i, _), o in zip(parts, outs):
                o[:, 0] += i
            return torch.cat(outs, 0)
        return torch.from_numpy(pad_rows([o.numpy() for o in outs]))  # candidate rows differ in number

    def clone(self):
        return ParallelBackend(self.base.clone(), self.workers)


def predict_above(backend, x, conf: float):
    """``backend(x)`` for a caller whose NMS keeps only scores above ``conf``: a raw-head artifact then decodes
    only the cells that can pass it; any other backend (or model wrapper) is called as is."""
    return backend(x, conf=conf) if getattr(backend, "raw_head", False) else backend(x)


def pad_rows(parts: list[np.ndarray]) -> np.ndarray:
    """``(b_i, n_i, C)`` arrays -> one ``(sum b_i, max n_i, C)`` array, zero rows appended (objectness 0)."""
    n = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, n - p.shape[1]), (0, 0))) for p in parts], 0)


def _raw_na(meta: dict) -> int | None:
    """Anchors per level of a raw-head artifact, from its metadata."""
    try:
        a = meta["anchors"]
        return len(a[0])
    except (KeyError, TypeError, IndexError):
        return None


def _first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:200]


def _folder_model(p: Path) -> Path | None:
    """The model file in a folder: its only OpenVINO .xml, else its only NCNN .param; None when neither."""
    for suffix in FOLDER_SUFFIXES:
        found = sorted(p.glob(f"*{suffix}"))
        if len(found) == 1:
            return found[0]
    return None


def backend_for(path: str | Path) -> str:
    """Backend name for a file, from its suffix (a folder holding one .xml means OpenVINO, one .param NCNN)."""
    p = Path(path)
    if p.is_dir():
        f = _folder_model(p)
        if f is not None:
            return FOLDER_SUFFIXES[f.suffix]
        raise RuntimeBackendError(f"{p}: is a folder, expected a model file")
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise RuntimeBackendError(
            f"{p}: unknown model format '{p.suffix or '(no suffix)'}' "
            f"(expected one of {', '.join(sorted(set(SUFFIXES)))})")
    return kind


def _ncnn_backend(*args, **kwargs) -> Backend:
    from .edge import NcnnBackend  # runtime/edge.py builds on this module

    return NcnnBackend(*args, **kwargs)


def _litert_backend(*args, **kwargs) -> Backend:
    from .edge import LiteRTBackend

    return LiteRTBackend(*args, **kwargs)


def _executorch_backend(*args, **kwargs) -> Backend:
    from .edge import ExecuTorchBackend

    return ExecuTorchBackend(*args, **kwargs)


_CLASSES: dict[str, Callable[..., Backend]] = {
    "torch": TorchBackend, "onnxruntime": OnnxBackend, "openvino": OpenVINOBackend,
    "torchscript": TorchScriptBackend, "tensorrt": TensorRTBackend, "ncnn": _ncnn_backend,
    "litert": _litert_backend, "executorch": _executorch_backend,
}


def _artifact_path(path: str | Path) -> tuple[str, Path]:
    p = Path(path)
    kind = backend_for(p)
    if p.is_dir():
        p = _folder_model(p)
    if not p.exists():
        raise RuntimeBackendError(f"{p}: model file not found")
    if p.stat().st_size == 0:
        raise RuntimeBackendError(f"{p}: empty file, not a model")
    return kind, p


def open(model, *, device=None, threads: int | None = None, workers: int = 1, precision: str | None = None,
         fuse: bool = True, **kwargs) -> Backend:  # noqa: A001 - runtime.open reads naturally
    """Open a model for inference: the one way every command, the evaluator and the benchmark get one.

    ``model``: a file (.pt / .safetensors -> torch, .onnx -> onnxruntime, .xml or its folder ->
    openvino, .torchscript, .engine -> tensorrt, .param or its folder -> ncnn, .tflite -> litert, .pte -> executorch), an in-memory
    ``DetectionModel`` (used as is), or a ``Backend`` (returned, wrapped for ``workers``).

    ``device``: ``cpu``, ``cuda:0``, ``0`` or ``auto`` (PyTorch / TorchScript / TensorRT; ONNX Runtime
    uses CUDA only when asked for). ``threads``: intra-op threads per session, applied only while
    the backend runs (default: the runtime's own, or cores / workers). ``workers > 1``: that many
    independent sessions, each batch split over them (:class:`ParallelBackend`). ``precision``:
    ``fp32 | fp16 | bf16 | int8`` compute precision; default the artifact's own (fp32 for PyTorch),
    and bf16/fp16 only where the runtime and CPU have them, else one clear error.
    """
    from .device import pick_device

    precision = check_precision(precision)
    workers = max(1, int(workers or 1))
    if threads is None and workers > 1:
        threads = default_threads(workers)
    if isinstance(model, Backend):
        backend = model
    elif isinstance(model, torch.nn.Module):
        dev = pick_device(device) if device is not None else None
        backend = TorchBackend.from_model(model, threads=threads, device=dev, precision=precision)
    else:
        kind, p = _artifact_path(model)
        if kind in ("torch", "torchscript"):
            kwargs.setdefault("device", pick_device(device or "auto"))
            if kind == "torch":
                kwargs.setdefault("fuse", fuse)
        elif kind == "tensorrt":
            dev = pick_device(device or "auto") if device not in (None, "auto") else None
            kwargs.setdefault("device", str(dev) if dev is not None and dev.type == "cuda" else "cuda:0")
        elif kind == "onnxruntime" and device not in (None, "auto"):
            kwargs.setdefault("device", pick_device(device))
        backend = _CLASSES[kind](p, threads=threads, precision=precision, **kwargs)
    if workers > 1:
        backend = ParallelBackend(backend, workers)
    return backend


def default_threads(streams: int = 1) -> int:
    """Intra-op threads per stream: the usable cores (affinity, cgroup quota) shared by ``streams``."""
    return max(1, usable_cpus() // max(1, streams))
