"""yolopt export: ONNX / OpenVINO / TorchScript artifacts, metadata, in-graph NMS, verification, bad input,
the exporter registry, precisions and the verification tolerances."""

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


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread(one_thread):
    """Torch on one thread for this module (conftest): the models here are small, and two cores shared with other
    work lose more to spinning threads than they gain."""


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


def test_nms_onnx_matches_predict_on_bus(nms_onnx, yolov5n, bus_jpg):
    """Acceptance: the --nms ONNX (conftest: exported once per session by the CLI, 256 px, verified on the sample
    images, bus.jpg among them) returns the same detections as `yolopt predict` at its size."""
    from yolopt import runtime
    from yolopt.detect import predict

    out, r, report = nms_onnx
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout and any(s.endswith("bus.jpg") for s in report["verify"]["sources"])
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "NonMaxSuppression" in ops
    b = runtime.open(out)
    assert b.end2end and b.nms == {"conf": 0.25, "iou": 0.45, "max_det": 300}
    # raw artifact output: rows [batch, x1, y1, x2, y2, conf, cls] in input pixels
    raw = b(_bus_input(bus_jpg, IMGSZ))
    assert raw.shape[1] == 7 and (raw[:, 0] == 0).all()
    assert (raw[:-1, 5] >= raw[1:, 5]).all()  # sorted by confidence
    ref = predict(yolov5n, bus_jpg, imgsz=IMGSZ)[0]
    got = predict(b, bus_jpg, imgsz=IMGSZ)[0]
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
    (["--format", "onnx", "--imgsz", "64", "64", "64"], "--imgsz takes one value or two"),
    (["--format", "torchscript", "--nms"], "NMS in the graph is available for onnx and openvino exports, not "
                                           "torchscript (--nms)"),
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


# --- registry --------------------------------------------------------------------------------------

@pytest.fixture
def registry():
    """EXPORTERS, restored after the test (tests register their own formats)."""
    from yolopt.export import EXPORTERS

    before = dict(EXPORTERS)
    yield EXPORTERS
    EXPORTERS.clear()
    EXPORTERS.update(before)


def test_registry_has_the_builtin_formats(registry):
    assert list(registry)[:4] == ["onnx", "openvino", "torchscript", "tensorrt"]
    assert {k: e.suffix for k, e in registry.items()} == {
        "onnx": ".onnx", "openvino": ".xml", "torchscript": ".torchscript", "tensorrt": ".engine", "ncnn": ".param",
        "litert": ".tflite", "executorch": ".pte"}
    assert all(e.precisions == ("fp32", "fp16") for k, e in registry.items() if k not in ("litert", "executorch"))
    assert registry["litert"].precisions == ("fp32", "fp16", "int8")  # int8 quantized while exporting
    # int8 quantized while exporting (PT2E), fp16 refused in one line (test_edge.py)
    assert registry["executorch"].precisions == ("fp32", "int8") and not registry["executorch"].folder
    assert not registry["litert"].folder  # one .tflite, metadata inside (tests/test_edge.py)
    assert registry["ncnn"].folder and dict(registry["ncnn"].refused).keys() == {"int8"}  # tests/test_edge.py
    assert [k for k, e in registry.items() if e.needs_gpu] == ["tensorrt"]
    assert [k for k, e in registry.items() if "fp16" in e.cuda_precisions] == ["onnx", "torchscript"]
    assert [k for k, e in registry.items() if e.nms] == ["onnx", "openvino"]
    assert registry["openvino"].folder and not registry["onnx"].folder


def _register_plain_onnx(name: str, corrupt: bool = False, **kwargs):
    """A format added from outside: a plain torch.onnx.export (no onnxslim), optionally with a corrupted head."""
    from yolopt.export import ExporterTraits, register_exporter, traceable

    @register_exporter(name, ".onnx", ExporterTraits(**kwargs))
    def write(model, out, spec, meta, workdir):
        """Plain torch.onnx.export, metadata_props."""
        m = traceable(model, spec.device)
        torch.onnx.export(m, torch.zeros(spec.batch, 3, *spec.imgsz), str(workdir / "raw.onnx"), dynamo=False,
                          opset_version=spec.opset, input_names=["images"], output_names=["output0"])
        if corrupt:
            _corrupt(workdir / "raw.onnx", workdir / "raw.onnx")
        proto = onnx.load(str(workdir / "raw.onnx"))
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=json.dumps(v))
        onnx.save(proto, str(out))
        return [out]

    return write


