"""yolopt.runtime: one inference API over .pt/.safetensors/.onnx/.xml/.torchscript, and val/predict on artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli

pytest.importorskip("onnxruntime")

IMGSZ = 256


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread(one_thread):
    """Torch on one thread for this module (conftest): the models here are small, and two cores shared with other
    work lose more to spinning threads than they gain."""


@pytest.fixture(scope="module")
def files(tmp_path_factory, yolov5n_pt, yolov5n, deploy_artifacts):
    import yolopt

    st = tmp_path_factory.mktemp("runtime") / "m.safetensors"
    yolopt.save(yolov5n, st)
    return {"pt": yolov5n_pt, "safetensors": st, **{k: v.path for k, v in deploy_artifacts.items()}}


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, IMGSZ, IMGSZ, generator=g)


@pytest.mark.parametrize("key,name", [("pt", "torch"), ("safetensors", "torch"), ("onnx", "onnxruntime"),
                                      ("onnx_dyn", "onnxruntime"), ("openvino", "openvino"),
                                      ("torchscript", "torchscript")])
def test_every_backend_same_call_and_attributes(files, yolov5n, x, key, name):
    from yolopt import runtime

    b = runtime.open(files[key])
    assert b.name == name
    assert b.names == list(yolov5n.names) and b.nc == 80
    assert [int(s) for s in b.stride] == [8, 16, 32]
    with torch.inference_mode():
        ref = yolov5n(x)
    y = b(x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.shape == (1, 3 * 21 * 64, 85)
    assert (y - ref).abs().max() < 0.02
    y2 = b(x.numpy())  # numpy input gives the same result
    assert torch.allclose(y, y2)
    if key in ("onnx", "openvino", "torchscript"):
        assert b.imgsz == (IMGSZ, IMGSZ) and not b.dynamic and b.input_shape == (1, 3, IMGSZ, IMGSZ)
    if key == "onnx_dyn":
        assert b.dynamic and b.input_shape == (None, 3, None, None)


def test_fixed_batch_artifact_runs_larger_batches_in_chunks(files, yolov5n):
    from yolopt import runtime

    b = runtime.open(files["openvino"])
    xb = torch.rand(3, 3, IMGSZ, IMGSZ)
    with torch.inference_mode():
        ref = yolov5n(xb)
    y = b(xb)
    assert y.shape == ref.shape and (y - ref).abs().max() < 0.02


def test_parallel_backend_matches_single(files):
    from yolopt import runtime

    b = runtime.open(files["onnx_dyn"], threads=1)
    p = runtime.ParallelBackend(b, 2)
    assert len(p.replicas) == 2 and p.replicas[1] is not b
    xb = torch.rand(4, 3, 128, 160)
    assert torch.allclose(p(xb), b(xb), atol=1e-5)


def test_wrong_input_size_is_a_clear_error(files):
    from yolopt import runtime

    for key in ("onnx", "openvino"):
        b = runtime.open(files[key])
        with pytest.raises(runtime.RuntimeBackendError, match=rf"{files[key].name}: input size 320x320 does not match"):
            b(torch.zeros(1, 3, 320, 320))
    with pytest.raises(runtime.RuntimeBackendError, match="expected a"):
        runtime.open(files["onnx_dyn"])(torch.zeros(3, 64, 64))
    with pytest.raises(runtime.RuntimeBackendError, match="not a multiple of the stride 32"):
        runtime.open(files["onnx_dyn"])(torch.zeros(1, 3, 100, 64))


@pytest.mark.parametrize("name,content,needle", [
    ("m.onnx", b"garbage bytes", "not a loadable ONNX model"),
    ("m.xml", b"<net>", "OpenVINO weights file m.bin is missing"),
    ("m.torchscript", b"garbage", "not a loadable TorchScript file"),
    ("m.onnx", b"", "empty file"),
    ("m.pte", b"x", "not an ExecuTorch program file"),  # .tflite opens with LiteRT (tests/test_edge.py)
    ("m.mnn", b"x", "unknown model format '.mnn'"),
])
def test_unreadable_artifacts(tmp_path, name, content, needle):
    from yolopt import runtime

    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(runtime.RuntimeBackendError, match=needle) as e:
        runtime.open(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_cli_error(tmp_path, bus_jpg):
    from yolopt import runtime

    with pytest.raises(runtime.RuntimeBackendError, match="model file not found"):
        runtime.open(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00" * 64)
    r = run_cli("predict", bad, bus_jpg)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"yolopt: error: {bad}: not a loadable ONNX model"
                                             + r.stderr.strip().split("not a loadable ONNX model", 1)[1]]


def test_predict_cli_on_artifacts_and_workers(files, bus_jpg, shared):
    def run(*a):
        r = run_cli("predict", *a, "--imgsz", IMGSZ, "--threads", "1", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    ref = run(files["pt"], bus_jpg)[0]["detections"]
    assert len(ref) >= 3
    for key in ("onnx", "openvino"):
        got = run(files[key], bus_jpg)[0]["detections"]
        assert [d["class"] for d in got] == [d["class"] for d in ref]
        np.testing.assert_allclose([d["xyxy"] for d in got], [d["xyxy"] for d in ref], atol=0.5)
    imgs = shared / "data" / "images"
    one = run(files["onnx"], imgs)
    two = run(files["onnx"], imgs, "--workers", "2")
    assert [r["image"] for r in two] == [r["image"] for r in one] and len(one) == 2
    assert [[d["class"] for d in r["detections"]] for r in two] == [[d["class"] for d in r["detections"]] for r in one]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, coco128_yaml):
    """The first 24 coco128 images (labels found next to them in the shared folder)."""
    d = tmp_path_factory.mktemp("data")
    imgs = sorted((coco128_yaml.parent / "images" / "train2017").glob("*.jpg"))[:24]
    (d / "val.txt").write_text("\n".join(str(p) for p in imgs) + "\n")
    names = coco128_yaml.read_text().split("names:", 1)[1]
    (d / "data.yaml").write_text(f"path: {d}\ntrain: val.txt\nval: val.txt\nnc: 80\nnames:{names}")
    return d / "data.yaml"


def _val(model, data, *extra):
    r = run_cli("val", model, "--data", data, "--imgsz", IMGSZ, "--batch", "8", "--threads", "1", *extra)
    assert r.returncode == 0, r.stderr
    return r


def test_val_on_artifacts_matches_torch(files, small_data, tmp_path):
    def m(key, *extra):
        out = tmp_path / f"{key}{len(extra)}.json"
        _val(files[key], small_data, "--json", out, *extra)
        return json.loads(out.read_text())

    torch_rect = m("pt")
    dyn = m("onnx_dyn", "--workers", "2")
    assert dyn["rect"] is True and dyn["backend"] == "onnxruntime"
    assert abs(dyn["map50_95"] - torch_rect["map50_95"]) < 0.002 and torch_rect["map50_95"] > 0.2
    static = m("openvino")  # fixed 256x256 input: square letterbox
    assert static["rect"] is False and static["imgsz"] == IMGSZ
    assert abs(static["map50_95"] - torch_rect["map50_95"]) < 0.05


def test_val_refuses_nms_artifact(nms_onnx, small_data):
    p = nms_onnx[0]  # conftest: exported once per session with --nms
    r = run_cli("val", p, "--data", small_data, "--imgsz", IMGSZ)
    assert r.returncode == 1 and "exported with NMS in the graph" in r.stderr


_ALTSTACK_SCRIPT = """
import faulthandler, gc, signal, subprocess, sys, threading
import numpy as np
from yolopt.runtime import open as load
from yolopt.runtime.altstack import current_sigaltstack
faulthandler.enable()                             # gives the main thread an alternate signal stack
signal.signal(signal.SIGCHLD, lambda *a: None)    # Python handlers run SA_ONSTACK (torch's DataLoader sets one)
before = current_sigaltstack()
box = [load(sys.argv[1])]
box[0](np.zeros((1, 3, 256, 256), np.float32))
assert current_sigaltstack() == before, (before, current_sigaltstack())
t = threading.Thread(target=lambda: (box.clear(), gc.collect()))  # freed on another thread, as GC may do
t.start(); t.join()
for _ in range(3):
    subprocess.run(["true"], check=True)          # SIGCHLD delivered on the main thread's alternate stack
print("ok")
"""


def test_openvino_leaves_the_signal_stack_alone(files):
    """OpenVINO's CPU plugin swaps the thread's sigaltstack; once freed, the next SIGCHLD was a SIGSEGV."""
    import subprocess
    import sys

    pytest.importorskip("openvino")
    r = subprocess.run([sys.executable, "-c", _ALTSTACK_SCRIPT, str(files["openvino"])], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-1500:])
