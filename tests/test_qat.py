"""Quantization-aware training: the fake-quantized torch model simulates the INT8 graph ONNX Runtime
runs, leaves the model's weights and keys alone, and ``quantize(..., qat=N)`` writes an INT8 artifact
with PTQ on the same graph beside it for comparison.

Runs on the synthetic set and the shipped synthetic model (160 px): no ../shared."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from conftest import run_cli  # noqa: E402

from yolopt.commands.demo import SHIPPED_BASE, SYNTH  # noqa: E402
from yolopt.quantize import CalibrationSet, QuantizeError, QuantizeSpec, quantize  # noqa: E402
from yolopt.quantize import onnx_qdq as Q  # noqa: E402
from yolopt.quantize.qat import calibrate, fake_quant_weight, instrument, qparams  # noqa: E402

IMGSZ = SYNTH["imgsz"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from yolopt.data.synth import generate

    return generate(tmp_path_factory.mktemp("qatsynth") / "d", images=30, classes=SYNTH["classes"], imgsz=IMGSZ,
                    seed=SYNTH["seed"])


@pytest.fixture(scope="module")
def fused():
    import yolopt

    return yolopt.load(str(SHIPPED_BASE)).float().eval().fuse()


def test_fake_quant_arithmetic_is_onnxruntimes():
    # uint8 activation: range widened to hold 0; zero point = round(-lo / scale)
    assert qparams(0.5, 2.0) == pytest.approx((2.0 / 255, 0))
    s, zp = qparams(-1.0, 3.0)
    assert s == pytest.approx(4 / 255) and zp == round(1 / s)
    # 7-bit symmetric weights (reduce_range): 129 levels in [-64, 64] * max|w| / 64 per output channel
    w = torch.randn(4, 3, 3, 3)
    q = fake_quant_weight(w, 7)
    step = w.abs().amax(dim=(1, 2, 3)) / 64
    levels = q / step.view(-1, 1, 1, 1)
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.abs().max() <= 64 + 1e-3 and (levels.abs().amax(dim=(1, 2, 3)) > 63.99).all()
    assert (q - w).abs().max() <= step.max() / 2 + 1e-6


def _sim_key(onnx_node_name: str, op: str) -> str | None:
    """The instrumentation point of an ONNX node: ``/model.2/m/m.0/cv1/conv/Conv`` -> ``model.2.m.0.cv1.conv:out``."""
    name = re.sub(r"/(\w+)/\1\.(\d+)", r"/\1.\2", onnx_node_name).strip("/")
    mod = ".".join(name.split("/")[:-1])
    kind = {"Conv": "out", "Sigmoid": "sigmoid", "Mul": "mul", "Add": "add", "Concat": "concat"}.get(op)
    return f"{mod}:{kind}" if kind else None


def test_instrumented_model_simulates_the_int8_graph(fused, synth, tmp_path):
    """Every quantized tensor of ONNX Runtime's QDQ graph has a fake quantizer in the torch model with the
    same scale and zero point, and the fake-quantized outputs are closer to ONNX Runtime's INT8 outputs
    than the fp32 model's are."""
    import onnx

    from yolopt.export import ExportSpec, export

    cal = CalibrationSet.from_data(synth, IMGSZ, n=16)
    fp32 = export(fused, ExportSpec(imgsz=IMGSZ, dynamic=True, verify=False, out=tmp_path / "m.onnx")).path
    proto = onnx.load(str(fp32))
    ranges = Q.calibrate(fp32, cal.batches(), "minmax")
    qproto = Q.build_qdq(proto, ranges, per_channel=True, reduce_range=True)
    sim = copy.deepcopy(fused)
    ins = instrument(sim)
    calibrate(sim, ins, cal.batches())
    # the same quantization points, with the same parameters
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in qproto.graph.initializer}
    prod = {o: n for n in qproto.graph.node for o in n.output}
    matched = set()
    for node in qproto.graph.node:
        src = prod.get(node.input[0])
        if node.op_type != "QuantizeLinear" or src is None or src.op_type in ("MaxPool", "Resize"):
            continue  # MaxPool / Resize keep their input's scale: values stay on the grid, nothing to simulate
        key = _sim_key(src.name, src.op_type)
        assert key in ins.points, (src.name, key)
        s, zp = qparams(ins.points[key].lo, ins.points[key].hi)
        assert s == pytest.approx(float(inits[node.input[1]]), rel=1e-4) and zp == int(inits[node.input[2]]), key
        matched.add(key)
    assert matched == set(ins.points)
    # and the outputs follow ONNX Runtime's INT8 ones (integer rounding differs, so not bit for bit)
    sq = Q.session(qproto)
    err_sim = err_fp = 0.0
    for x in cal.arrays(6):
        feed = {sq.get_inputs()[0].name: x if sq.get_inputs()[0].type == "tensor(float)"
                else np.round(x * 255).astype(np.uint8)}
        yq = sq.run(None, feed)[0][0]
        with torch.no_grad():
            yf = fused(torch.from_numpy(x))
            ys = sim(torch.from_numpy(x))
        yf = (yf[0] if isinstance(yf, (tuple, list)) else yf)[0].numpy()
        ys = (ys[0] if isinstance(ys, (tuple, list)) else ys)[0].numpy()
        keep = yf[:, 4] > 0.05
        err_sim += float(((ys[keep] - yq[keep]) ** 2).sum())
        err_fp += float(((yf[keep] - yq[keep]) ** 2).sum())
    assert err_fp > 0
    assert err_sim < 0.75 * err_fp, (err_sim, err_fp)


