"""INT8 quantization (ONNX Runtime QDQ): calibration, validation guard, sensitivity, mixed precision.

Runs on yolopt's own synthetic set and the shipped synthetic yolov5n (160 px), so it needs no ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")

from conftest import run_cli  # noqa: E402

from yolopt.commands.demo import SHIPPED_BASE, SYNTH  # noqa: E402
from yolopt.quantize import CalibrationError, CalibrationSet, QuantizeError, QuantizeSpec, quantize  # noqa: E402
from yolopt.quantize import onnx_qdq as Q  # noqa: E402

IMGSZ = SYNTH["imgsz"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from yolopt.data.synth import generate

    return generate(tmp_path_factory.mktemp("qsynth") / "d", images=60, classes=SYNTH["classes"], imgsz=IMGSZ,
                    seed=SYNTH["seed"])


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory) -> Path:
    from yolopt.export import ExportSpec, export

    out = tmp_path_factory.mktemp("qfp32") / "m.onnx"
    return export(str(SHIPPED_BASE), ExportSpec(imgsz=IMGSZ, dynamic=True, verify=False, out=out)).path


@pytest.fixture(scope="module")
def quantized(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "m_int8.onnx"
    res = quantize(str(SHIPPED_BASE), QuantizeSpec(data=str(synth), imgsz=IMGSZ, calib=8, latency=False, out=out,
                                                   progress=False))
    return res


def _calib(synth, n=8):
    return CalibrationSet.from_data(synth, IMGSZ, n=n)


def test_int8_artifact_reloads_as_int8_takes_pixels_and_keeps_its_map(quantized):
    from yolopt.runtime import open as open_backend

    rep = quantized.report
    b = open_backend(str(quantized.path))
    assert b.precision == "int8" and b.artifact_precision == "int8" and b.uint8_input
    assert rep.fp32.map50 > 0.5  # a model that detects, so "kept its mAP" means something
    assert rep.int8.map50 >= rep.fp32.map50 - 0.05, rep.int8
    proto = onnx.load(str(quantized.path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DequantizeLinear") > 50  # really quantized
    # the decode stays float: no Q/DQ between the Detect convs' outputs and the graph output
    decode = [n for n in proto.graph.node if n.name.startswith(Q.detect_prefix(proto)) and n.op_type == "Concat"]
    producers = {o: n for n in proto.graph.node for o in n.output}
    for n in decode:
        assert all(producers[i].op_type != "DequantizeLinear" for i in n.input if i in producers)
    # uint8 pixels and their float [0, 1] form give the same output
    x = _random_input()
    assert np.array_equal(b(x).numpy(), b((x * 255).round().astype(np.uint8)).numpy())
    md = quantized.path.with_suffix(".md").read_text()
    saved = json.loads(quantized.path.with_suffix(".json").read_text())
    assert "mAP50-95" in md and saved["int8"] and saved["schema_version"] == 1
    assert list(saved) == list(rep.to_dict()) and saved["int8"] == rep.int8.to_dict()  # the JSON is the typed report


def _random_input() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (1, 3, IMGSZ, IMGSZ)) / 255.0).astype(np.float32)


def test_quantizing_the_decode_loses_the_detections_and_nothing_is_written(synth, tmp_path):
    out = tmp_path / "naive.onnx"
    with pytest.raises(QuantizeError, match="lost its detections"):
        quantize(str(SHIPPED_BASE), QuantizeSpec(data=str(synth), imgsz=IMGSZ, calib=16, latency=False, out=out,
                                                 quantize_decode=True, progress=False))
    assert list(tmp_path.iterdir()) == []  # no artifact, no report, no temp folder


def test_broken_calibration_is_one_clear_error(synth, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n")
    broken = tmp_path / "imgs" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"not a jpeg at all")
    tiny = tmp_path / "tiny" / "tiny.png"
    tiny.parent.mkdir()
    import cv2

    cv2.imwrite(str(tiny), np.zeros((4, 4, 3), np.uint8))
    for src, msg in [(empty, "no images"), (notes, "not an image file"), (broken.parent, "cannot be decoded"),
                     (tiny.parent, "too small")]:
        with pytest.raises(CalibrationError, match=msg):
            CalibrationSet.from_images(str(src), IMGSZ).check()
    out = tmp_path / "q.onnx"
    r = run_cli("quantize", str(SHIPPED_BASE), "--images", str(broken.parent), "--imgsz", str(IMGSZ), "--out", str(out))
    assert r.returncode != 0 and "broken.jpg: cannot be decoded" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    r = run_cli("quantize", str(SHIPPED_BASE), "--data", str(synth), "--calib", "0")
    assert r.returncode != 0 and "--calib" in r.stderr


def test_cli_refuses_artifacts_and_budgets_without_data(fp32_onnx, synth, tmp_path):
    r = run_cli("quantize", str(fp32_onnx), "--data", str(synth))
    assert r.returncode != 0 and "not an exported artifact" in r.stderr
    r = run_cli("quantize", str(SHIPPED_BASE), "--images", str(synth.parent / "images" / "val"),
                "--max-map-drop", "0.01")
    assert r.returncode != 0 and "needs a labelled dataset" in r.stderr and "(--max-map-drop, --data)" in r.stderr


def test_sensitivity_ranking_is_deterministic(synth, fp32_onnx):
    from yolopt.quantize import sensitivity as S

    proto = onnx.load(str(fp32_onnx))
    runs = []
    for _ in range(2):  # each run builds and runs ~60 one-layer models: 2 images are enough to rank them
        cal = _calib(synth, 4)
        ranges = Q.calibrate(fp32_onnx, cal.batches())
        runs.append(S.analyse(proto, ranges, cal.arrays(2), threads=1, progress=False))
    a, b = runs
    assert a.ranking() == b.ranking() and len(a.ranking()) == len(Q.layer_groups(proto))
    assert [x.sqnr_db for x in a.layers] == [x.sqnr_db for x in b.layers]
    assert a.layers[0].sqnr_db <= a.layers[-1].sqnr_db  # most sensitive first
    assert a.full_int8_sqnr_db < a.layers[-1].sqnr_db  # all layers together err more than the mildest alone


def test_float_layers_stay_float_and_all_float_is_the_fp32_graph(synth, fp32_onnx):
    proto = onnx.load(str(fp32_onnx))
    cal = _calib(synth, 4)
    ranges = Q.calibrate(fp32_onnx, cal.batches())
    groups = Q.layer_groups(proto)
    keep = ["/model.0", "/model.2/cv1"]
    m = Q.build_qdq(proto, ranges, keep)
    producers = {o: n for n in m.graph.node for o in n.output}
    inits = {t.name for t in m.graph.initializer}
    for g in keep:
        conv = next(n for n in m.graph.node if n.name == groups[g][0])
        w = conv.input[1]  # a float layer reads its float weight, not a dequantized one
        assert w in inits and w not in producers
    other = next(n for n in m.graph.node if n.name == groups["/model.1"][0])
    assert producers[other.input[1]].op_type == "DequantizeLinear"
    everything_float = Q.build_qdq(proto, ranges, list(groups))  # an empty node list must not mean "all"
    assert not [n for n in everything_float.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_quantizing_a_pruned_model_works(synth, tmp_path):
    import yolopt
    from yolopt.compress import PruneSpec, prune

    model = yolopt.load(SHIPPED_BASE).float()
    res = prune(model, PruneSpec(ratio=0.1, imgsz=IMGSZ))
    assert res.model.num_params() < model.num_params()
    pruned = tmp_path / "pruned.safetensors"
    yolopt.save(res.model, pruned, imgsz=IMGSZ)
    out = tmp_path / "pruned_int8.onnx"
    q = quantize(str(pruned), QuantizeSpec(data=str(synth), imgsz=IMGSZ, calib=8, val_images=6, latency=False,
                                           speed_aware=False, out=out, progress=False))
    assert q.path == out and out.exists()
    assert q.report.int8.map50 > 0.5 * q.report.fp32.map50 > 0
    from yolopt.runtime import open as open_backend

    assert open_backend(str(out)).precision == "int8"


def test_openvino_int8_ir_through_nncf_reloads_as_int8(synth, tmp_path):
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    from yolopt.runtime import open as open_backend

    out = tmp_path / "ov" / "m.xml"
    res = quantize(str(SHIPPED_BASE), QuantizeSpec(data=str(synth), backend="openvino", imgsz=IMGSZ, calib=8,
                                                   val_images=6, latency=False, out=out, progress=False))
    assert res.path == out and out.exists() and out.with_suffix(".bin").exists()
    b = open_backend(str(out))
    assert b.name == "openvino" and b.precision == "int8" and b.artifact_precision == "int8"
    rep = res.report
    assert rep.int8.map50 >= rep.fp32.map50 - 0.05, rep.int8
    import openvino as ov

    ops = {op.get_type_name() for op in ov.Core().read_model(str(out)).get_ops()}
    assert "FakeQuantize" in ops  # really quantized
    from yolopt.quantize.openvino_int8 import float_convs

    assert float_convs(ov.Core().read_model(str(out))) == []  # every convolution, the Detect ones too
    assert "| fp32 ONNX | INT8 IR |" in out.with_suffix(".md").read_text()  # the report names the IR as such
    with pytest.raises(QuantizeError, match="built for onnxruntime so far"):
        quantize(str(SHIPPED_BASE), QuantizeSpec(data=str(synth), backend="openvino", sensitivity=True))


def test_openvino_accuracy_control_wiring(synth, tmp_path):
    """--backend openvino --max-map-drop through quantize(): a budget the plain nncf model meets is met with no
    operation put back in float; the report says so, and the artifact is written."""
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    out = tmp_path / "ac" / "m.xml"
    res = quantize(str(SHIPPED_BASE), QuantizeSpec(data=str(synth), backend="openvino", imgsz=IMGSZ, calib=8,
                                                   val_images=8, max_map_drop=0.5, latency=False, out=out,
                                                   progress=False))
    rep = res.report
    assert out.exists() and rep.int8.images == 8 and rep.map50_95_drop <= 0.5
    assert rep.float_layers == [] and rep.layers >= 60
    assert "accuracy control" in rep.calibration.method
    assert json.loads(out.with_suffix(".json").read_text())["spec"]["max_map_drop"] == 0.5


def test_openvino_accuracy_control_puts_operations_back_in_float(fp32_onnx, synth, tmp_path, monkeypatch):
    """nncf's accuracy control with yolopt's backend wrapper: the metric is minus the relative deviation of
    the raw outputs (boxes, objectness) from fp32 on a val image; a budget of a tenth of the plain INT8
    deviation makes it revert the operations that matter (at most 3 groups here, to keep the test short):
    the deviation falls, and float_convs finds the reverted convolutions in the IR."""
    pytest.importorskip("nncf")
    ov = pytest.importorskip("openvino")
    from yolopt.quantize import onnx_qdq as Q
    from yolopt.quantize import openvino_int8
    from yolopt.quantize.openvino_int8 import float_convs, quantize_ir

    from yolopt.runtime.altstack import current_sigaltstack

    monkeypatch.setattr(openvino_int8, "MAX_REVERTS", 3)
    # nncf compiles one candidate per group it ranks (~50 here, a second each): rank only the last 12 it lists
    from nncf.quantization.algorithms.accuracy_control.ranker import Ranker

    find = Ranker.find_groups_of_quantizers_to_rank
    monkeypatch.setattr(Ranker, "find_groups_of_quantizers_to_rank", lambda self, g: find(self, g)[-12:])
    stack = current_sigaltstack()  # nncf compiles models: the thread's signal stack must survive it
    from yolopt.runtime import open as open_backend

    proto = onnx.load(str(fp32_onnx))
    meta = {k: json.loads(v) for k, v in Q.read_metadata(proto).items()}
    x, x2 = CalibrationSet.from_data(str(synth), IMGSZ, 2, split="val").arrays()
    ref = open_backend(str(fp32_onnx))(x).numpy()[..., :5]

    def metric(backend, n):
        return -float(np.abs(backend(x).numpy()[..., :5] - ref).mean() / np.abs(ref).mean())

    plain = quantize_ir(fp32_onnx, [x], meta, tmp_path / "plain.xml", Q.decode_nodes(proto))
    dev = -metric(open_backend(str(plain)), 1)
    assert dev > 1e-3  # INT8 changes the outputs
    ac = quantize_ir(fp32_onnx, [x], meta, tmp_path / "ac.xml", Q.decode_nodes(proto),
                     control=([x, x2], metric, dev / 10))
    assert current_sigaltstack() == stack
    assert -metric(open_backend(str(ac)), 1) < dev
    reverted = float_convs(ov.Core().read_model(str(ac)))
    assert 0 < len(reverted) < 60, reverted


def test_pipeline_feeds_pixels_to_a_graph_that_takes_them(quantized, synth):
    """predict and the end-to-end bench letterbox straight to uint8 for a uint8-input graph: same detections
    as feeding the float input, and a fixed batch padded with pixels, not floats."""
    import yolopt
    from yolopt.bench import EndToEnd
    from yolopt.data.preprocess import preprocess
    from yolopt.runtime import open as open_backend

    b = open_backend(str(quantized.path))
    img = sorted((synth.parent / "images" / "val").iterdir())[0]
    from yolopt.data.images import read_image

    im = read_image(img)
    xf, _ = preprocess([im], IMGSZ, mode="square")
    xp, _ = preprocess([im], IMGSZ, mode="square", pixels=True)
    assert xp.dtype.is_floating_point is False and np.array_equal(b(xf).numpy(), b(xp).numpy())
    step = EndToEnd(b, [str(img)], IMGSZ, batch=1)
    step()
    dets = yolopt.predict(str(quantized.path), str(img), imgsz=IMGSZ, letterbox="square")  # EndToEnd's letterbox
    assert len(step.last[0]) == len(dets[0].xyxy) > 0
    assert np.allclose(np.asarray(step.last[0])[:, :4], dets[0].xyxy, atol=1e-3)
