"""The deploy bundle (yolopt.pipeline.deploy.write_bundle): its files, its Triton config checked against
Triton's own ModelConfig schema, and its infer.py run in a fresh venv that has only the bundle's
requirements, reproducing yolopt's own detections on the same artifact."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from yolopt.errors import YoloptError

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from yolopt.pipeline import deploy
from yolopt.pipeline.deploy import write_bundle

IMGSZ = 256  # the size of conftest's deploy_artifacts
ALLOWED_IMPORTS = {"argparse", "glob", "json", "math", "multiprocessing", "os", "signal", "sys", "time", "__future__",
                   "cv2", "numpy", "onnxruntime", "openvino", "ncnn", "ai_edge_litert"}
NETWORK_HINTS = ("Could not find a version", "No matching distribution", "Failed to establish", "Temporary failure",
                 "Network is unreachable", "ConnectionError", "ProxyError", "timed out", "Name or service not known")


# --- artifacts, exported once per session (conftest) ----------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread(one_thread):
    """Torch on one thread for this module (conftest): the models here are small, and two cores shared with other
    work lose more to spinning threads than they gain."""


@pytest.fixture(scope="module")
def arts(tmp_path_factory, deploy_artifacts):
    """conftest's session exports (256 px), copied under the names a user would give them."""
    d = tmp_path_factory.mktemp("bundle_artifacts")
    static, dynamic = d / "yolov5n.onnx", d / "yolov5n_dyn.onnx"
    shutil.copyfile(deploy_artifacts["onnx"].path, static)
    shutil.copyfile(deploy_artifacts["onnx_dyn"].path, dynamic)
    return {"static": static, "dynamic": dynamic}


@pytest.fixture(scope="module")
def images(shared, bus_jpg) -> Path:
    """bus.jpg (portrait) and zidane.jpg (landscape): both branches of the letterbox."""
    folder = shared / "data" / "images"
    assert (folder / "zidane.jpg").is_file()
    return folder


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="session")
def fresh_python(tmp_path_factory) -> Path:
    """A venv holding only infer.py's requirements (ONNX Runtime flavour), cached by their hash."""
    return fresh_venv("onnxruntime")


def fresh_venv(runtime: str) -> Path:
    """The python of a venv holding only infer.py's requirements for ``runtime``, cached by their hash."""
    req = "\n".join(deploy.REQUIREMENTS[runtime]) + "\n"
    key = hashlib.sha256(f"{req}{sys.version}{sys.platform}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("YOLOPT_TEST_VENV_CACHE", Path.home() / ".cache" / "yolopt-test-venv"))
    venv = cache / key
    py = venv / "bin" / "python"
    if not (venv / ".ready").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_env(), timeout=300)
        (venv / "requirements.txt").write_text(req)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                            str(venv / "requirements.txt")], check=False, capture_output=True, text=True, env=_env(),
                           timeout=900)
        if r.returncode:
            shutil.rmtree(venv, ignore_errors=True)
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            if any(h in r.stderr + r.stdout for h in NETWORK_HINTS):
                pytest.skip(f"cannot install infer.py's requirements (no network?): {' | '.join(tail)}")
            pytest.fail(f"pip install -r requirements.txt failed: {' | '.join(tail)}")
        (venv / ".ready").write_text(req)
    # the point of the venv: neither torch nor yolopt is importable there
    probe = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'yolopt', 'torchvision')))"
    r = subprocess.run([str(py), "-c", probe], check=False, env=_env(), timeout=120)
    assert r.returncode == 0, f"{venv}: torch or yolopt is importable in the fresh venv"
    return py