def test_instrument_keeps_keys_and_strip_restores_the_float_model(fused):
    m = copy.deepcopy(fused)
    keys = list(m.state_dict())
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        ref = m(x)[0]
    ins = instrument(m)
    assert list(m.state_dict()) == keys  # the trainer saves and resumes it as any model
    calibrate(m, ins, [x.numpy()])
    with torch.no_grad():
        fq = m(x)[0]
    assert not torch.equal(fq, ref)  # quantization is on
    ema = copy.deepcopy(m)  # the trainer's EMA copy quantizes too
    with torch.no_grad():
        assert torch.allclose(ema(x)[0], fq)
    ins.strip()
    with torch.no_grad():
        assert torch.equal(m(x)[0], ref)


def test_instrument_refuses_an_unfused_model():
    import yolopt

    with pytest.raises(Exception, match="fused"):
        instrument(yolopt.load(str(SHIPPED_BASE)))


def test_quantize_with_qat_writes_int8_and_compares_with_ptq(synth, tmp_path):
    from yolopt.runtime import open as open_backend

    out = tmp_path / "q.onnx"
    # speed_aware off: it keeps float the layers it *measures* no slower, so two runs on a noisy machine
    # may pick different graphs; this test compares two runs
    spec = QuantizeSpec(data=str(synth), imgsz=IMGSZ, calib=8, val_images=4, latency=False, out=out,
                        progress=False, qat=1, qat_batch=16, speed_aware=False)
    res = quantize(str(SHIPPED_BASE), spec)
    rep = res.report
    assert open_backend(str(res.path)).precision == "int8"
    run = tmp_path / "q_qat"
    assert (run / "qat_ranges.json").is_file() and json.loads((run / "qat.json").read_text())["finished"]
    assert rep.qat.epochs == 1 and rep.ptq.map50 > 0.5 and rep.int8.map50 > 0.5
    assert rep.qat.map50_95_gain_over_ptq == pytest.approx(rep.int8.map50_95 - rep.ptq.map50_95, abs=1e-4)
    # the tuned weights moved (QAT trained), and the float model stays the baseline
    assert rep.fp32.map50_95 > 0
    # the markdown report puts PTQ of the same graph beside QAT, with the gain
    md = res.path.with_suffix(".md").read_text()
    assert "PTQ, same graph" in md and f"{rep.ptq.map50_95:.4f}" in md
    assert f"mAP50-95 **{rep.qat.map50_95_gain_over_ptq:+.4f}**" in md
    best = run / json.loads((run / "qat.json").read_text())["finished"]
    mtime = best.stat().st_mtime_ns
    # the same command again reuses the finished QAT run instead of training again
    res2 = quantize(str(SHIPPED_BASE), spec)
    assert best.stat().st_mtime_ns == mtime
    assert res2.report.qat.fp32_tuned.map50_95 == pytest.approx(rep.qat.fp32_tuned.map50_95, abs=1e-6)
    assert res2.report.float_layers == rep.float_layers
    assert res2.report.int8.map50_95 == pytest.approx(rep.int8.map50_95, abs=1e-6)
    # a run folder with other settings is refused, nothing overwritten
    with pytest.raises(Exception, match="other settings"):
        quantize(str(SHIPPED_BASE), QuantizeSpec(**{**spec.__dict__, "qat": 2, "out": tmp_path / "other.onnx",
                                                  "qat_dir": run}))
    assert best.stat().st_mtime_ns == mtime


