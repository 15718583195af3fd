"""Explicit precision on every CPU, the machine block, and the seams compression builds on
(runtime.open, TorchBackend.from_model, scoped threads, clone, preprocess/postprocess, evaluate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli

pytest.importorskip("onnxruntime")


# ------------------------------------------------------------------------------- precision


def test_fp32_ir_compiles_at_f32_on_any_cpu(deploy_artifacts):
    """An FP32 IR must run at f32 even on CPUs whose OpenVINO default would be bf16."""
    pytest.importorskip("openvino")
    from yolopt import runtime

    b = runtime.open(deploy_artifacts["openvino"].path)
    assert b.precision == "fp32" and b.artifact_precision == "fp32"
    assert b.compiled_precision == "f32"  # what the compiled model itself reports
    assert b.describe()["compiled_precision"] == "f32"


def test_openvino_is_always_given_an_explicit_precision_hint(deploy_artifacts, monkeypatch):
    """The fix, checkable on an AVX2-only CPU too: the hint is passed, never left to the plugin's default."""
    pytest.importorskip("openvino")
    from yolopt.runtime import backends

    seen = []
    real = backends.compile_openvino

    def spy(model, device="CPU", config=None, core=None):
        seen.append(dict(config or {}))
        return real(model, device, config, core=core)

    monkeypatch.setattr(backends, "compile_openvino", spy)
    b = backends.OpenVINOBackend(deploy_artifacts["openvino"].path, threads=1)
    assert seen and seen[-1]["INFERENCE_PRECISION_HINT"] == "f32"
    b.clone()  # a second stream gets the same explicit hint
    assert len(seen) == 2 and seen[-1]["INFERENCE_PRECISION_HINT"] == "f32"


def _ov_caps() -> set[str]:
    import openvino as ov

    return set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def test_bf16_runs_only_when_asked_and_supported(deploy_artifacts):
    pytest.importorskip("openvino")
    from yolopt import runtime
    from yolopt.machine import has_native_bf16

    if not has_native_bf16() or "BF16" not in _ov_caps():
        pytest.skip("this CPU has no AVX-512 BF16 / AMX-BF16: bf16 cannot be requested here (refusal tested below)")
    b = runtime.open(deploy_artifacts["openvino"].path, precision="bf16")
    assert b.precision == "bf16" and b.compiled_precision == "bf16"
    x = torch.rand(1, 3, 256, 256)
    y32 = runtime.open(deploy_artifacts["openvino"].path)(x)
    assert (b(x) - y32).abs().max() > 0  # really a different precision, reported as such


def test_bf16_on_a_cpu_or_runtime_without_it_is_one_clear_line(deploy_artifacts, tmp_path, bus_jpg):
    from yolopt import runtime
    from yolopt.errors import RuntimeBackendError
    from yolopt.machine import has_native_bf16

    onnx = deploy_artifacts["onnx"].path
    with pytest.raises(RuntimeBackendError, match="bf16 is not available with onnxruntime"):
        runtime.open(onnx, precision="bf16")
    r = run_cli("predict", onnx, "--precision", "bf16", bus_jpg, "--out", tmp_path / "o")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "onnxruntime" in r.stderr and str(onnx) in r.stderr and not (tmp_path / "o").exists()
    if not has_native_bf16():
        pytest.importorskip("openvino")
        xml = deploy_artifacts["openvino"].path
        with pytest.raises(RuntimeBackendError, match="no AVX-512 BF16"):
            runtime.open(xml, precision="bf16")
        r = run_cli("bench", xml, "--precision", "bf16", "--iters", "1")
        assert r.returncode == 1 and r.stderr.strip().startswith("yolopt: error:") and "bf16" in r.stderr
        assert r.stderr.count("\n") == 1


def test_unknown_precision_is_refused(deploy_artifacts):
    from yolopt import runtime
    from yolopt.errors import RuntimeBackendError

    with pytest.raises(RuntimeBackendError, match="unknown precision"):
        runtime.open(deploy_artifacts["onnx"].path, precision="fp8")
    r = run_cli("val", deploy_artifacts["onnx"].path, "--data", "x.yaml", "--precision", "fp8")
    assert r.returncode == 2 and "--precision" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(RuntimeBackendError, match="INT8"):
        runtime.open(deploy_artifacts["openvino"].path, precision="int8")