def run_infer(python: Path, bundle: Path, *args) -> subprocess.CompletedProcess:
    r = subprocess.run([str(python), str(bundle / "infer.py"), *map(str, args)], check=False, capture_output=True,
                       text=True, env=_env(), timeout=300, cwd=bundle.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


# --- yolopt's own detections, for the comparison -------------------------------------------------

def yolopt_square(artifact, folder) -> dict[str, tuple]:
    """What `yolopt predict` gives: square letterbox at the fixed input size."""
    from yolopt.detect import predict
    from yolopt.runtime import open as open_backend

    b = open_backend(artifact)
    return {Path(d.image).name: (d.xyxy, d.conf, d.cls) for d in predict(b, folder, imgsz=b.resolve_imgsz(IMGSZ),
                                                                              letterbox="square")}


def yolopt_rect(artifact, folder) -> dict[str, tuple]:
    """preprocess(mode="rect") at batch 1 -> backend -> postprocess, as yolopt evaluates a dynamic artifact."""
    from yolopt.data.images import list_images, read_image
    from yolopt.data.preprocess import preprocess
    from yolopt.ops.postprocess import NMSOptions, postprocess
    from yolopt.runtime import open as open_backend

    b = open_backend(artifact)
    out = {}
    for p in list_images(folder):
        im = read_image(p)
        x, metas = preprocess([im], IMGSZ, mode="rect", stride=int(b.stride.max()), pixels=b.uint8_input)
        d = postprocess(b(x), metas, NMSOptions(0.25, 0.45, 300), end2end=b.end2end)[0].numpy()
        out[p.name] = (d[:, :4], d[:, 4], d[:, 5].astype(int))
    return out


def assert_same(ours: list[dict], ref: dict[str, tuple]) -> int:
    """Same images, same number of boxes, same classes, boxes within 1 px and conf within 1e-3."""
    assert sorted(Path(r["image"]).name for r in ours) == sorted(ref)
    total = 0
    for rec in ours:
        xyxy, conf, cls = ref[Path(rec["image"]).name]
        dets = rec["detections"]
        assert len(dets) == len(conf), (rec["image"], len(dets), len(conf))
        assert sorted(d["class"] for d in dets) == sorted(int(c) for c in cls)
        used: set[int] = set()
        for box, c, k in zip(np.asarray(xyxy, float), np.asarray(conf, float), cls):
            cands = [i for i, d in enumerate(dets) if i not in used and d["class"] == int(k)]
            i = min(cands, key=lambda j: np.abs(np.array(dets[j]["xyxy"]) - box).max())
            assert np.abs(np.array(dets[i]["xyxy"]) - box).max() <= 1.0, (rec["image"], dets[i], box)
            assert abs(dets[i]["conf"] - c) <= 1e-3, (rec["image"], dets[i]["conf"], c)
            used.add(i)
        total += len(dets)
    return total


# --- Triton -----------------------------------------------------------------------------------------

def model_config_pb2():
    pytest.importorskip("google.protobuf")
    try:
        from tritonclient.grpc import model_config_pb2 as m
    except ImportError:
        pytest.skip("tritonclient[grpc] is not installed (pip install -e '.[test]')")
    return m


def parse_config(path: Path):
    from google.protobuf import text_format

    m = model_config_pb2()
    return m, text_format.Parse(path.read_text(), m.ModelConfig())


def onnx_io(path: Path) -> tuple[list, list]:
    """[(name, Triton type name, dims)] of the graph's inputs and outputs, read with onnx itself."""
    import onnx
    from onnx import TensorProto

    types = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.UINT8: "TYPE_UINT8", TensorProto.FLOAT16: "TYPE_FP16",
             TensorProto.INT64: "TYPE_INT64"}
    g = onnx.load(str(path)).graph
    inits = {t.name for t in g.initializer}

    def rows(vals):
        return [(v.name, types[v.type.tensor_type.elem_type],
                 [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim])
                for v in vals if v.name not in inits]

    return rows(g.input), rows(g.output)


def check_triton_onnx(bundle: Path, name: str, artifact: Path) -> None:
    m, cfg = parse_config(bundle / "triton" / name / "config.pbtxt")
    assert cfg.name == name and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 0
    ins, outs = onnx_io(artifact)
    assert [(t.name, m.DataType.Name(t.data_type), list(t.dims)) for t in cfg.input] == ins
    assert [(t.name, m.DataType.Name(t.data_type), list(t.dims)) for t in cfg.output] == outs
    assert [g.kind for g in cfg.instance_group] == [m.ModelInstanceGroup.KIND_CPU]
    model = bundle / "triton" / name / "1" / "model.onnx"
    assert model.read_bytes() == artifact.read_bytes()
    assert sorted(p.name for p in (bundle / "triton").rglob("*") if p.is_file()) == ["config.pbtxt", "model.onnx"]


# --- tests ------------------------------------------------------------------------------------------