def test_registered_format_plugs_in_and_is_verified(registry, tmp_path, yolov5n, bus_jpg):
    from yolopt.export import ExportSpec, export

    builtin = dict(registry)
    _register_plain_onnx("onnx-plain")
    assert {k: v for k, v in registry.items() if k != "onnx-plain"} == builtin  # the others untouched
    assert registry["onnx-plain"].precisions == ("fp32",) and registry["onnx-plain"].description.startswith("Plain")
    with pytest.raises(ValueError, match="already registered"):
        _register_plain_onnx("onnx-plain")

    # an in-memory model; written, loaded back through yolopt.runtime and verified like the built-ins
    res = export(yolov5n, ExportSpec("onnx-plain", imgsz=IMGSZ, out=tmp_path / "p", verify_images=[bus_jpg]))
    assert res.format == "onnx-plain" and res.path == tmp_path / "p.onnx" and res.files == [res.path]
    assert res.verify.passed and res.verify.agreement == 1.0 and res.verify.detections_torch > 0
    m = onnx.load(str(res.path))
    assert "BatchNormalization" not in {n.op_type for n in m.graph.node}  # it got the fused model
    meta = {p.key: json.loads(p.value) for p in m.metadata_props}
    assert meta["precision"] == "fp32" and meta["imgsz"] == [IMGSZ, IMGSZ] and len(meta["names"]) == 80
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.onnx"]  # temp folder gone

    # the registry's rules apply to it: precisions and --nms it does not declare are refused, nothing written
    from yolopt.errors import ExportError

    with pytest.raises(ExportError, match=r"^precision fp16: format onnx-plain exports fp32$"):
        export(yolov5n, ExportSpec("onnx-plain", precision="fp16", out=tmp_path / "q.onnx"))
    with pytest.raises(ExportError, match="NMS in the graph is available for onnx and openvino exports, not onnx-pl"):
        export(yolov5n, ExportSpec("onnx-plain", nms=True, out=tmp_path / "q.onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.onnx"]


def test_registered_format_failing_verification_writes_nothing(registry, tmp_path, yolov5n, bus_jpg):
    from yolopt.errors import ExportError
    from yolopt.export import ExportSpec, export

    _register_plain_onnx("onnx-broken", corrupt=True)
    spec = ExportSpec("onnx-broken", imgsz=IMGSZ, out=tmp_path / "b.onnx", verify_images=[bus_jpg])
    with pytest.raises(ExportError, match="verification FAILED, artifact not written"):
        export(yolov5n, spec)
    assert list(tmp_path.iterdir()) == []
    # verify=False (internal callers exporting to a temp dir): no verification run, the file is written
    res = export(yolov5n, ExportSpec("onnx-broken", imgsz=IMGSZ, out=tmp_path / "b.onnx", verify=False))
    assert res.verify is None and res.path.exists() and res.files == [res.path]


def test_in_memory_model_needs_an_output_path(yolov5n):
    from yolopt.errors import ExportError
    from yolopt.export import ExportSpec, export

    with pytest.raises(ExportError, match="in-memory model needs an output path"):
        export(yolov5n, ExportSpec("onnx", imgsz=IMGSZ))


# --- precision -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,precision,code,needle", [
    ("onnx", "bf16", 1, ("precision bf16 is not an export precision: it is a runtime precision; export fp32 and "
                         "run the fp32 artifact at precision bf16 on a CPU that has AVX-512 BF16 (--precision)")),
    ("openvino", "int8", 1, "precision int8: format openvino exports fp32 and fp16 (format litert and executorch "
                            "export int8; or quantize the artifact: yolopt quantize)"),
    ("onnx", "xyz", 2, "argument --precision: invalid choice: 'xyz'"),
    pytest.param("onnx", "fp16", 1, ("precision fp16, format onnx, needs a CUDA GPU (fp16 tracing) and none is "
                                     "available; on a CPU use format openvino or ncnn or litert at precision fp16 "
                                     "(--precision, --format)"),
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")),
])
def test_bad_precision_is_one_line(tmp_path, yolov5n_pt, fmt, precision, code, needle):
    r = run_cli("export", yolov5n_pt, "--format", fmt, "--precision", precision, "--out", tmp_path / "m")
    assert r.returncode == code
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_half_is_a_deprecated_alias_of_fp16(caplog, capsys):
    from yolopt.cli import build_parser
    from yolopt.commands.export import spec_from_args
    from yolopt.errors import ExportError

    parse = build_parser().parse_args
    assert spec_from_args(parse(["export", "m.pt", "--format", "openvino"])).precision == "fp32"
    with caplog.at_level("WARNING", logger="yolopt"):
        assert spec_from_args(parse(["export", "m.pt", "--format", "openvino", "--half"])).precision == "fp16"
    assert "--half is deprecated; use --precision fp16" in caplog.text
    with pytest.raises(ExportError, match="conflicts with --precision fp32"):
        spec_from_args(parse(["export", "m.pt", "--format", "onnx", "--half", "--precision", "fp32"]))
    with pytest.raises(SystemExit):
        parse(["export", "--help"])
    help_text = capsys.readouterr().out
    assert "--precision {fp32,fp16,bf16,int8}" in help_text and "--half" not in help_text  # hidden


