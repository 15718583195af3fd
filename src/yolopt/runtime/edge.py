"""Edge runtime backends: NCNN and LiteRT (TFLite).

An NCNN artifact is a ``.param`` (the graph) with its ``.bin`` (the weights) and yolopt's metadata in
``<stem>.json`` beside them (an Ultralytics-style ``metadata.yaml`` is read too). ``runtime.open`` takes the
``.param`` or the folder holding exactly one.

A LiteRT artifact is one ``.tflite`` file with yolopt's metadata inside (a TFLite ``Metadata`` entry named
``yolopt``, JSON); upstream YOLOv5's ``meta.txt`` appended as a zip is read too. It runs on ``ai-edge-litert``'s
interpreter with the XNNPACK delegate.

An ExecuTorch artifact is one ``.pte`` program (lowered to XNNPACK) with yolopt's metadata inside: a constant
method ``yolopt_metadata`` that returns its JSON bytes. It runs on ``executorch``'s Python runtime.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RuntimeBackendError
from ..machine import usable_cpus
from .backends import (
    Backend,
    _first_line,
    _unsupported,
    check_precision,
    decode_metadata,
    default_threads,
    upstream_sidecar_metadata,
)

log = logging.getLogger("yolopt")


def require_ncnn(path) -> Any:
    """The ``ncnn`` module, or one clear error naming the install that fixes it."""
    try:
        import ncnn
    except ImportError:
        raise RuntimeBackendError(f"{path}: the ncnn runtime is not installed (pip install 'yolopt[edge]', or "
                                  "pip install ncnn)") from None
    return ncnn


def ncnn_default_threads() -> int:
    """NCNN's default thread count: 1 when at most 2 cores are usable, else the usable cores.

    NCNN runs layers on OpenMP threads that meet at a barrier after each layer. On a machine whose cores are
    shared with another busy process, a descheduled thread holds every other one at that barrier: yolov5n at
    640 px ran about 10x slower on 2 threads than on 1 on a loaded 2-core machine (issue 36). One thread
    cannot stall that way; pass ``threads`` to choose otherwise.
    """
    n = usable_cpus()
    return 1 if n <= 2 else n


def _read_metadata(param: Path) -> dict[str, Any]:
    """yolopt's ``<stem>.json`` beside the .param, else an Ultralytics-style ``metadata.yaml``; {} when neither."""
    side = param.with_suffix(".json")
    if side.is_file():
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            log.warning("%s: unreadable metadata (%s); ignored", side, _first_line(e))
        else:
            if isinstance(data, dict):
                return data
            log.warning("%s: metadata is not a JSON object; ignored", side)
    return upstream_sidecar_metadata(param)


