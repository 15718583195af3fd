"""Edge runtime backends: NCNN.

An NCNN artifact is a ``.param`` (the graph) with its ``.bin`` (the weights) and yolopt's metadata in
``<stem>.json`` beside them (an Ultralytics-style ``metadata.yaml`` is read too). ``runtime.open`` takes the
``.param`` or the folder holding exactly one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RuntimeBackendError
from ..machine import usable_cpus
from .backends import Backend, _first_line, _unsupported, check_precision, decode_metadata, upstream_sidecar_metadata

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