def test_device_must_suit_the_precision(yolov5n_pt):
    from yolopt.errors import ExportError
    from yolopt.export import ExportSpec, export

    with pytest.raises(ExportError, match="precision fp16, format torchscript, needs a CUDA GPU, not device cpu"):
        export(yolov5n_pt, ExportSpec("torchscript", precision="fp16", device="cpu"))


def test_torchscript_fp16_takes_fp32_input(tmp_path, yolov5n, bus_jpg):
    """The fp16 TorchScript casts its input itself (traced here on the CPU; `export` traces fp16 on CUDA)."""
    from dataclasses import replace

    from yolopt import runtime
    from yolopt.export import EXPORTERS, ExportSpec, export_metadata, verify

    spec = ExportSpec("torchscript", imgsz=(IMGSZ, IMGSZ), precision="fp16", device="cpu")
    meta = export_metadata(yolov5n, spec)
    (tmp_path / "w").mkdir()
    files = EXPORTERS["torchscript"].write(yolov5n, tmp_path / "h.torchscript", replace(spec), meta, tmp_path / "w")
    assert files == [tmp_path / "h.torchscript"]
    b = runtime.open(files[0], device="cpu")
    assert b.artifact_precision == "fp16"  # read from the `precision` metadata
    x = _bus_input(bus_jpg)
    assert b.module(x).dtype == torch.float16 and b.module(x.half()).dtype == torch.float16  # fp32 or fp16 input
    v = verify(b, yolov5n, (IMGSZ, IMGSZ), precision="fp16", images=[bus_jpg])
    assert v.passed and v.max_box_diff > 0.05  # really fp16, and within the fp16 limits
    assert not verify(b, yolov5n, (IMGSZ, IMGSZ), precision="fp32", images=[bus_jpg], raise_on_fail=False).passed


# --- verification tolerances -----------------------------------------------------------------------

class _Fn:
    """A runtime-like backend computing its output with ``fn``."""

    end2end, nms = False, None

    def __init__(self, fn, name="synthetic"):
        self.fn, self.path = fn, Path(name)

    def __call__(self, x):
        with torch.inference_mode():
            return self.fn(x).float()