class NcnnBackend(Backend):
    """An NCNN model on the CPU, computed in fp32: NCNN's fp16 / bf16 storage and arithmetic are switched off, so
    fp32 means fp32 on Arm CPUs too. An fp16 artifact (fp16 weights) is widened to fp32 when it loads.

    ``threads``: NCNN's OpenMP threads (default :func:`ncnn_default_threads`). ``spin=False`` (the default)
    sets ``openmp_blocktime`` 0: a thread that finishes a layer sleeps at once instead of spinning 20 ms for
    the next one, which leaves the core to the pre/post-processing and to other processes. NCNN has no batch
    dimension: a batch runs image by image (``batch`` is 1).
    """

    name = "ncnn"

    def __init__(self, path, threads: int | None = None, precision: str | None = None, spin: bool = False):
        ncnn = require_ncnn(path)
        self.path = Path(path)
        bin_path = self.path.with_suffix(".bin")
        if not bin_path.is_file():
            raise RuntimeBackendError(f"{self.path}: NCNN weights file {bin_path.name} is missing next to it")
        meta = decode_metadata(_read_metadata(self.path))
        self._init_meta(meta)
        want = check_precision(precision)
        if want not in (None, "fp32"):
            raise _unsupported(self.path, "ncnn", want, "the ncnn backend computes in fp32 (an fp16 artifact has fp16 "
                               "weights, run in fp32)")
        self.precision = "fp32"
        self.threads = int(threads) if threads else ncnn_default_threads()
        self.spin = spin
        net = ncnn.Net()
        opt = net.opt
        opt.num_threads = self.threads
        opt.use_vulkan_compute = False
        for k in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                  "use_bf16_packed"):
            setattr(opt, k, False)
        if not spin:
            opt.openmp_blocktime = 0
        if net.load_param(str(self.path)) != 0:
            raise RuntimeBackendError(f"{self.path}: not a loadable NCNN .param file")
        if net.load_model(str(bin_path)) != 0:
            raise RuntimeBackendError(f"{self.path}: NCNN cannot load the weights {bin_path.name} (truncated, or "
                                      "not this .param's)")
        ins, outs = list(net.input_names()), list(net.output_names())
        if len(ins) != 1 or not outs:
            raise RuntimeBackendError(f"{self.path}: expected one input and an output, found inputs {ins} and "
                                      f"outputs {outs}")
        self.net, self._ncnn, self.input_name, self.output_name = net, ncnn, ins[0], outs[0]
        self.batch = 1
        self.dynamic = bool(meta.get("dynamic", False)) or self.imgsz is None
        self._open_kwargs = {"threads": threads, "precision": precision, "spin": spin}

    def _run(self, x: np.ndarray):
        a = np.ascontiguousarray(x[0], dtype=np.float32)  # ncnn.Mat wraps this memory: keep it alive until extract
        ex = self.net.create_extractor()
        if ex.input(self.input_name, self._ncnn.Mat(a)) != 0:
            raise RuntimeBackendError(f"{self.path}: NCNN refused the input of shape {tuple(x.shape)}")
        ret, out = ex.extract(self.output_name)
        if ret != 0:
            raise RuntimeBackendError(f"{self.path}: NCNN inference failed (status {ret}) on input {tuple(x.shape)}")
        return np.array(out)[None]

    def describe(self) -> dict:
        return {**super().describe(), "spin": self.spin}


# --- LiteRT (TFLite) ------------------------------------------------------------------------------------------

TFLITE_IDENTIFIER = b"TFL3"  # bytes 4-8 of every TFLite flatbuffer
LITERT_METADATA = "yolopt"  # the Metadata entry yolopt writes (export/edge.py)


