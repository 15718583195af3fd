"""The deploy bundle: one folder that runs a yolopt artifact without yolopt (and without torch).

:func:`write_bundle` copies an ONNX, OpenVINO, NCNN or LiteRT artifact into a folder with everything needed to
use it elsewhere: ``deploy.json`` (input, letterbox, class names, thresholds, measured numbers),
``infer.py`` (numpy + OpenCV + the runtime; the same letterbox and NMS as yolopt), its
``requirements.txt``, a ``README.md`` and (ONNX, OpenVINO) a Triton Inference Server model repository.

The folder is built next to ``out_dir`` under a hidden name and renamed into place only once it is
complete; an existing bundle there is replaced only then, so a failure leaves it as it was.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import YoloptError

log = logging.getLogger("yolopt")

FORMAT = "yolopt-deploy"
FORMAT_VERSION = 1
LETTERBOXES = ("square", "rect")
PAD_VALUE = 114
TEMPLATE = Path(__file__).resolve().parent / "templates" / "deploy_infer.py"

# what infer.py needs, per runtime (the same lower bounds as yolopt's own dependencies)
REQUIREMENTS = {
    "onnxruntime": ["numpy>=1.24", "opencv-python-headless>=4.8", "onnxruntime>=1.18"],
    "openvino": ["numpy>=1.24", "opencv-python-headless>=4.8", "openvino>=2024.0"],
    "ncnn": ["numpy>=1.24", "opencv-python-headless>=4.8", "ncnn==1.0.20261020"],  # the version yolopt[edge] pins
    "litert": ["numpy>=1.24", "opencv-python-headless>=4.8", "ai-edge-litert==2.3.0"],  # likewise
}
TRITON_RUNTIMES = ("onnxruntime", "openvino")  # Triton has no ncnn backend; its TFLite one is not in its releases
# numpy dtype name -> Triton data type
TRITON_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL",
}
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(uint8)": "uint8",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _tensors_onnx(backend) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an ONNX Runtime session: name, shape (-1 for a dynamic dimension), dtype."""
    def info(t) -> dict:
        dtype = _ORT_TYPES.get(t.type)
        if dtype is None:
            raise YoloptError(f"{backend.path}: tensor {t.name} has type {t.type}, which the bundle does not support")
        return {"name": t.name, "shape": [d if isinstance(d, int) and d > 0 else -1 for d in t.shape], "dtype": dtype}

    return ([info(t) for t in backend.session.get_inputs()], [info(t) for t in backend.session.get_outputs()])


def _tensors_openvino(backend) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of a compiled OpenVINO model, as :func:`_tensors_onnx` gives them."""
    import numpy as np

    def info(port) -> dict:
        try:
            name = port.get_any_name()
        except RuntimeError:
            raise YoloptError(f"{backend.path}: an input or output of this IR has no tensor name; Triton needs "
                              "one") from None
        dtype = np.dtype(port.get_element_type().to_dtype()).name
        if dtype not in TRITON_TYPES:
            raise YoloptError(f"{backend.path}: tensor {name} has type {dtype}, which the bundle does not support")
        shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
        return {"name": name, "shape": shape, "dtype": dtype}

    return [info(p) for p in backend.compiled.inputs], [info(p) for p in backend.compiled.outputs]


def _tensors_ncnn(backend) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an NCNN net: its blob names; the shapes of its fixed input and of one run's output."""
    import numpy as np

    h, w = (int(v) for v in backend.imgsz)
    y = backend._run(np.zeros((1, 3, h, w), np.float32))
    return ([{"name": backend.input_name, "shape": [1, 3, h, w], "dtype": "float32"}],
            [{"name": backend.output_name, "shape": [int(d) for d in y.shape], "dtype": "float32"}])