def test_bf16_like_outputs_fail_fp32_and_pass_bf16(yolov5n, bus_jpg):
    import copy

    from yolopt.export import verify

    fused = copy.deepcopy(yolov5n).fuse()

    def perturbed(x):  # bf16-like: boxes off by a few px, scores by up to 0.05, output rounded to bf16
        y = fused(x)
        y[..., :2] += 1.5  # centres shifted
        y[..., 2:4] *= 1.03  # sizes 3% larger
        y[..., 4:] *= 0.95  # objectness and class probabilities 5% lower
        return y.bfloat16()  # 8-bit mantissa

    b = _Fn(perturbed)
    res = {p: verify(b, fused, (IMGSZ, IMGSZ), precision=p, images=[bus_jpg], raise_on_fail=False)
           for p in ("fp32", "fp16", "bf16")}
    assert not res["fp32"].passed and res["fp32"].box_ratio > 10 and res["fp32"].max_score_diff > 0.01
    assert not res["fp16"].passed and res["fp16"].max_score_diff > 0.03  # beyond fp16's score limit too
    assert res["bf16"].passed, res["bf16"].summary()
    assert res["bf16"].precision == "bf16" and res["bf16"].max_box_diff > 1.5 and res["bf16"].detections_torch > 20
    assert res["bf16"].agreement > 0.9
    assert "bf16: boxes max |diff|" in res["bf16"].summary() and "\n" not in res["bf16"].summary()

    # the real thing: the model silently running in bf16 instead of fp32
    bm = copy.deepcopy(fused).to(torch.bfloat16)
    real = _Fn(lambda x: bm(x.bfloat16()))
    r32 = verify(real, fused, (IMGSZ, IMGSZ), precision="fp32", raise_on_fail=False)
    assert not r32.passed and r32.max_box_diff > 1 and r32.max_score_diff > 0.01
    assert verify(real, fused, (IMGSZ, IMGSZ), precision="bf16", raise_on_fail=False).passed


class _Fixed(torch.nn.Module):
    """A 'model' whose raw output is one fixed box (xywh, input pixels) with a confident class 0."""

    stride = torch.tensor([8.0, 16.0, 32.0])

    def __init__(self, xywh):
        super().__init__()
        self.row = torch.tensor([*xywh, 0.9, 0.95] + [0.01] * 79)

    def forward(self, x):
        return self.row.expand(x.shape[0], 1, -1).clone()


def test_box_limit_is_relative_and_absolute():
    from yolopt.errors import ExportError
    from yolopt.export import verify

    ref = _Fixed([800.0, 400.0, 600.0, 300.0])  # an 800-px box (x2 at 1100)
    imgsz = (1152, 1152)
    for d, passed in [(0.02, True), (0.1, True), (0.2, False)]:  # fp32 limit at 800 px: 0.05 + 1e-4 x 800 = 0.13
        moved = _Fixed([800.0 + d, 400.0, 600.0, 300.0])
        v = verify(_Fn(moved), ref, imgsz, precision="fp32", raise_on_fail=False)
        assert v.passed is passed and v.max_box_diff == pytest.approx(d, abs=1e-4)
        assert v.box_ratio == pytest.approx(d / (0.05 + 1e-4 * 800), rel=1e-3)
    # the same 0.1 px on a small coordinate (10 px: limit 0.051) fails
    small, small_moved = _Fixed([10.0, 400.0, 16.0, 300.0]), _Fixed([10.1, 400.0, 16.0, 300.0])
    v = verify(_Fn(small_moved), small, imgsz, precision="fp32", raise_on_fail=False)
    assert not v.passed and v.agreement == 1.0 and v.max_score_diff == 0
    with pytest.raises(ExportError, match="no verification tolerance for precision 'bf17'"):
        verify(_Fn(small), small, imgsz, precision="bf17")


def test_new_precision_plugs_in_with_its_exporter(registry, tmp_path, yolov5n, monkeypatch):
    """An int8 exporter registered later: int8 becomes that format's business (the others name the formats that
    export it); verification needs its limits. Without any int8 exporter, int8 is not an export precision."""
    from yolopt.errors import ExportError
    from yolopt.export import TOLERANCE, ExportSpec, export

    for k in [k for k, e in registry.items() if "int8" in e.precisions]:  # litert
        del registry[k]
    with pytest.raises(ExportError, match="quantization is a separate step"):
        export(yolov5n, ExportSpec("onnx", precision="int8", out=tmp_path / "q.onnx"))
    _register_plain_onnx("onnx-int8", precisions=("int8",))
    with pytest.raises(ExportError, match=r"^precision int8: format onnx exports fp32 and fp16 \(format onnx-int8 "
                                          r"exports int8; or quantize the artifact: yolopt quantize\)$"):
        export(yolov5n, ExportSpec("onnx", precision="int8", out=tmp_path / "q.onnx"))
    monkeypatch.delitem(TOLERANCE, "int8")
    with pytest.raises(ExportError, match="no verification tolerance for precision 'int8'"):
        export(yolov5n, ExportSpec("onnx-int8", precision="int8", out=tmp_path / "q.onnx"))
    assert list(tmp_path.iterdir()) == []