def require_litert(path) -> Any:
    """The LiteRT ``Interpreter`` class, or one clear error naming the install that fixes it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise RuntimeBackendError(f"{path}: the LiteRT runtime is not installed (pip install 'yolopt[edge]', or "
                                  "pip install ai-edge-litert)") from None
    return Interpreter


def tflite_metadata(data: bytes, where: Path | str = "model") -> dict[str, Any]:
    """Metadata of a ``.tflite`` (its bytes): yolopt's ``Metadata`` entry (a dict of values), else upstream
    YOLOv5's ``meta.txt`` appended as a zip (``{'stride': 32, 'names': {...}}``, read as a literal, never
    evaluated); {} when neither (with a warning when one is unreadable)."""
    try:
        from ai_edge_litert import schema_py_generated as fb

        model = fb.Model.GetRootAs(bytearray(data), 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == LITERT_METADATA.encode():
                meta = json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8"))
                if isinstance(meta, dict):
                    return meta
                log.warning("%s: yolopt metadata is not a JSON object; ignored", where)
    except Exception as e:  # noqa: BLE001 - a damaged entry: the model may still run, with default metadata
        log.warning("%s: unreadable yolopt metadata (%s); ignored", where, _first_line(e))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:  # upstream's export.py appends meta.txt with tflite_support
            names = z.namelist()
            text = z.read(names[0]).decode("utf-8") if names else ""
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, KeyError):
        return {}
    try:
        meta = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        log.warning("%s: unreadable upstream metadata in the file; ignored", where)
        return {}
    return {k: meta[k] for k in ("names", "stride") if k in meta} if isinstance(meta, dict) else {}


@contextmanager
def _native_stderr_to_log(tag: str = "litert"):
    """Capture what native code writes to file descriptor 2 while the block runs (LiteRT prints "INFO: Created
    TensorFlow Lite XNNPACK delegate for CPU." on each interpreter's first run); INFO lines go to the debug log,
    anything else back to stderr."""
    fd = 2  # native code writes to the process's fd 2, whatever sys.stderr is
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            for ln in tmp.read().decode("utf-8", "replace").splitlines():
                if ln.startswith("INFO: "):
                    log.debug("%s: %s", tag, ln[6:])
                elif tag == "executorch" and ln.startswith("["):  # its cpuinfo probe: "[cpuinfo_utils.cpp:71] ..."
                    log.debug("%s: %s", tag, ln)
                elif ln.strip():
                    print(ln, file=sys.stderr)


class LiteRTBackend(Backend):
    """A LiteRT (TFLite) model on the CPU: ``ai-edge-litert``'s interpreter with the XNNPACK delegate.

    ``threads``: the interpreter's (and XNNPACK's) threads, default the usable cores. A float artifact computes
    in fp32 (fp16 weights are widened when the model loads); an int8 one in int8, with float input and outputs.
    The output is one ``(B, N, 5 + nc)`` tensor, or two that are joined into one: boxes ``(B, N, 4)`` and scores
    ``(B, N, 1 + nc)`` (int8 artifacts: each has its own scale). The batch is the artifact's fixed one.
    """

    name = "litert"

    def __init__(self, path, threads: int | None = None, precision: str | None = None):
        Interpreter = require_litert(path)
        self.path = Path(path)
        data = self.path.read_bytes()
        if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
            raise RuntimeBackendError(f"{self.path}: not a TFLite model file (no TFL3 identifier)")
        meta = decode_metadata(tflite_metadata(data, self.path))
        self.threads = int(threads) if threads else default_threads()
        try:
            interp = Interpreter(model_content=data, num_threads=self.threads)
            runner = interp.get_signature_runner()
        except (ValueError, RuntimeError) as e:
            raise RuntimeBackendError(f"{self.path}: LiteRT cannot load this model ({_first_line(e)})") from None
        ins, outs = runner.get_input_details(), runner.get_output_details()
        shapes = {k: tuple(int(v) for v in d["shape"]) for k, d in outs.items()}
        if len(ins) != 1 or len(outs) not in (1, 2):
            raise RuntimeBackendError(f"{self.path}: expected one input and one or two outputs, found inputs "
                                      f"{list(ins)} and outputs {list(outs)}")
        (self.input_name, inp), = ins.items()
        shape = tuple(int(v) for v in inp["shape"])
        if len(shape) != 4 or shape[1] != 3:
            raise RuntimeBackendError(f"{self.path}: expected a (B, 3, H, W) input, found {shape}")
        self.output_names = sorted(outs, key=_natural)  # output_0 (predictions or boxes), output_1 (scores)
        cols = sum(s[-1] for s in shapes.values())
        self._init_meta(meta, nc_output=cols - 5)
        self.imgsz, self.batch, self.dynamic = (shape[2], shape[3]), shape[0], False
        self.end2end, self.nms = False, None
        self._in_quant = inp.get("quantization", (0.0, 0)) if inp["dtype"] != np.float32 else None
        self._in_dtype = inp["dtype"]
        self._out_quant = {k: (d.get("quantization", (0.0, 0)) if d["dtype"] != np.float32 else None)
                           for k, d in outs.items()}
        want = check_precision(precision)
        own = "int8" if self.artifact_precision == "int8" else "fp32"
        if want not in (None, own):
            raise _unsupported(self.path, "litert", want, f"this artifact computes in {own} on LiteRT's CPU "
                               "kernels (an fp16 artifact has fp16 weights, run in fp32)")
        self.precision = own
        self.interp, self.runner = interp, runner
        self._open_kwargs = {"threads": threads, "precision": precision}
        with _native_stderr_to_log():  # XNNPACK is applied on the first run, and says so on stderr: run once here
            self._run(np.zeros(shape, dtype=np.float32))

    def _run(self, x: np.ndarray):
        if self._in_quant is not None:  # a graph with a quantized input: x / scale + zero point
            scale, zero = self._in_quant
            x = np.clip(np.round(x / scale + zero), *_int_range(self._in_dtype)).astype(self._in_dtype)
        try:
            res = self.runner(**{self.input_name: x})
        except (ValueError, RuntimeError) as e:
            raise RuntimeBackendError(f"{self.path}: LiteRT inference failed on input {tuple(x.shape)} "
                                      f"({_first_line(e)})") from None
        parts = []
        for k in self.output_names:
            y = res[k]
            q = self._out_quant[k]
            if q is not None:
                y = (y.astype(np.float32) - q[1]) * q[0]
            parts.append(np.asarray(y, dtype=np.float32))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def _natural(name: str) -> tuple:
    """Sort key: ``output_2`` before ``output_10``."""
    head = name.rstrip("0123456789")
    return head, int(name[len(head):] or -1)


def _int_range(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


# --- ExecuTorch (.pte) ----------------------------------------------------------------------------------------

EXECUTORCH_METADATA = "yolopt_metadata"  # the constant method yolopt's exporter adds (export/edge.py)
EXECUTORCH_INSTALL = "pip install --no-deps executorch==1.5.1 ruamel.yaml==0.19.1 tabulate==0.10.0"  # export.edge.EXECUTORCH


@contextmanager
def quiet_executorch_import():
    """Importing executorch imports torchao, which logs a warning for each optional CUDA kernel library it cannot
    load on a CPU-only machine, and torch warns about one of torchao's Enum registrations: keep those (and Python
    warnings) off the user's stderr while the import runs."""
    import warnings

    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def require_executorch(path) -> Any:
    """ExecuTorch's ``Runtime`` (its Python runtime, with the XNNPACK backend built in), or one clear error naming
    the install that fixes it."""
    try:
        with quiet_executorch_import():
            from executorch.runtime import Runtime
    except ImportError:
        raise RuntimeBackendError(f"{path}: the ExecuTorch runtime is not installed ({EXECUTORCH_INSTALL})"
                                  ) from None
    return Runtime