def _tensors_litert(backend) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of a LiteRT model's default signature: names, fixed shapes, dtypes (outputs in the order
    the backend joins them: predictions, or boxes then scores)."""
    import numpy as np

    def info(name: str, d: dict) -> dict:
        return {"name": name, "shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name}

    ins, outs = backend.runner.get_input_details(), backend.runner.get_output_details()
    return [info(backend.input_name, ins[backend.input_name])], [info(k, outs[k]) for k in backend.output_names]


_TENSORS = {"onnxruntime": _tensors_onnx, "openvino": _tensors_openvino, "ncnn": _tensors_ncnn,
            "litert": _tensors_litert}


def _open_artifact(artifact: Path):
    """The artifact through ``yolopt.runtime`` (its metadata decoded), or one clear error."""
    from ..runtime import open as open_backend
    from ..runtime.backends import SUFFIXES, backend_for

    if not artifact.exists():
        raise YoloptError(f"{artifact}: no such artifact file")
    if not artifact.is_dir() and artifact.suffix.lower() not in (".onnx", ".xml", *SUFFIXES):
        raise YoloptError(f"{artifact}: not a model artifact (a deploy bundle takes an .onnx file, an OpenVINO "
                          ".xml with its .bin, an NCNN .param with its .bin, or a LiteRT .tflite)")
    kind = backend_for(artifact)  # a folder without exactly one .xml is one clear error
    if kind not in REQUIREMENTS:
        raise YoloptError(f"{artifact}: a deploy bundle takes an ONNX (.onnx), OpenVINO (.xml + .bin), NCNN "
                          f"(.param + .bin) or LiteRT (.tflite) artifact, not a {kind} model (export it first: "
                          "yolopt export --format onnx)")
    return open_backend(artifact, threads=1)


def _artifact_files(backend) -> list[Path]:
    p = Path(backend.path)
    if backend.name == "ncnn":  # graph, weights and yolopt's metadata: the bundle folder opens as an NCNN artifact
        return [p, p.with_suffix(".bin")] + [p.with_suffix(".json")] * p.with_suffix(".json").is_file()
    return [p, p.with_suffix(".bin")] if backend.name == "openvino" else [p]


def _imgsz(backend, letterbox: str) -> list[int]:
    """The network input (h, w) for a square letterbox, or (long side, long side) for rect."""
    from ..ops.sizes import check_imgsz

    stride = int(backend.stride.max())
    if not backend.dynamic and backend.imgsz:
        return [int(backend.imgsz[0]), int(backend.imgsz[1])]
    h, w = backend.imgsz or (640, 640)
    if letterbox == "rect":
        side = check_imgsz(int(max(h, w)), stride)
        return [side, side]
    return [check_imgsz(int(h), stride), check_imgsz(int(w), stride)]


def _triton_dims(shape: list[int]) -> str:
    return ", ".join(str(int(d)) for d in shape)


def triton_config(name: str, runtime: str, inputs: list[dict], outputs: list[dict], instances: int = 1,
                  threads: int | None = None, spin: bool = True) -> str:
    """``config.pbtxt`` text of a Triton model (Triton's ModelConfig text format).

    ``max_batch_size: 0``: the dims are the model's own, batch included (-1 where the model is dynamic),
    so a fixed batch-1 model and a dynamic one are both described exactly as they are. ``instances``: CPU
    instances (the pipelines the bundle was measured with); ``threads``: intra-op threads per instance, as
    backend parameters; ``spin=False`` is noted in a comment (the backends document no parameter for it).
    """
    lines = [f'name: "{name}"']
    if runtime == "onnxruntime":
        lines += ['platform: "onnxruntime_onnx"', 'default_model_filename: "model.onnx"']
    else:
        lines += ['backend: "openvino"', 'default_model_filename: "model.xml"']
    lines.append("max_batch_size: 0")
    for key, tensors in (("input", inputs), ("output", outputs)):
        lines.append(f"{key} [")
        for k, t in enumerate(tensors):
            lines += ["  {", f'    name: "{t["name"]}"', f"    data_type: {TRITON_TYPES[t['dtype']]}",
                      f"    dims: [ {_triton_dims(t['shape'])} ]", "  }" + ("," if k < len(tensors) - 1 else "")]
        lines.append("]")
    lines += ["instance_group [", "  {", f"    count: {max(1, int(instances))}", "    kind: KIND_CPU", "  }", "]"]
    params = []
    if threads:
        params = ([("intra_op_thread_count", threads), ("inter_op_thread_count", 1)] if runtime == "onnxruntime"
                  else [("INFERENCE_NUM_THREADS", threads)])
    if params:
        lines.append("parameters [")
        for k, (key, value) in enumerate(params):
            lines += ["  {", f'    key: "{key}"', f'    value: {{ string_value: "{int(value)}" }}',
                      "  }" + ("," if k < len(params) - 1 else "")]
        lines.append("]")
    if not spin and runtime == "onnxruntime":
        lines.append("# measured with session.intra_op.allow_spinning = 0 (infer.py sets it; idle threads sleep)")
    return "\n".join(lines) + "\n"


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        elif v is not None:
            out.append((key, v))
    return out


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _workers_text(cfg: dict) -> str:
    opts = cfg.get("runtime_options") or {}
    w, t = int(opts.get("workers") or 1), opts.get("threads")
    threads = f"{t} runtime thread(s) each" if t else "the runtime's own thread count" if w == 1 else \
        "the usable cores shared between them"
    spin = "" if opts.get("allow_spinning", True) else ", idle runtime threads sleeping instead of spin-waiting"
    return f"{w} worker process(es) by default, {threads}{spin} (deploy.json `runtime_options`)"


def _instances_text(cfg: dict) -> str:
    opts = cfg.get("runtime_options") or {}
    w, t = int(opts.get("workers") or 1), opts.get("threads")
    inst = f"{w} CPU instance(s) (`instance_group`, one per pipeline `infer.py` runs)"
    return inst + (f", {t} intra-op thread(s) each (`parameters`)" if t else "")


def run_command(cfg: dict, images: str = "path/to/images/") -> str:
    """The command the bundle's measured throughput is reached with (the README gives it)."""
    workers = int((cfg.get("runtime_options") or {}).get("workers") or 1)
    return f"python infer.py {images} --workers {workers} --quiet"


def _throughput(cfg: dict) -> str:
    """The README's throughput section: the measured images/s and the command that reaches it."""
    rep = cfg.get("report") if isinstance(cfg.get("report"), dict) else {}
    fps = rep.get("fps")
    opts = cfg.get("runtime_options") or {}
    w, t = int(opts.get("workers") or 1), opts.get("threads")
    text = "\n## Throughput\n\n"
    if isinstance(fps, (int, float)):
        on = f" on {rep['cpu']}" if rep.get("cpu") else ""
        rounds = f" (median of {rep['fps_rounds']} interleaved rounds)" if rep.get("fps_rounds") else ""
        text += (f"yolopt measured **{fps:.1f} images/s**{rounds} end to end (read, letterbox, inference, NMS: this "
                 f"bundle's own pipeline){on}, with {w} pipeline(s) x {t or 'default'} thread(s). This command runs "
                 "the same:\n")
    else:
        text += "Run the pipelines deploy.json recommends with:\n"
    return text + f"\n```\n{run_command(cfg)}\n```\n"


def _readme(cfg: dict, name: str) -> str:
    rt = cfg["runtime"]
    art = cfg["artifact"]
    inp = cfg["input"]
    files = " + ".join(f"`{f}`" for f in cfg["files"])
    box = ("letterboxed to exactly {}x{} (pad 114, centred)".format(*cfg["imgsz"]) if cfg["letterbox"] == "square"
           else f"long side resized to {cfg['imgsz'][0]}, padded (114) to the smallest multiple of {cfg['stride']}")
    pixels = "uint8 pixels 0-255" if cfg["uint8_input"] else f"{inp['dtype']} in [0, 1]"
    same = ("as `yolopt predict` does for a fixed-size model" if cfg["letterbox"] == "square"
            else "as `yolopt val` does for a dynamic model, one image at a time")
    made = f"yolopt {cfg['yolopt_version']}" if cfg.get("yolopt_version") else "yolopt"
    triton_row = (f"| `triton/{name}/` | a Triton Inference Server model repository entry |\n"
                  if rt in TRITON_RUNTIMES else "")
    meta = "yolopt metadata in the `.json`" if rt == "ncnn" else "yolopt metadata embedded"
    text = f"""# {name}: deploy bundle

Made by {made} from `{cfg['source']}`. It runs without yolopt and without PyTorch.

| file | what it is |
|---|---|
| {files} | the model ({rt}, {cfg['precision']}; {meta}) |
| `deploy.json` | input `{inp['name']}` {inp['shape']} ({pixels}, RGB, NCHW), letterbox, classes, thresholds |
| `infer.py` | standalone inference: images in, boxes out (numpy, OpenCV, {rt}) |
| `requirements.txt` | what `infer.py` needs |
{triton_row}
## Run it

```
pip install -r requirements.txt
python infer.py path/to/image.jpg path/to/folder clip.mp4 --json detections.json
```

Files, folders (searched recursively) and glob patterns of images and videos are read one image or frame at
a time. `infer.py` runs {_workers_text(cfg)}; `--workers N` and `--threads N` (per worker) override that.
Each worker is a process with its own runtime session; the output is in input order, the same for any
number of workers.

Each image is {box} ({same}), run through `{art}`; boxes scoring objectness x class above {cfg['conf']:g} go
through class-aware NMS (IoU {cfg['iou']:g}, at most {cfg['max_det']} per image) and are mapped back to the
original pixels, as yolopt does (`--conf`, `--iou`, `--max-det` override these defaults). `--json` writes,
per image, its detections as `{{xyxy, conf, cls, name}}`; `python infer.py --help` lists the options.
"""
    if cfg.get("end2end"):
        text += ("\nThis artifact runs NMS inside the graph (exported with `--nms`): its output is the final "
                 "detections, and a `--conf` below the one baked in cannot bring back boxes it dropped.\n")
    if cfg.get("raw_head"):
        text += ("\nThis artifact ends at the detection head's 1x1 convs (exported with `--raw-head`): its outputs are "
                 "one logit map per level, `(1, anchors x (5 + classes), h, w)`. `infer.py` decodes boxes outside the "
                 "graph and only for the cells whose objectness can pass `--conf` (`candidates()`; the strides and "
                 "the anchors in input pixels are in `deploy.json` under `raw_head`), which gives the same boxes as "
                 "decoding every cell, for less work.\n")
    text += _throughput(cfg)
    rep = _flatten(cfg["report"]) if isinstance(cfg.get("report"), dict) else []
    if rep:
        text += "\n## Measured\n\nAs measured by yolopt on the machine that made this bundle:\n\n| | |\n|---|---:|\n"
        text += "".join(f"| {k} | {_fmt(v)} |\n" for k, v in rep)
    if rt == "ncnn":
        return text + _ncnn_notes(cfg)
    if rt == "litert":
        return text + _litert_notes(cfg)
    triton_files = "`1/model.onnx`" if rt == "onnxruntime" else "`1/model.xml` + `1/model.bin`"
    text += f"""
## Serve it with Triton

`triton/` is a model repository: `triton/{name}/config.pbtxt` and {triton_files}. The config gives the
model's real input and output (names, types, dims with the batch dimension; -1 where it is dynamic),
`max_batch_size: 0` and {_instances_text(cfg)}. Start a server on it with

```
docker run --rm -p 8000:8000 -p 8001:8001 -v "$PWD/triton:/models" nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
    tritonserver --model-repository=/models
```

Triton runs only the network: the client letterboxes the image (as `infer.py` does), sends
`{inp['name']}` and decodes the output with the same NMS{" (after the head decode of `infer.py`'s `candidates()`)" if cfg.get("raw_head") else ""}. Change `instance_group` to `KIND_GPU` to run on
a GPU.
"""
    if rt == "openvino":
        text += ("\nNote: `infer.py` compiles the IR with f32 inference precision, as yolopt does. Triton's OpenVINO "
                 "backend documents no parameter for that (only `HINT_BF16` to ask for bf16), and OpenVINO's CPU "
                 "plugin runs FP32 IRs in bf16 by default on CPUs with AVX-512 BF16 or AMX, so there its results "
                 "can differ slightly from `infer.py`'s.\n")
    return text


def _ncnn_notes(cfg: dict) -> str:
    """The README's NCNN section: Arm boards, threads, precision."""
    return f"""
## NCNN on Arm boards

`requirements.txt` pins the `ncnn` wheel this bundle was made and measured with; PyPI has it for x86-64 and for
**aarch64** (manylinux), so `pip install -r requirements.txt` works on a 64-bit Raspberry Pi OS or another Arm
board, with no converter and no PyTorch. OpenCV's `opencv-python-headless` wheels exist for aarch64 too.

`infer.py` runs NCNN as yolopt does: computed in fp32 (NCNN's fp16 / bf16 storage and arithmetic off, so the
boxes match yolopt's on every CPU; {cfg['precision']} weights), no Vulkan, `openmp_blocktime` 0 (a thread that
finishes a layer sleeps at once), and 1 thread when at most 2 cores are usable, else all of them (NCNN's threads
wait for each other after every layer, and stall when another process shares the cores). `--threads N` overrides.
The folder is also an NCNN artifact yolopt opens: `yolopt predict {cfg['artifact']} image.jpg`.
"""


def _litert_notes(cfg: dict) -> str:
    """The README's LiteRT section: Arm boards, threads, precision."""
    outs = cfg.get("outputs") or []
    split = (f" The model has two outputs, boxes `{outs[0]['name']}` {outs[0]['shape']} and scores "
             f"`{outs[1]['name']}` {outs[1]['shape']} (each with its own int8 scale); `infer.py` joins them into "
             "the usual rows." if len(outs) == 2 else "")
    return f"""
## LiteRT on Arm boards and phones

`requirements.txt` pins the `ai-edge-litert` wheel this bundle was made and measured with; PyPI has it for x86-64
and for **aarch64** (manylinux_2_27, Python 3.10-3.13), so `pip install -r requirements.txt` works on a 64-bit
Raspberry Pi OS or another Arm board, with no converter and no PyTorch. OpenCV's `opencv-python-headless` wheels
exist for aarch64 too. On Android or iOS the same `.tflite` runs with LiteRT's own SDKs (XNNPACK on the CPU).

`infer.py` runs the model as yolopt does: LiteRT's interpreter with the XNNPACK delegate, float input (RGB in
[0, 1], NCHW) and float output, {cfg['precision']} model, and as many threads as usable cores unless deploy.json
or `--threads N` says otherwise.{split} yolopt opens the file too: `yolopt predict {cfg['artifact']} image.jpg`.
"""


def _check_out_dir(out: Path) -> None:
    """An existing ``out`` may be replaced only when it is empty or an earlier bundle."""
    if not out.exists():
        return
    if not out.is_dir():
        raise YoloptError(f"{out}: exists and is not a folder; choose another bundle folder")
    if not any(out.iterdir()):
        return
    try:
        prev = json.loads((out / "deploy.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        prev = None
    if not isinstance(prev, dict) or prev.get("format") != FORMAT:
        raise YoloptError(f"{out}: folder exists and is not a yolopt deploy bundle; not replacing it "
                          "(choose an empty or new folder)")


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an old ``out`` is moved aside first and removed after."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _build(tmp: Path, files: list[Path], cfg: dict, name: str) -> None:
    """Write the whole bundle into the (empty) folder ``tmp``."""
    for f in files:
        shutil.copyfile(f, tmp / f.name)
    (tmp / "deploy.json").write_text(json.dumps(cfg, indent=1) + "\n", encoding="utf-8")
    infer = tmp / "infer.py"
    infer.write_text(TEMPLATE.read_text(encoding="utf-8"), encoding="utf-8")
    mode = infer.stat().st_mode
    infer.chmod(mode | (mode & 0o444) >> 2)  # executable by whoever may read it
    (tmp / "requirements.txt").write_text("\n".join(REQUIREMENTS[cfg["runtime"]]) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(_readme(cfg, name), encoding="utf-8")
    if cfg["runtime"] not in TRITON_RUNTIMES:
        return
    model_dir = tmp / "triton" / name
    (model_dir / "1").mkdir(parents=True)
    target = {".onnx": "model.onnx", ".xml": "model.xml", ".bin": "model.bin"}
    for f in files:
        shutil.copyfile(f, model_dir / "1" / target[f.suffix.lower()])
    opts = cfg["runtime_options"]
    (model_dir / "config.pbtxt").write_text(triton_config(name, cfg["runtime"], [cfg["input"]], cfg["outputs"],
                                                          opts.get("workers") or 1, opts.get("threads"),
                                                          opts.get("allow_spinning", True)), encoding="utf-8")


@dataclass
class BundleSpec:
    """How a deploy bundle runs its artifact (infer.py's defaults) and what it reports.

    ``letterbox``: ``square`` (every image letterboxed to the model's fixed input, as ``yolopt predict``)
    or ``rect`` (a dynamic-shape model: long side to imgsz, padded to the smallest stride multiple, as
    ``preprocess(mode="rect")`` at batch 1). ``conf`` / ``iou`` / ``max_det``: infer.py's defaults.
    ``name``: the Triton model name. ``report``: measured numbers, stored in deploy.json and the README.
    ``threads`` / ``spin``: the runtime settings the numbers were measured with (infer.py's defaults;
    ``spin=False``: ONNX Runtime's idle threads sleep instead of spin-waiting); ``workers``: the pipelines
    (processes) they were measured with, infer.py's default ``--workers`` and Triton's instance count.
    """

    letterbox: str = "square"
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    name: str = "yolov5"
    report: dict | None = None
    threads: int | None = None
    spin: bool = True
    workers: int | None = None


def write_bundle(artifact: str | Path, out_dir: str | Path, spec: BundleSpec | None = None, **options) -> Path:
    """Write the deploy bundle of ``artifact`` (``.onnx``, an OpenVINO ``.xml`` or NCNN ``.param`` with its
    ``.bin``, or the folder of either, or a LiteRT ``.tflite``) to ``out_dir``.

    ``spec``: a :class:`BundleSpec`; ``options``: any of its fields, set on top of it
    (``write_bundle(a, out, conf=0.3)`` is ``write_bundle(a, out, BundleSpec(conf=0.3))``).
    Returns ``out_dir``. Any problem is one :class:`YoloptError` line; an existing ``out_dir`` is left as
    it was unless the new bundle was complete.
    """
    spec = replace(spec or BundleSpec(), **options)  # an unknown option is a TypeError, as for any call
    letterbox, conf, iou, max_det, name = spec.letterbox, spec.conf, spec.iou, spec.max_det, spec.name
    report, threads, spin, workers = spec.report, spec.threads, spec.spin, spec.workers
    artifact, out = Path(artifact), Path(out_dir)
    if letterbox not in LETTERBOXES:
        raise YoloptError(f"letterbox {letterbox!r}: choose one of {', '.join(LETTERBOXES)}")
    if not _NAME_RE.match(name or ""):
        raise YoloptError(f"name {name!r}: a Triton model name must be letters, digits, '_', '.' or '-'")
    if not (0 <= conf <= 1 and 0 <= iou <= 1) or int(max_det) < 1:
        raise YoloptError(f"conf {conf} / iou {iou} must be in [0, 1] and max_det {max_det} at least 1")
    if workers is not None and int(workers) < 1:
        raise YoloptError(f"workers {workers}: a bundle runs at least 1 pipeline", fields=("workers",))
    if report is not None and not isinstance(report, dict):
        raise YoloptError(f"report must be a dict of measured numbers, not {type(report).__name__}")
    try:
        report_json = json.loads(json.dumps(report, default=lambda o: o.tolist() if hasattr(o, "tolist") else
                                            float(o))) if report is not None else None
    except (TypeError, ValueError) as e:
        raise YoloptError(f"report is not JSON-serialisable ({e})") from None

    backend = _open_artifact(artifact)
    path = Path(backend.path)
    files = _artifact_files(backend)
    for f in files:
        if not f.is_file():
            raise YoloptError(f"{f}: missing (an OpenVINO or NCNN artifact is an .xml / .param and its .bin)")
    if letterbox == "rect" and not backend.dynamic:
        raise YoloptError(f"{path}: has a fixed {backend.imgsz[0]}x{backend.imgsz[1]} input, so it takes the square "
                          "letterbox only (export it with a dynamic input shape for rect)")
    inputs, outputs = _TENSORS[backend.name](backend)
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or inputs[0]["shape"][1] not in (3, -1):
        raise YoloptError(f"{path}: expected one (B, 3, H, W) image input, got "
                          f"{[(t['name'], t['shape']) for t in inputs]}")
    imgsz = _imgsz(backend, letterbox)
    cfg = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "artifact": path.name, "files": [f.name for f in files], "source": str(path),
        "runtime": backend.name, "precision": backend.artifact_precision,
        "yolopt_version": getattr(backend, "version", None),
        "input": {**inputs[0], "layout": "NCHW", "channels": "RGB"},
        "outputs": outputs,
        "imgsz": imgsz, "dynamic": bool(backend.dynamic), "batch": backend.batch,
        "letterbox": letterbox, "pad_value": PAD_VALUE,
        "uint8_input": inputs[0]["dtype"] == "uint8",
        "end2end": bool(backend.end2end), "baked_nms": backend.nms,
        "names": list(backend.names), "nc": int(backend.nc), "stride": int(backend.stride.max()),
        **({"raw_head": {"strides": [float(s) for s in backend.stride], "anchors": backend.anchors.tolist()}}
           if getattr(backend, "raw_head", False) else {}),
        "conf": float(conf), "iou": float(iou), "max_det": int(max_det),
        "runtime_options": {"threads": int(threads) if threads else None, "allow_spinning": bool(spin),
                            "workers": int(workers) if workers else 1},
    }
    if report_json is not None:
        cfg["report"] = report_json
    del backend

    _check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    os.mkdir(tmp)  # mode from the umask, like any folder the user makes
    try:
        _build(tmp, files, cfg, name)
        _swap_into_place(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise YoloptError(f"{out}: could not write the deploy bundle ({e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote deploy bundle %s", out)
    return out