def test_old_half_metadata_still_reads_as_fp16():
    from yolopt.runtime.backends import artifact_precision

    assert artifact_precision({"half": True}) == "fp16"
    assert artifact_precision({"half": False}) == "fp32"
    assert artifact_precision({"precision": "int8"}) == "int8"


# ------------------------------------------------------------------------------- machine block


def test_machine_block_names_cpu_isa_and_versions():
    from yolopt.machine import ISA_FLAGS, machine_info

    m = machine_info()
    assert m["cpu"] and m["logical_cpus"] >= 1
    assert set(ISA_FLAGS) == set(m["isa"]) and all(isinstance(v, bool) for v in m["isa"].values())
    flags = set(open("/proc/cpuinfo").read().split()) if __import__("os").path.exists("/proc/cpuinfo") else set()
    assert m["isa"]["avx2"] == ("avx2" in flags)
    assert m["native_bf16"] == (m["isa"]["avx512_bf16"] or m["isa"]["amx_bf16"])
    assert {"torch", "onnxruntime", "numpy", "yolopt"} <= set(m["versions"])


def _coco_subset(coco128_yaml, root, n: int = 8):
    """The first ``n`` coco128 images and labels in a dataset of their own (the record, not the mAP, is tested)."""
    import shutil

    src = coco128_yaml.parent
    for kind in ("images", "labels"):
        (root / kind / "train2017").mkdir(parents=True)
    for im in sorted((src / "images" / "train2017").glob("*.jpg"))[:n]:
        shutil.copy(im, root / "images" / "train2017")
        lb = src / "labels" / "train2017" / (im.stem + ".txt")
        if lb.exists():
            shutil.copy(lb, root / "labels" / "train2017")
    (root / "d.yaml").write_text(coco128_yaml.read_text())
    return root / "d.yaml"


def test_val_json_records_machine_mode_and_precision(yolov5n_pt, coco128_yaml, tmp_path):
    out = tmp_path / "v.json"
    data = _coco_subset(coco128_yaml, tmp_path / "mini")
    r = run_cli("val", yolov5n_pt, "--data", data, "--imgsz", "160", "--batch", "16", "--json", out)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["machine"]["cpu"] and "avx512_bf16" in d["machine"]["isa"]
    assert d["mode"] == "rect" and d["inference_precision"] == "fp32" and d["backend"] == "torch"


# ------------------------------------------------------------------------------- runtime seams


def test_from_model_scoped_threads_and_clone(yolov5n):
    from yolopt import runtime

    before = torch.get_num_threads()
    seen = []
    h = yolov5n.model[0].register_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))
    try:
        want = 1 if before != 1 else 2
        b = runtime.open(yolov5n, threads=want)
        assert b.name == "torch" and b.model is yolov5n  # used as is: no copy, no fusion
        assert torch.get_num_threads() == before  # constructing it changed nothing process-wide
        b(torch.zeros(1, 3, 64, 64))
        assert seen == [want] and torch.get_num_threads() == before  # set only while it ran
        c = b.clone()
        assert c.model is not yolov5n and c.threads == want and c.device == b.device and c.precision == "fp32"
    finally:
        h.remove()


def test_onnx_clone_keeps_threads_and_providers(deploy_artifacts):
    from yolopt import runtime

    b = runtime.open(deploy_artifacts["onnx_dyn"].path, threads=1)
    c = b.clone()
    assert c.session is not b.session and c.threads == 1 and c.providers == b.providers
    assert runtime.open(deploy_artifacts["onnx_dyn"].path, workers=2).replicas[1].threads >= 1


def test_resolve_imgsz_fixed_and_dynamic(deploy_artifacts, yolov5n):
    from yolopt import runtime

    assert runtime.open(deploy_artifacts["onnx"].path).resolve_imgsz(640) == 256  # the artifact's own size
    assert runtime.open(deploy_artifacts["onnx_dyn"].path).resolve_imgsz(100) == 128  # rounded up to the stride
    assert runtime.open(yolov5n).letterbox_mode == "rect"
    assert runtime.open(deploy_artifacts["onnx"].path).letterbox_mode == "square"


# ------------------------------------------------------------------------------- pipeline seam