def _pte_metadata(program, where: Path) -> dict[str, Any]:
    """yolopt's metadata from the program's ``yolopt_metadata`` method; {} when it has none (or it is damaged,
    with a warning)."""
    if EXECUTORCH_METADATA not in program.method_names:
        return {}
    try:
        raw = program.load_method(EXECUTORCH_METADATA).execute([])[0]
        meta = json.loads(bytes(np.asarray(raw, dtype=np.uint8).tobytes()).decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - a damaged entry: the model may still run, with default metadata
        log.warning("%s: unreadable yolopt metadata (%s); ignored", where, _first_line(e))
        return {}
    if not isinstance(meta, dict):
        log.warning("%s: yolopt metadata is not a JSON object; ignored", where)
        return {}
    return meta


# ExecuTorch's thread pool (XNNPACK's threads) is one per process. Resizing it once a program has loaded crashed
# executorch 1.5.1 (SIGSEGV in a later run of a method loaded before the resize), so it is sized once, by the
# first ExecuTorchBackend of the process, before its program loads; the count it got is kept here.
_POOL: dict[str, int | None] = {"threads": None}


def _pool_threads(path: Path, want: int | None) -> int:
    """Size ExecuTorch's thread pool to ``want`` (default the usable cores) when no program has loaded in this
    process yet; afterwards the pool keeps its size (a warning when ``want`` differs). Returns the pool's size."""
    from executorch.extension.pybindings import portable_lib as et

    if _POOL["threads"] is None:
        n = int(want) if want else default_threads()
        with _native_stderr_to_log("executorch"):  # creating the pool probes the CPU, resizing it says so: stderr
            if et._threadpool_get_thread_count() != n:
                et._unsafe_reset_threadpool(n)
            _POOL["threads"] = int(et._threadpool_get_thread_count())
    elif want and int(want) != _POOL["threads"]:
        log.warning("%s: ExecuTorch's thread pool is one per process and already has %d threads (resizing it after "
                    "a program has loaded crashes executorch); running on %d, not %d", path, _POOL["threads"],
                    _POOL["threads"], int(want))
    return int(_POOL["threads"])


class ExecuTorchBackend(Backend):
    """An ExecuTorch program (``.pte``) on the CPU, run by ``executorch``'s Python runtime; the parts lowered to
    XNNPACK run on its kernels, the rest on ExecuTorch's portable ones. Computes in fp32, or in int8 for an artifact
    exported at precision int8 (PT2E, Detect float).

    ``threads``: XNNPACK's thread pool (default the usable cores). The pool is one per process and is sized by
    the first backend the process opens (see ``_POOL``): a later one asking for another count runs on the pool's
    with a warning, and ``threads`` says what it runs on. The batch is the artifact's fixed one.
    """

    name = "executorch"

    def __init__(self, path, threads: int | None = None, precision: str | None = None):
        Runtime = require_executorch(path)
        self.path = Path(path)
        data = self.path.read_bytes()
        if len(data) < 8 or data[4:6] != b"ET":  # a .pte flatbuffer's identifier: "ET" + two version digits
            raise RuntimeBackendError(f"{self.path}: not an ExecuTorch program file (no ET identifier)")
        self.threads = _pool_threads(self.path, threads)
        try:
            with _native_stderr_to_log("executorch"):
                program = Runtime.get().load_program(data)
                method = program.load_method("forward")
        except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError / ValueError / its own types
            raise RuntimeBackendError(f"{self.path}: ExecuTorch cannot load this program ({_first_line(e)})"
                                      ) from None
        if method is None:
            raise RuntimeBackendError(f"{self.path}: the program has no forward method")
        mm = method.metadata
        if mm.num_inputs() != 1 or mm.num_outputs() != 1:
            raise RuntimeBackendError(f"{self.path}: expected one input and one output, found {mm.num_inputs()} "
                                      f"inputs and {mm.num_outputs()} outputs")
        shape = tuple(int(v) for v in mm.input_tensor_meta(0).sizes())
        out = tuple(int(v) for v in mm.output_tensor_meta(0).sizes())
        if len(shape) != 4 or shape[1] != 3 or len(out) != 3:
            raise RuntimeBackendError(f"{self.path}: expected a (B, 3, H, W) input and a (B, N, 5 + nc) output, "
                                      f"found {shape} and {out}")
        meta = decode_metadata(_pte_metadata(program, self.path))
        self._init_meta(meta, nc_output=out[-1] - 5)
        self.imgsz, self.batch, self.dynamic = (shape[2], shape[3]), shape[0], False
        self.end2end, self.nms = False, None
        want = check_precision(precision)
        own = "int8" if self.artifact_precision == "int8" else "fp32"
        if want not in (None, own):
            raise _unsupported(self.path, "executorch", want, f"this artifact computes in {own} on XNNPACK's CPU "
                               "kernels")
        self.precision = own
        self.program, self.method = program, method
        self._open_kwargs = {"threads": threads, "precision": precision}
        with _native_stderr_to_log("executorch"):  # the first run sets XNNPACK up: once here
            self._run(np.zeros(shape, dtype=np.float32))

    def _run(self, x: np.ndarray):
        import torch

        try:
            y = self.method.execute([torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])[0]
        except Exception as e:  # noqa: BLE001
            raise RuntimeBackendError(f"{self.path}: ExecuTorch inference failed on input {tuple(x.shape)} "
                                      f"({_first_line(e)})") from None
        return y.clone() if isinstance(y, torch.Tensor) else np.asarray(y, dtype=np.float32)
