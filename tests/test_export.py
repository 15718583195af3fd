"""yolopt export: ONNX / OpenVINO / TorchScript artifacts, metadata, in-graph NMS, verification, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

IMGSZ = 256


@pytest.fixture(scope="module")
def fused(yolov5n):
    import copy

    return copy.deepcopy(yolov5n).fuse()


@pytest.fixture(scope="module")
def artifacts(deploy_artifacts):
    return deploy_artifacts


def _bus_input(bus_jpg, size=IMGSZ):
    from yolopt.data.images import read_image
    from yolopt.data.letterbox import letterbox, to_tensor

    return to_tensor(letterbox(read_image(bus_jpg), size, auto=False)[0])[None]


def test_onnx_fused_slim_metadata_and_outputs(artifacts, fused, bus_jpg):
    res = artifacts["onnx"]
    assert res.path.exists() and res.files == [res.path]
    assert res.size_mb == pytest.approx(res.path.stat().st_size / 1e6)
    m = onnx.load(str(res.path))
    ops = {n.op_type for n in m.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops  # Conv+BN fused
    meta = {p.key: json.loads(p.value) for p in m.metadata_props}
    assert meta["names"][0] == "person" and len(meta["names"]) == 80
    assert meta["stride"] == [8, 16, 32] and meta["imgsz"] == [IMGSZ, IMGSZ]
    assert meta["yolopt_version"] and meta["dynamic"] is False and meta["nms"] is None
    assert meta["precision"] == "fp32" and not any("half" in k for k in meta)
    # upstream layout (B, N, 5+nc) and the same values as PyTorch on a real image
    x = _bus_input(bus_jpg)
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"images": x.numpy()})[0]
    with torch.inference_mode():
        ref = fused(x).numpy()
    assert y.shape == (1, 3 * 21 * 64, 85) == ref.shape
    assert np.abs(y - ref).max() < 0.02
    assert np.abs(y[..., 4:] - ref[..., 4:]).max() < 1e-4
    v = res.verify
    assert v.passed and v.agreement == 1.0 and v.detections_torch > 0 and v.max_score_diff < 1e-3
    assert v.precision == "fp32" and v.box_ratio < 0.5 and (v.atol, v.box_atol, v.box_rtol) == (1e-3, 0.05, 1e-4)


def test_onnx_dynamic_batch_and_shape(artifacts, fused):
    path = artifacts["onnx_dyn"].path
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shp = sess.get_inputs()[0].shape
    assert not isinstance(shp[0], int) and not isinstance(shp[2], int)
    x = torch.rand(2, 3, 256, 192)
    y = sess.run(None, {"images": x.numpy()})[0]
    with torch.inference_mode():
        ref = fused(x).numpy()
    assert y.shape == ref.shape == (2, 3 * (32 * 24 + 16 * 12 + 8 * 6), 85)
    assert np.abs(y - ref).max() < 0.02
    assert artifacts["onnx_dyn"].verify.shapes == [[1, IMGSZ, IMGSZ], [2, IMGSZ, IMGSZ - 64]]


def test_openvino_ir_and_rt_info(artifacts, fused, bus_jpg):
    ov = pytest.importorskip("openvino")
    res = artifacts["openvino"]
    xml = res.path
    assert xml.suffix == ".xml" and xml.with_suffix(".bin").exists()
    assert sorted(f.suffix for f in res.files) == [".bin", ".xml"]
    model = ov.Core().read_model(str(xml))
    assert json.loads(model.get_rt_info(["yolopt", "names"]).astype(str))[5] == "bus"
    assert json.loads(model.get_rt_info(["yolopt", "imgsz"]).astype(str)) == [IMGSZ, IMGSZ]
    assert json.loads(model.get_rt_info(["yolopt", "precision"]).astype(str)) == "fp32"
    assert not model.has_rt_info(["yolopt", "half"])
    # FP32 IR: weights not compressed (about the size of the fp32 ONNX)
    assert res.size_mb > 0.8 * artifacts["onnx"].size_mb
    from yolopt import runtime

    b = runtime.open(xml)
    x = _bus_input(bus_jpg)
    with torch.inference_mode():
        ref = fused(x)
    assert (b(x) - ref).abs().max() < 0.02


def test_openvino_fp16_is_smaller(tmp_path, yolov5n_pt, artifacts):
    ov = pytest.importorskip("openvino")
    from yolopt.export import ExportSpec, export

    res = export(yolov5n_pt, ExportSpec("openvino", imgsz=IMGSZ, precision="fp16", out=tmp_path / "h.xml"))
    assert res.size_mb < 0.6 * artifacts["openvino"].size_mb
    assert res.verify.passed and res.verify.precision == "fp16" and res.verify.max_score_diff < 0.03
    assert res.verify.max_box_diff > 0.05  # really FP16 weights: beyond what fp32 would allow
    assert res.metadata["precision"] == "fp16" and "half" not in res.metadata
    model = ov.Core().read_model(str(res.path))
    assert json.loads(model.get_rt_info(["yolopt", "precision"]).astype(str)) == "fp16"


def test_torchscript_extra_files(artifacts, fused):
    path = artifacts["torchscript"].path
    extra = {"config.txt": ""}
    mod = torch.jit.load(str(path), _extra_files=extra)
    meta = {k: json.loads(v) for k, v in json.loads(extra["config.txt"]).items()}
    assert meta["nc"] == 80 and meta["stride"] == [8, 16, 32] and meta["precision"] == "fp32" and "half" not in meta
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.inference_mode():
        assert (mod(x) - fused(x)).abs().max() < 1e-3


def test_nms_onnx_matches_predict_on_bus(tmp_path, yolov5n_pt, yolov5n, bus_jpg):
    """Acceptance: the --nms ONNX (640) returns the same detections as `yolopt predict`."""
    from yolopt import runtime
    from yolopt.detect import predict

    out = tmp_path / "nms.onnx"
    r = run_cli("export", yolov5n_pt, "--format", "onnx", "--nms", "--out", out, "--verify-source", bus_jpg)
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "NonMaxSuppression" in ops
    b = runtime.open(out)
    assert b.end2end and b.nms == {"conf": 0.25, "iou": 0.45, "max_det": 300}
    # raw artifact output: rows [batch, x1, y1, x2, y2, conf, cls] in input pixels
    raw = b(_bus_input(bus_jpg, 640))
    assert raw.shape[1] == 7 and (raw[:, 0] == 0).all()
    assert (raw[:-1, 5] >= raw[1:, 5]).all()  # sorted by confidence
    ref = predict(yolov5n, bus_jpg)[0]
    got = predict(b, bus_jpg)[0]
    assert len(ref) >= 4 and len(got) == len(ref)
    np.testing.assert_array_equal(got.cls, ref.cls)
    np.testing.assert_allclose(got.xyxy, ref.xyxy, atol=0.1)
    np.testing.assert_allclose(got.conf, ref.conf, atol=1e-4)


def _corrupt(src: Path, dst: Path) -> None:
    """Perturb the class-score part of one Detect head bias (a silent, plausible-looking corruption)."""
    m = onnx.load(str(src))
    from onnx import numpy_helper

    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    bias_name = convs[-1].input[2]
    for i, init in enumerate(m.graph.initializer):
        if init.name == bias_name:
            a = numpy_helper.to_array(init).copy()
            a[5:85] += 0.5
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, init.name))
    onnx.save(m, str(dst))


def test_verification_catches_corrupted_artifact(artifacts, tmp_path, fused, bus_jpg):
    from yolopt import runtime
    from yolopt.errors import ExportError
    from yolopt.export import verify

    bad = tmp_path / "corrupt.onnx"
    _corrupt(artifacts["onnx"].path, bad)
    backend = runtime.open(bad)
    res = verify(backend, fused, (IMGSZ, IMGSZ), images=[bus_jpg], raise_on_fail=False)
    assert not res.passed and res.max_score_diff > 1e-2
    with pytest.raises(ExportError, match="verification FAILED"):
        verify(backend, fused, (IMGSZ, IMGSZ), images=[bus_jpg])
    # the intact artifact passes the same check
    assert verify(runtime.open(artifacts["onnx"].path), fused, (IMGSZ, IMGSZ), images=[bus_jpg]).passed


def test_failed_verification_writes_nothing(tmp_path, yolov5n_pt):
    out = tmp_path / "new" / "folder" / "m.onnx"
    r = run_cli("export", yolov5n_pt, "--format", "onnx", "--imgsz", "128", "--out", out, "--atol", "0")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("yolopt: error:") and "verification FAILED" in lines[-1] and str(out) in lines[-1]
    assert list(tmp_path.iterdir()) == []  # no artifact, no temp folder, not even the folders it made


@pytest.mark.parametrize("args,needle", [
    (["--format", "caffe"], "unknown export format 'caffe'"),
    (["--format", "onnx", "--imgsz", "100"], "multiple of the model stride 32"),
    (["--format", "torchscript", "--nms"], "--nms is available for onnx and openvino exports, not torchscript"),
])
def test_bad_export_options(tmp_path, yolov5n_pt, args, needle):
    r = run_cli("export", yolov5n_pt, *args, "--out", tmp_path / "x")
    assert r.returncode == 1
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_weights_file(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint at all")
    r = run_cli("export", bad, "--format", "onnx")
    assert r.returncode == 1 and str(bad) in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_tensorrt_without_gpu_fails_clearly(tmp_path, yolov5n_pt):
    try:
        import tensorrt  # noqa: F401

        if torch.cuda.is_available():
            pytest.skip("tensorrt and CUDA present: the failure path cannot be exercised")
    except ImportError:
        pass
    r = run_cli("export", yolov5n_pt, "--format", "tensorrt", "--out", tmp_path / "m.engine")
    assert r.returncode == 1
    msg = r.stderr.strip().splitlines()
    assert len(msg) == 1 and "TensorRT" in msg[0] and ("not installed" in msg[0] or "CUDA" in msg[0])
    assert not (tmp_path / "m.engine").exists()


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_tensorrt(), reason="TensorRT engines need the `tensorrt` package and a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine(tmp_path, yolov5n_pt, bus_jpg, precision):
    from yolopt import runtime
    from yolopt.export import ExportSpec, export

    res = export(yolov5n_pt, ExportSpec("tensorrt", imgsz=IMGSZ, precision=precision, out=tmp_path / "m.engine",
                                        verify_images=[bus_jpg]))
    assert res.verify.passed and res.path.exists() and res.metadata["precision"] == precision
    b = runtime.open(res.path)
    assert b.name == "tensorrt" and b.names[0] == "person" and b.imgsz == (IMGSZ, IMGSZ)
    assert b(_bus_input(bus_jpg)).shape == (1, 3 * 21 * 64, 85)