def test_preprocess_postprocess_round_trip():
    """A box drawn on an image comes back in original pixels through both letterbox modes."""
    from yolopt.data.preprocess import preprocess
    from yolopt.ops.postprocess import NMSOptions, postprocess

    ims = [np.full((300, 500, 3), 30, np.uint8), np.full((480, 360, 3), 30, np.uint8)]
    box = np.array([100.0, 50.0, 220.0, 170.0])  # xyxy in original pixels of each image
    for mode, batch in (("square", ims), ("rect", ims[:1]), ("rect", ims[1:])):
        x, metas = preprocess(batch, 320, mode=mode)
        assert x.shape[0] == len(batch) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
        assert x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0
        if mode == "square":
            assert tuple(x.shape[2:]) == (320, 320)
        else:  # upstream val's rule: the image's aspect ratio, plus half a stride of padding
            h0, w0 = batch[0].shape[:2]
            assert (x.shape[2] < x.shape[3]) == (h0 < w0) and x.shape[2] != x.shape[3]
        preds = []
        for m in metas:  # the box as the network would output it: xywh in input pixels, obj 0.9, class 1
            x1, y1, x2, y2 = box * m.gain + np.array([m.pad[0], m.pad[1]] * 2)
            row = torch.zeros(1, 7)
            row[0, :4] = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
            row[0, 4], row[0, 6] = 0.9, 1.0
            preds.append(row)
        dets = postprocess(torch.stack(preds), metas, NMSOptions(conf=0.25))
        for d in dets:
            assert d.shape == (1, 6) and int(d[0, 5]) == 1
            np.testing.assert_allclose(d[0, :4].numpy(), box, atol=0.6)


def test_end2end_rows_split_and_filter():
    from yolopt.ops.postprocess import NMSOptions, postprocess, split_end2end
    from yolopt.ops.postprocess import ImageMeta

    rows = torch.tensor([[0, 10, 10, 20, 20, 0.9, 2], [1, 5, 5, 9, 9, 0.3, 0], [0, 1, 1, 4, 4, 0.2, 1]])
    parts = split_end2end(rows, 2)
    assert [len(p) for p in parts] == [2, 1] and parts[0].shape[1] == 6
    meta = ImageMeta((64, 64), (64, 64), 1.0, (0.0, 0.0))
    kept = postprocess(rows, [meta, meta], NMSOptions(conf=0.25), end2end=True)
    assert [len(k) for k in kept] == [1, 1]  # the 0.2 row is below --conf


# ------------------------------------------------------------------------------- evaluate seam


def test_evaluate_in_memory_quick_and_mode_follows_artifact(yolov5n, coco128_yaml, deploy_artifacts):
    from yolopt.errors import DatasetError
    from yolopt.evaluate import evaluate

    m = evaluate(yolov5n, coco128_yaml, imgsz=256, max_images=8, progress=False)
    assert m.images == 8 and m.mode == "rect" and 0 < m.map50 <= 1 and m.backend == "torch"
    a = evaluate(deploy_artifacts["onnx"].path, coco128_yaml, imgsz=640, max_images=8, progress=False)
    assert a.mode == "square" and a.imgsz == 256  # fixed artifact: its own size, square letterbox
    sq = evaluate(yolov5n, coco128_yaml, imgsz=256, max_images=8, progress=False, mode="square")
    assert sq.mode == "square" and abs(sq.map50_95 - a.map50_95) < 0.02  # like with like: same numbers
    with pytest.raises(DatasetError, match="rect"):
        evaluate(deploy_artifacts["onnx"].path, coco128_yaml, mode="rect", max_images=2, progress=False)
    assert not yolov5n.training


def test_info_reports_precision_for_weights_and_artifacts(yolov5n_pt, deploy_artifacts):
    r = run_cli("info", yolov5n_pt, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no library warnings leak into the output
    d = json.loads(r.stdout)
    assert d["precision"] == "fp32" and d["nc"] == 80 and d["params_fused"] == 1_867_405
    for key, backend in (("onnx", "onnxruntime"), ("openvino", "openvino"), ("torchscript", "torchscript")):
        if key == "openvino":
            pytest.importorskip("openvino")
        r = run_cli("info", deploy_artifacts[key].path, "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["backend"] == backend and d["precision"] == "fp32" and d["input_shape"] == [1, 3, 256, 256]
        assert d["names"][0] == "person" and d["size_mb"] > 1
        if key == "openvino":
            assert d["compiled_precision"] == "f32"