def test_qat_bad_input(synth, tmp_path):
    with pytest.raises(QuantizeError, match="quantization-aware training needs a labelled dataset") as e:
        quantize(str(SHIPPED_BASE), QuantizeSpec(images=[str(synth.parent / "images")], imgsz=IMGSZ, qat=1,
                                                 out=tmp_path / "x.onnx"))
    assert e.value.fields == ("qat", "data", "backend")  # the CLI names their flags
    r = run_cli("quantize", str(SHIPPED_BASE), "--data", str(synth), "--qat", "1", "--backend", "openvino",
                "--out", str(tmp_path / "x.xml"))
    assert r.returncode != 0 and "--qat" in r.stderr and not (tmp_path / "x.xml").exists()
    r = run_cli("quantize", str(SHIPPED_BASE), "--data", str(synth), "--qat", "0")
    assert r.returncode != 0 and "--qat" in r.stderr


def test_a_resumed_qat_run_keeps_its_quantization_grid(fused, synth, tmp_path):
    """The ranges are calibrated once and saved; a resumed run (after kill -9) reads them back instead of
    calibrating again on weights that have moved."""
    from types import SimpleNamespace

    from yolopt.quantize.qat import RANGES, QATCallback

    cal = CalibrationSet.from_data(synth, IMGSZ, n=4)
    first = QATCallback(cal)
    first.prepare_model(SimpleNamespace(out=tmp_path, resuming=False), copy.deepcopy(fused))
    saved = json.loads((tmp_path / RANGES).read_text())["ranges"]
    assert saved == first.ins.ranges() and any(hi > 0 for _, hi in saved.values())
    moved = copy.deepcopy(fused)
    with torch.no_grad():
        for p in moved.parameters():
            p.mul_(1.5)  # the weights a resumed run continues from differ from the start's
    again = QATCallback(cal)
    again.prepare_model(SimpleNamespace(out=tmp_path, resuming=True), moved)
    assert again.ins.ranges() == saved and not any(q.observing for q in again.ins.points.values())
    fresh = QATCallback(cal)
    fresh.prepare_model(SimpleNamespace(out=tmp_path / "new", resuming=False), copy.deepcopy(moved))
    assert fresh.ins.ranges() != saved  # calibrating the moved weights would give another grid


def test_a_qat_run_killed_before_its_first_checkpoint_starts_again(fused, synth, tmp_path):
    """Same settings, no checkpoint yet (killed during calibration or the first epoch): the folder is ours and
    holds nothing worth keeping, so the run starts again instead of refusing."""
    from yolopt.quantize.qat import RANGES, QATSpec, qat_finetune, run_settings

    cal = CalibrationSet.from_data(synth, 64, n=4)  # the run folder's life is the point: 64 px, not 160
    spec = QATSpec(data=str(synth), epochs=1, imgsz=64, batch=16, out=tmp_path / "run", progress=False)
    spec.out.mkdir()
    (spec.out / "qat.json").write_text(json.dumps(run_settings(spec, cal)))  # what a killed start leaves
    (spec.out / RANGES).write_text("{}")
    tuned = qat_finetune(fused, spec, cal)
    assert tuned.is_fused and json.loads((spec.out / "qat.json").read_text())["finished"]
    assert json.loads((spec.out / RANGES).read_text())["ranges"]  # calibrated again, not the stale file