def test_square_bundle_contents(arts, tmp_path):
    import onnx

    from yolopt.runtime import open as open_backend

    art = arts["static"]
    report = {"map50_95": 0.2712, "fps": 18.25, "latency_ms": {"p50": 54.8}, "speedup": 1.9, "threads": 2}
    out = write_bundle(art, tmp_path / "bundle", conf=0.3, max_det=100, report=report)
    assert out == tmp_path / "bundle"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "deploy.json", "infer.py", "requirements.txt",
                                                     "triton", "yolov5n.onnx"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    # the artifact is a byte copy: its metadata is intact and opens the same through yolopt
    assert (out / "yolov5n.onnx").read_bytes() == art.read_bytes()
    meta = {p.key: p.value for p in onnx.load(str(out / "yolov5n.onnx")).metadata_props}
    assert json.loads(meta["format"]) == "yolopt-export" and json.loads(meta["imgsz"]) == [IMGSZ, IMGSZ]
    b = open_backend(out / "yolov5n.onnx")
    cfg = json.loads((out / "deploy.json").read_text())
    assert cfg["format"] == "yolopt-deploy" and cfg["artifact"] == "yolov5n.onnx" and cfg["runtime"] == "onnxruntime"
    assert cfg["input"]["name"] == "images" and cfg["input"]["shape"] == [1, 3, IMGSZ, IMGSZ]
    assert cfg["input"]["dtype"] == "float32" and cfg["uint8_input"] is False
    assert cfg["outputs"] == [{"name": "output0", "shape": [1, 4032, 85], "dtype": "float32"}]  # 3 x 1344 cells
    assert cfg["imgsz"] == [IMGSZ, IMGSZ] and cfg["dynamic"] is False and cfg["letterbox"] == "square"
    assert cfg["names"] == b.names and len(cfg["names"]) == 80 and cfg["names"][5] == "bus"
    assert (cfg["conf"], cfg["iou"], cfg["max_det"], cfg["stride"]) == (0.3, 0.45, 100, 32)
    assert cfg["report"] == report and cfg["precision"] == "fp32" and cfg["end2end"] is False
    assert (out / "requirements.txt").read_text().split() == ["numpy>=1.24", "opencv-python-headless>=4.8",
                                                              "onnxruntime>=1.18"]
    readme = (out / "README.md").read_text()
    for needle in ("pip install -r requirements.txt", "python infer.py", "tritonserver", "| fps | 18.25 |",
                   "| latency_ms.p50 | 54.8 |", "| map50_95 | 0.2712 |", "256x256"):
        assert needle in readme, needle
    # infer.py is standalone: it imports nothing but the stdlib, numpy, OpenCV and the runtimes
    infer = out / "infer.py"
    assert os.access(infer, os.X_OK)
    tree = ast.parse(infer.read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert mods <= ALLOWED_IMPORTS, mods - ALLOWED_IMPORTS
    check_triton_onnx(out, "yolov5", art)


def test_dynamic_bundle_triton_dims(arts, tmp_path):
    out = write_bundle(arts["dynamic"], tmp_path / "b", letterbox="rect", name="yolov5n_dyn")
    cfg = json.loads((out / "deploy.json").read_text())
    assert cfg["input"]["shape"] == [-1, 3, -1, -1] and cfg["dynamic"] is True and cfg["letterbox"] == "rect"
    assert cfg["imgsz"] == [IMGSZ, IMGSZ] and cfg["batch"] is None
    check_triton_onnx(out, "yolov5n_dyn", arts["dynamic"])
    _, tc = parse_config(out / "triton" / "yolov5n_dyn" / "config.pbtxt")
    assert list(tc.input[0].dims) == [-1, 3, -1, -1] and list(tc.output[0].dims) == [-1, -1, 85]


def test_infer_square_matches_yolopt(arts, tmp_path, fresh_python, images):
    out = write_bundle(arts["static"], tmp_path / "b")
    r = run_infer(fresh_python, out, images, "--json", tmp_path / "d.json", "--threads", 1)
    ours = json.loads((tmp_path / "d.json").read_text())
    n = assert_same(ours, yolopt_square(arts["static"], images))
    assert n >= 5  # bus.jpg: people and the bus; zidane.jpg: two people
    bus = next(rec for rec in ours if rec["image"].endswith("bus.jpg"))
    assert (bus["width"], bus["height"]) == (810, 1080) and {d["name"] for d in bus["detections"]} >= {"bus", "person"}
    assert "bus.jpg: 810x1080" in r.stdout and " bus " in r.stdout


def test_infer_rect_matches_yolopt(arts, tmp_path, fresh_python, images):
    out = write_bundle(arts["dynamic"], tmp_path / "b", letterbox="rect")
    run_infer(fresh_python, out, images / "bus.jpg", images / "zidane.jpg", "--json", tmp_path / "d.json", "--quiet")
    ours = json.loads((tmp_path / "d.json").read_text())
    ref = yolopt_rect(arts["dynamic"], images)
    assert assert_same(ours, ref) >= 5
    # rect really differs from square on this model (else the test could not tell the letterboxes apart)
    sq = yolopt_square(arts["dynamic"], images)
    assert any(np.abs(np.asarray(sq[k][1]) - np.asarray(ref[k][1])).max() > 1e-3 for k in ref)


def test_infer_uint8_input_graph(arts, tmp_path, fresh_python, bus_jpg):
    """A graph that takes uint8 pixels (as quantized artifacts do): Triton TYPE_UINT8, infer.py feeds pixels."""
    import onnx

    from yolopt.quantize.onnx_qdq import uint8_input

    art = tmp_path / "u8.onnx"
    onnx.save(uint8_input(onnx.load(str(arts["static"]))), str(art))  # metadata_props kept
    out = write_bundle(art, tmp_path / "b")
    cfg = json.loads((out / "deploy.json").read_text())
    assert cfg["uint8_input"] is True and cfg["input"]["dtype"] == "uint8" and len(cfg["names"]) == 80
    m, tc = parse_config(out / "triton" / "yolov5" / "config.pbtxt")
    assert m.DataType.Name(tc.input[0].data_type) == "TYPE_UINT8"
    check_triton_onnx(out, "yolov5", art)
    run_infer(fresh_python, out, bus_jpg, "--json", tmp_path / "d.json")
    assert assert_same(json.loads((tmp_path / "d.json").read_text()), yolopt_square(art, bus_jpg)) >= 4


def test_infer_end2end_artifact(nms_onnx, tmp_path, fresh_python, bus_jpg):
    """An artifact exported with --nms (conftest, 256 px): output rows are final detections; Triton output
    dims [-1, 7]."""
    art = nms_onnx[0]
    out = write_bundle(art, tmp_path / "b")
    cfg = json.loads((out / "deploy.json").read_text())
    assert cfg["end2end"] is True and cfg["baked_nms"]["conf"] == 0.25
    check_triton_onnx(out, "yolov5", art)
    _, tc = parse_config(out / "triton" / "yolov5" / "config.pbtxt")
    assert list(tc.output[0].dims) == [-1, 7]
    run_infer(fresh_python, out, bus_jpg, "--json", tmp_path / "d.json")
    assert assert_same(json.loads((tmp_path / "d.json").read_text()), yolopt_square(art, bus_jpg)) >= 4


def test_openvino_bundle(deploy_artifacts, tmp_path, bus_jpg):
    """OpenVINO IR: .xml + .bin copied, Triton backend "openvino" with 1/model.xml + 1/model.bin, dims from the
    IR; infer.py (run here with this interpreter, which has openvino) matches yolopt on the IR."""
    ov = pytest.importorskip("openvino")
    art = deploy_artifacts["openvino"].path  # conftest: .../ov/m.xml, 256 px
    assert art.name == "m.xml"
    out = write_bundle(art, tmp_path / "b", name="yolov5n_ov")
    assert {"m.xml", "m.bin"} <= {p.name for p in out.iterdir()}
    assert (out / "m.bin").read_bytes() == art.with_suffix(".bin").read_bytes()
    cfg = json.loads((out / "deploy.json").read_text())
    assert cfg["runtime"] == "openvino" and cfg["files"] == ["m.xml", "m.bin"]
    assert (out / "requirements.txt").read_text().split()[-1].startswith("openvino")
    m, tc = parse_config(out / "triton" / "yolov5n_ov" / "config.pbtxt")
    assert tc.backend == "openvino" and not tc.platform and tc.max_batch_size == 0
    model = ov.Core().read_model(str(art))
    assert [(t.name, m.DataType.Name(t.data_type), list(t.dims)) for t in tc.input] == \
        [(p.get_any_name(), "TYPE_FP32", [d.get_length() for d in p.get_partial_shape()]) for p in model.inputs]
    assert [(t.name, list(t.dims)) for t in tc.output] == \
        [(p.get_any_name(), [d.get_length() for d in p.get_partial_shape()]) for p in model.outputs]
    v1 = out / "triton" / "yolov5n_ov" / "1"
    assert sorted(p.name for p in v1.iterdir()) == ["model.bin", "model.xml"]
    assert (v1 / "model.xml").read_bytes() == art.read_bytes()
    run_infer(Path(sys.executable), out, bus_jpg, "--json", tmp_path / "d.json", "--threads", 1)
    assert assert_same(json.loads((tmp_path / "d.json").read_text()), yolopt_square(art, bus_jpg)) >= 4


def _template():
    """The infer.py template as a module (it needs only numpy and OpenCV, both here)."""
    spec = importlib.util.spec_from_file_location("deploy_infer_template", deploy.TEMPLATE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("mode,imgsz", [("square", [320, 320]), ("square", [256, 320]), ("rect", [320, 320])])
def test_template_letterbox_is_yolopts(mode, imgsz):
    """infer.py's letterbox gives bit-identical network inputs and the same gain / padding as yolopt's preprocess,
    on odd sizes where rounding matters (odd paddings, shrinking and enlarging)."""
    from yolopt.data.preprocess import preprocess

    t = _template()
    rng = np.random.default_rng(0)
    cfg = {"letterbox": mode, "imgsz": imgsz, "stride": 32, "pad_value": 114}
    size = imgsz[0] if mode == "rect" else tuple(imgsz)
    for h, w in [(1080, 810), (720, 1280), (333, 517), (517, 333), (100, 100), (1000, 37), (61, 900), (321, 319)]:
        im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        padded, gain, pad = t.letterbox(im, cfg)
        x, metas = preprocess([im], size, mode=mode, stride=32)
        px, _ = preprocess([im], size, mode=mode, stride=32, pixels=True)
        assert np.array_equal(t.to_input(padded, np.float32), x.numpy()), (h, w)
        assert np.array_equal(t.to_input(padded, np.uint8), px.numpy()), (h, w)
        assert (gain, tuple(pad)) == (metas[0].gain, tuple(metas[0].pad)), (h, w)


def test_template_decode_is_yolopts():
    """infer.py's numpy decode + NMS keeps exactly the boxes yolopt's postprocess keeps (crowded, many classes,
    max_det reached), and maps them back the same way."""
    import torch

    from yolopt.ops.postprocess import ImageMeta, NMSOptions, postprocess

    t = _template()
    rng = np.random.default_rng(1)
    n, nc = 3000, 6
    centres = rng.uniform(0, 320, (40, 2))
    xy = centres[rng.integers(0, 40, n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(8, 90, (n, 2))
    pred = np.concatenate([xy, wh, rng.uniform(0, 1, (n, 1)), rng.dirichlet(np.ones(nc) * 0.3, n)], 1)
    pred = pred.astype(np.float32)[None]
    meta = ImageMeta((700, 500), (320, 320), 320 / 700, ((320 - 500 * 320 / 700) / 2, 0.0))
    for conf, iou, max_det in [(0.25, 0.45, 300), (0.1, 0.6, 30), (0.5, 0.3, 300)]:
        ref = postprocess(torch.from_numpy(pred), [meta], NMSOptions(conf, iou, max_det))[0].numpy()
        ours = t.to_original(t.decode(pred[0], conf, iou, max_det), meta.gain, meta.pad, meta.orig_hw)
        assert len(ref) > 20 and len(ours) == len(ref), (conf, len(ours), len(ref))
        assert np.allclose(ours, ref, atol=1e-3), (conf, iou)


def test_infer_help_and_bad_input(arts, tmp_path, fresh_python):
    out = write_bundle(arts["static"], tmp_path / "b")
    r = run_infer(fresh_python, out, "--help")
    for opt in ("--json", "--threads", "--conf", "--iou", "--max-det", "deploy.json"):
        assert opt in r.stdout, opt
    bad = subprocess.run([str(fresh_python), str(out / "infer.py"), str(tmp_path / "missing.jpg")],
                         check=False, capture_output=True, text=True, env=_env(), timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: {tmp_path / 'missing.jpg'}: no such file or folder"


def _one_line_error(fn, *needles) -> str:
    with pytest.raises(YoloptError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert str(n) in msg, (n, msg)
    return msg


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_artifacts_are_one_line_errors(tmp_path, arts):
    missing = tmp_path / "nope.onnx"
    _one_line_error(lambda: write_bundle(missing, tmp_path / "b"), missing)
    txt = tmp_path / "notes.txt"
    txt.write_text("not a model")
    _one_line_error(lambda: write_bundle(txt, tmp_path / "b"), txt, "not a model artifact")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 64)
    _one_line_error(lambda: write_bundle(junk, tmp_path / "b"), junk)
    pt = tmp_path / "weights.pt"
    pt.write_bytes(b"x")
    _one_line_error(lambda: write_bundle(pt, tmp_path / "b"), pt, "ONNX")
    _one_line_error(lambda: write_bundle(arts["static"], tmp_path / "b", letterbox="rect"), arts["static"], "fixed")
    _one_line_error(lambda: write_bundle(arts["static"], tmp_path / "b", letterbox="wide"), "square, rect")
    _one_line_error(lambda: write_bundle(arts["static"], tmp_path / "b", name="../x"), "Triton model name")
    assert not (tmp_path / "b").exists()


def test_existing_bundle_kept_on_failure_and_replaced_on_success(arts, tmp_path, monkeypatch):
    out = write_bundle(arts["static"], tmp_path / "b", conf=0.3)
    before = _snapshot(out)
    # a bad artifact: the old bundle is untouched
    _one_line_error(lambda: write_bundle(tmp_path / "missing.onnx", out), "missing.onnx")
    assert _snapshot(out) == before

    # a failure half-way through writing (disk full, say): old bundle untouched, no temporary folder left
    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(deploy, "triton_config", boom)
    _one_line_error(lambda: write_bundle(arts["dynamic"], out, letterbox="rect"), out, "No space left")
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    monkeypatch.undo()

    # success replaces it whole (the old artifact file does not linger)
    write_bundle(arts["dynamic"], out, letterbox="rect", conf=0.5)
    cfg = json.loads((out / "deploy.json").read_text())
    assert (cfg["conf"], cfg["artifact"], cfg["letterbox"]) == (0.5, "yolov5n_dyn.onnx", "rect")
    assert not (out / "yolov5n.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_refuses_to_replace_a_folder_that_is_not_a_bundle(arts, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    _one_line_error(lambda: write_bundle(arts["static"], d), d, "not a yolopt deploy bundle")
    assert (d / "precious.txt").read_text() == "keep me" and len(list(d.iterdir())) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_bundle(arts["static"], empty) / "deploy.json").is_file()


# --- workers: infer.py --workers N (issue 35) --------------------------------------------------------

SYNTH_MODEL = Path(__file__).resolve().parents[1] / "src" / "yolopt" / "assets" / "synth_yolov5n.safetensors"


@pytest.fixture(scope="module")
def synth_bundle(tmp_path_factory):
    """The synthetic model at 160 px, bundled as optimize bundles a 2-pipeline variant (1 thread each, no spin)."""
    from yolopt.export import ExportSpec, export

    d = tmp_path_factory.mktemp("synth_bundle")
    art = export(SYNTH_MODEL, ExportSpec(format="onnx", imgsz=160, verify=False, out=d / "synth.onnx")).path
    report = {"fps": 123.4, "streams": 2, "threads": 1, "cpu": "Test CPU"}
    return write_bundle(art, d / "b", report=report, threads=1, spin=False, workers=2)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, bus_jpg) -> Path:
    """A 6-frame MJPG video (small frames), for the frame-by-frame path."""
    import cv2

    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    im = cv2.resize(cv2.imread(str(bus_jpg)), (192, 256))
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (192, 256))
    for k in range(6):
        w.write(np.roll(im, 7 * k, 1))
    w.release()
    assert path.stat().st_size > 0
    return path


def _no_ms(text: str) -> str:
    import re

    return re.sub(r"\(\d+\.\d ms\)", "", text)


def test_bundle_records_workers_readme_and_triton(synth_bundle):
    cfg = json.loads((synth_bundle / "deploy.json").read_text())
    assert cfg["runtime_options"] == {"threads": 1, "allow_spinning": False, "workers": 2}
    assert _template().recommended_workers(cfg) == 2
    readme = (synth_bundle / "README.md").read_text()
    assert "python infer.py path/to/images/ --workers 2 --quiet" in readme and "123.4 images/s" in readme
    assert "Test CPU" in readme and "2 CPU instance(s)" in readme
    m, tc = parse_config(synth_bundle / "triton" / "yolov5" / "config.pbtxt")
    assert [(g.count, g.kind) for g in tc.instance_group] == [(2, m.ModelInstanceGroup.KIND_CPU)]
    assert {k: v.string_value for k, v in tc.parameters.items()} == {"intra_op_thread_count": "1",
                                                                   "inter_op_thread_count": "1"}
    assert "allow_spinning = 0" in (synth_bundle / "triton" / "yolov5" / "config.pbtxt").read_text()


def test_infer_two_workers_same_output_as_one(synth_bundle, fresh_python, images, clip, tmp_path):
    """Images (a folder given three times, a glob) and a video's frames: --workers 2 writes the same JSON, byte
    for byte, and prints the same lines in the same order as --workers 1 (timings aside)."""
    srcs = [images, clip, images / "*.jpg", images]
    one = run_infer(fresh_python, synth_bundle, *srcs, "--workers", 1, "--json", tmp_path / "one.json")
    two = run_infer(fresh_python, synth_bundle, *srcs, "--workers", 2, "--json", tmp_path / "two.json")
    dflt = run_infer(fresh_python, synth_bundle, *srcs, "--json", tmp_path / "dflt.json")  # deploy.json: 2 workers
    recs = json.loads((tmp_path / "one.json").read_text())
    assert len(recs) == 2 + 6 + 2 + 2 and [r.get("frame") for r in recs[2:8]] == list(range(6))
    assert sum(len(r["detections"]) for r in recs) > 0
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert (tmp_path / "dflt.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert json.dumps(recs, indent=1) == (tmp_path / "one.json").read_text()  # the text json.dump writes
    assert _no_ms(two.stdout) == _no_ms(one.stdout) == _no_ms(dflt.stdout) and "clip.avi frame 5:" in one.stdout
    assert one.stderr == dflt.stderr == ""  # deploy.json's 2 workers are capped at the usable cores, silently
    # --workers 2 on one usable core (a pytest-xdist worker is pinned to one) says so in one line, and still agrees
    cores = _template().usable_cpus()
    assert two.stderr == ("" if cores >= 2 else "warning: --workers 2 is more than the 1 usable CPU core(s); the "
                                                "workers will take turns on them\n")


def test_infer_workers_zero_and_above_the_cores(synth_bundle, fresh_python, bus_jpg):
    zero = subprocess.run([str(fresh_python), str(synth_bundle / "infer.py"), str(bus_jpg), "--workers", "0"],
                          check=False, capture_output=True, text=True, env=_env(), timeout=120)
    assert zero.returncode == 2 and zero.stderr.strip() == "error: --workers 0: give at least 1 worker process"
    assert zero.stdout == ""
    many = _template().usable_cpus() + 1
    r = run_infer(fresh_python, synth_bundle, bus_jpg, "--workers", many, "--quiet")
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: --workers {many} is more than the "), r.stderr
    assert "bus.jpg: 810x1080" in r.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
def test_infer_killed_worker_ends_the_run(synth_bundle, fresh_python, images, tmp_path):
    """kill -9 of one worker mid-run: a non-zero exit and one line, within seconds (never a hang), no JSON."""
    import signal
    import time

    out = tmp_path / "d.json"
    p = subprocess.Popen([str(fresh_python), str(synth_bundle / "infer.py"), *[str(images)] * 2000, "--workers", "2",
                          "--quiet", "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env())
    try:
        assert p.stdout.readline().startswith(str(images))  # the workers are running
        children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        assert len(children) == 2, children
        os.kill(int(children[0]), signal.SIGKILL)
        t0 = time.monotonic()
        rest, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert time.monotonic() - t0 < 30
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning: --workers")]  # a 1-core machine
    assert p.returncode == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: worker 1 of 2 (pid {children[0]}) was killed by SIGKILL after "), lines[0]
    assert len(rest.splitlines()) < 4000 - 1 and not out.exists() and not Path(f"{out}.tmp").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
def test_infer_workers_stop_when_the_main_process_is_killed(synth_bundle, fresh_python, images):
    """kill -9 of infer.py itself: its workers see their pipe close and exit (no orphans left running)."""
    import signal
    import time

    p = subprocess.Popen([str(fresh_python), str(synth_bundle / "infer.py"), *[str(images)] * 2000, "--workers", "2",
                          "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env())
    try:
        assert p.stdout.readline().startswith(str(images))
        children = [int(c) for c in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
        assert len(children) == 2
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
            time.sleep(0.1)
        alive = [c for c in children if Path(f"/proc/{c}").exists()
                 and Path(f"/proc/{c}/stat").read_text().split()[2] != "Z"]
        for c in alive:
            os.kill(c, signal.SIGKILL)
        assert not alive, "workers kept running after the main process was killed"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# --- NCNN -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ncnn_art(tmp_path_factory, yolov5n_pt):
    """yolov5n as an NCNN folder at 256 px (pnnx), exported once for this module."""
    pytest.importorskip("ncnn", reason="the ncnn runtime is not installed (pip install 'yolopt[edge]')")
    pytest.importorskip("pnnx", reason="the pnnx converter is not installed (pip install 'yolopt[edge]')")
    from yolopt.export import ExportSpec, export

    d = tmp_path_factory.mktemp("ncnn_bundle")
    return export(yolov5n_pt, ExportSpec("ncnn", imgsz=IMGSZ, out=d / "yolov5n_ncnn/", verify=False)).path


@pytest.fixture(scope="module")
def ncnn_bundle(ncnn_art, tmp_path_factory):
    return write_bundle(ncnn_art.parent, tmp_path_factory.mktemp("ncnn_b") / "b", name="yolov5n_ncnn", threads=1)


def test_ncnn_bundle_contents(ncnn_bundle, ncnn_art):
    """The artifact folder's three files, deploy.json with the net's blob names, the pinned ncnn wheel, a README
    naming the aarch64 wheels, and no Triton entry (Triton has no NCNN backend); the bundle folder opens in
    yolopt as an NCNN artifact."""
    from yolopt.runtime import open as open_backend

    out = ncnn_bundle
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "deploy.json", "infer.py", "requirements.txt",
                                                     "yolov5n.bin", "yolov5n.json", "yolov5n.param"]
    for f in ("yolov5n.param", "yolov5n.bin"):
        assert (out / f).read_bytes() == (ncnn_art.parent / f).read_bytes()
    cfg = json.loads((out / "deploy.json").read_text())
    b = open_backend(ncnn_art)
    assert cfg["runtime"] == "ncnn" and cfg["artifact"] == "yolov5n.param" and cfg["precision"] == "fp32"
    assert cfg["input"]["name"] == b.input_name and cfg["input"]["shape"] == [1, 3, IMGSZ, IMGSZ]
    assert cfg["outputs"][0]["name"] == b.output_name and cfg["outputs"][0]["shape"][0] == 1
    assert cfg["outputs"][0]["shape"][2] == 5 + b.nc and cfg["runtime_options"]["threads"] == 1
    assert (out / "requirements.txt").read_text().split()[-1] == "ncnn==1.0.20261020"
    readme = (out / "README.md").read_text()
    assert "aarch64" in readme and "Triton" not in readme
    assert open_backend(out).name == "ncnn"
    tree = ast.parse((out / "infer.py").read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= ALLOWED_IMPORTS, mods - ALLOWED_IMPORTS


def test_ncnn_infer_matches_yolopt(ncnn_bundle, ncnn_art, images, tmp_path):
    """infer.py, run with this interpreter (which has ncnn) but without yolopt on its path, gives yolopt's own
    detections on the NCNN artifact: boxes within 1 px, conf within 1e-3, on bus.jpg and zidane.jpg."""
    run_infer(Path(sys.executable), ncnn_bundle, images, "--json", tmp_path / "d.json")
    assert assert_same(json.loads((tmp_path / "d.json").read_text()), yolopt_square(ncnn_art, images)) >= 4


def test_ncnn_infer_in_a_fresh_venv(ncnn_bundle, ncnn_art, bus_jpg, tmp_path):
    """The same in a venv holding only the bundle's requirements (numpy, OpenCV, ncnn: no torch, no yolopt)."""
    py = fresh_venv("ncnn")
    run_infer(py, ncnn_bundle, bus_jpg, "--json", tmp_path / "d.json")
    assert assert_same(json.loads((tmp_path / "d.json").read_text()), yolopt_square(ncnn_art, bus_jpg)) >= 4


# --- raw head: boxes decoded outside the graph ------------------------------------------------------

def test_raw_head_decoded_outside_matches_the_graph_and_the_bundle(yolov5n_pt, arts, tmp_path, fresh_python, images):
    """--raw-head ends the ONNX graph at Detect's convs (verified against PyTorch on export). yolopt decodes the
    maps to the graph's own output; with the NMS threshold it decodes only the cells that can pass it, and NMS
    then keeps exactly the same boxes. The bundle's infer.py (numpy only) reproduces yolopt's detections."""
    import torch

    from yolopt.data.images import read_image
    from yolopt.data.preprocess import preprocess
    from yolopt.errors import ExportError
    from yolopt.export import ExportSpec, export
    from yolopt.ops.postprocess import NMSOptions, postprocess
    from yolopt.runtime import open as open_backend
    from yolopt.runtime import predict_above

    raw = export(yolov5n_pt, ExportSpec("onnx", imgsz=IMGSZ, dynamic=True, raw_head=True, out=tmp_path / "raw.onnx",
                                        verify_images=[images / "bus.jpg"])).path
    b, g = open_backend(raw), open_backend(arts["dynamic"])
    assert b.raw_head and not g.raw_head and b.nc == 80 and b.anchors.shape == (3, 3, 2)
    x, metas = preprocess([read_image(images / "bus.jpg")], IMGSZ, mode="rect", stride=32)
    full, graph = b(x), g(x)
    assert full.shape == graph.shape and torch.allclose(full, graph, rtol=1e-5, atol=1e-3)
    for conf in (0.25, 0.001):
        cand = predict_above(b, x, conf)
        assert cand.shape[1] < full.shape[1] and (conf < 0.01 or cand.shape[1] < full.shape[1] / 20)
        nms = NMSOptions(conf=conf)
        a, c = postprocess(full, metas, nms)[0], postprocess(cand, metas, nms)[0]
        assert len(a) >= 4 and torch.equal(a, c), conf

    out = write_bundle(raw, tmp_path / "b", letterbox="rect")
    cfg = json.loads((out / "deploy.json").read_text())
    assert cfg["raw_head"]["strides"] == [8.0, 16.0, 32.0] and len(cfg["outputs"]) == 3
    check_triton_onnx(out, next((out / "triton").iterdir()).name, raw)
    run_infer(fresh_python, out, images / "bus.jpg", images / "zidane.jpg", "--json", tmp_path / "d.json", "--quiet")
    assert assert_same(json.loads((tmp_path / "d.json").read_text()), yolopt_rect(raw, images)) >= 5

    for bad in (ExportSpec("onnx", imgsz=IMGSZ, raw_head=True, nms=True, out=tmp_path / "x.onnx"),
                ExportSpec("openvino", imgsz=IMGSZ, raw_head=True, out=tmp_path / "ov" / "x.xml")):
        with pytest.raises(ExportError, match="raw head") as e:
            export(yolov5n_pt, bad)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "ov").exists()


# --- LiteRT -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def litert_bundle(litert_export, tmp_path_factory):
    """conftest's session LiteRT export (yolov5n, 256 px), bundled with 1 thread."""
    return write_bundle(litert_export.path, tmp_path_factory.mktemp("litert_b") / "b", name="yolov5n_litert",
                        threads=1)


def test_litert_bundle_contents(litert_bundle, litert_export):
    """The .tflite, deploy.json with the signature's tensor names, the pinned ai-edge-litert wheel, a README naming
    the aarch64 wheels, and no Triton entry; infer.py imports only numpy, OpenCV and the runtimes."""
    from yolopt.runtime import open as open_backend

    out = litert_bundle
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "deploy.json", "infer.py", "requirements.txt",
                                                     "yolov5n.tflite"]
    assert (out / "yolov5n.tflite").read_bytes() == litert_export.path.read_bytes()
    cfg = json.loads((out / "deploy.json").read_text())
    b = open_backend(litert_export.path, threads=1)
    assert cfg["runtime"] == "litert" and cfg["artifact"] == "yolov5n.tflite" and cfg["precision"] == "fp32"
    assert cfg["input"] == {"name": b.input_name, "shape": [1, 3, IMGSZ, IMGSZ], "dtype": "float32",
                            "layout": "NCHW", "channels": "RGB"}
    assert [o["name"] for o in cfg["outputs"]] == b.output_names == ["output_0"]
    assert cfg["outputs"][0]["shape"] == [1, 3 * (32 * 32 + 16 * 16 + 8 * 8), 5 + b.nc]
    assert cfg["runtime_options"]["threads"] == 1 and cfg["names"][0] == "person"
    assert (out / "requirements.txt").read_text().split()[-1] == "ai-edge-litert==2.3.0"
    readme = (out / "README.md").read_text()
    assert "aarch64" in readme and "Triton" not in readme and "XNNPACK" in readme
    assert open_backend(out / "yolov5n.tflite").name == "litert"
    tree = ast.parse((out / "infer.py").read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= ALLOWED_IMPORTS, mods - ALLOWED_IMPORTS


def test_litert_infer_matches_yolopt(litert_bundle, litert_export, images, tmp_path):
    """infer.py, run with this interpreter (which has ai-edge-litert) but without yolopt on its path, gives
    yolopt's own detections on the .tflite: boxes within 1 px, conf within 1e-3, on bus.jpg and zidane.jpg."""
    run_infer(Path(sys.executable), litert_bundle, images, "--json", tmp_path / "d.json")
    assert assert_same(json.loads((tmp_path / "d.json").read_text()), yolopt_square(litert_export.path, images)) >= 4


def test_litert_infer_in_a_fresh_venv(litert_bundle, litert_export, bus_jpg, tmp_path):
    """The same in a venv holding only the bundle's requirements (numpy, OpenCV, ai-edge-litert: no torch, no
    yolopt)."""
    py = fresh_venv("litert")
    run_infer(py, litert_bundle, bus_jpg, "--json", tmp_path / "d.json")
    assert assert_same(json.loads((tmp_path / "d.json").read_text()), yolopt_square(litert_export.path, bus_jpg)) >= 4


def test_optimize_times_a_bundle_with_its_own_infer_pipeline(arts, images, tmp_path):
    """pipeline.harness.measure_bundle (how optimize measures every variant): the bundle's own infer.py pipeline
    in its worker processes, warm before the clock starts; images/s, latency and the workers' memory. A bundle
    whose model the runtime refuses is one line naming the bundle."""
    from yolopt.errors import YoloptError
    from yolopt.pipeline.harness import measure_bundle

    b = write_bundle(arts["static"], tmp_path / "b", threads=1, workers=1)
    ims = [str(images / "bus.jpg"), str(images / "zidane.jpg")]
    # in a process of its own, as optimize's benchmark worker calls it: torch is never imported
    code = ("import json, sys; from yolopt.pipeline.harness import measure_bundle; "
            f"r = measure_bundle({str(b)!r}, {ims!r}, 0.5); "
            "print(json.dumps({**r.to_dict(), 'torch': 'torch' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["fps"] > 0 and r["images"] >= 1 and r["workers"] == 1 and r["threads"] == 1 and not r["torch"]
    assert 20 < r["peak_mem_mb"] < 400 and r["latency_ms"]["p50"] > 0  # infer.py's process: no torch in it
    two = measure_bundle(b, ims, 0.5, workers=2)  # infer.py's worker processes (forked: they hold what this does)
    assert two.workers == 2 and two.fps > 0 and two.images >= 2 and two.peak_mem_mb > 0
    (b / "yolov5n.onnx").write_bytes(b"not a model")
    with pytest.raises(YoloptError) as e:
        measure_bundle(b, ims, 0.5)
    assert str(b) in str(e.value) and "\n" not in str(e.value)
