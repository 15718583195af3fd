"""yolopt profile: per-layer table, deployment view, pipeline stages, roofline, findings, CLI."""

from __future__ import annotations

import contextlib
import copy
import json

import cv2
import pytest
import torch
from conftest import run_cli
from torch.utils.flop_counter import FlopCounterMode

from yolopt.errors import YoloptError
from yolopt.models import DetectionModel, builtin_config
from yolopt.profile import ProfileSpec, profile_model
from yolopt.profile.findings import find_bottlenecks
from yolopt.profile.layers import analyse_layers, central_mean, time_layers
from yolopt.profile.roofline import measure_machine
from yolopt.profile.runtime_layers import map_node_name


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread(one_thread):
    """Torch on one thread for this module (conftest): the models here are small, and two cores shared with other
    work lose more to spinning threads than they gain."""


@contextlib.contextmanager
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


REQUIRED_KEYS = {"params", "flops", "latency_ms", "layers", "stages_ms", "machine", "achieved_gflops"}
STAGES = {"decode", "preprocess", "inference", "nms", "postprocess"}


@pytest.fixture(scope="module")
def machine():
    m = measure_machine(threads=1, gemm_n=768, copy_mb=64, repeats=3)
    assert m["peak_gflops"] > 0.5 and m["bandwidth_gbs"] > 0.1
    assert m["ridge_flops_per_byte"] == pytest.approx(m["peak_gflops"] / m["bandwidth_gbs"])
    return m


@pytest.fixture(scope="module")
def cli320(yolov5n_pt, bus_jpg, tmp_path_factory):
    """A full profile of yolov5n at 320 on one thread (torch with children, ONNX Runtime, pipeline on bus.jpg),
    run once through `yolopt profile --json --plot`: (CompletedProcess, JSON path, plots folder)."""
    d = tmp_path_factory.mktemp("profile")
    out, plots = d / "p.json", d / "plots"
    res = run_cli("profile", yolov5n_pt, "--imgsz", "320", "--threads", "1", "--repeats", "30", "--warmup", "5",
                  "--runtimes", "onnxruntime", "--source", bus_jpg, "--json", out, "--plot", plots)
    return res, out, plots


@pytest.fixture(scope="module")
def report320(cli320):
    """The report of that profile, as its --json wrote it."""
    res, out, _ = cli320
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text())


def test_params_and_flops_yolov5n_640(yolov5n):
    before = copy.deepcopy(yolov5n.state_dict())
    fused = copy.deepcopy(yolov5n).fuse()
    rows = analyse_layers(fused, torch.zeros(1, 3, 640, 640), children=False)
    assert len(rows) == 25 and rows[24]["type"] == "Detect"
    assert sum(r["params"] for r in rows) == 1_867_405
    assert yolov5n.num_params() == 1_872_157
    flops = sum(r["flops"] for r in rows)
    assert flops == 4_468_121_600
    assert abs(flops / 4.47e9 - 1) < 0.02
    # the first layer: 6x6 stride-2 conv 3->16 on 640x640 -> 16x320x320, 2*MACs FLOPs
    assert rows[0]["output_shape"] == [1, 16, 320, 320]
    assert rows[0]["flops"] == 2 * 16 * 320 * 320 * 3 * 6 * 6
    assert rows[0]["activation_bytes"] == 16 * 320 * 320 * 4
    assert [r["stage"] for r in rows].count("backbone") == 10 and rows[24]["stage"] == "head"
    assert rows[24]["output_shape"] == [1, 25200, 85]
    # unchanged model
    assert all(torch.equal(before[k], v) for k, v in yolov5n.state_dict().items())


def test_profile_numbers_and_consistency(report320, yolov5n):
    r = report320
    assert REQUIRED_KEYS <= set(r)
    assert r["params"] == 1_867_405 and r["params_unfused"] == 1_872_157
    assert r["flops"] == sum(x["flops"] for x in r["layers"]) == 4_468_121_600 // 4
    for row in r["layers"]:
        assert {"name", "type", "params", "flops", "latency_ms"} <= set(row)
        assert row["latency_ms"] > 0
    assert [x["name"] for x in r["layers"]] == [f"model.{i}" for i in range(25)]
    assert r["layers"][-1]["cumulative_share"] == pytest.approx(1.0)
    assert sum(x["share"] for x in r["layers"]) == pytest.approx(1.0)
    # per-layer latencies add up to the whole-model latency (torch), within 15%
    total = sum(x["latency_ms"] for x in r["layers"])
    assert total == pytest.approx(r["layer_latency_sum_ms"])
    ratios = [total / r["latency_ms"]]
    # A shared machine can spike during one measurement: re-measure (up to twice) before failing.
    for _ in range(2):
        if 0.85 <= ratios[-1] <= 1.15:
            break
        fused = copy.deepcopy(yolov5n).fuse().eval()
        with torch.inference_mode(), _one_thread():
            t = time_layers(fused, torch.zeros(1, 3, 320, 320), repeats=30, warmup=5, children=False)
        ratios.append(sum(t["layers_ms"].values()) / t["whole_ms"])
    assert 0.85 <= ratios[-1] <= 1.15, ratios
    # children of a C3 are timed and counted
    kids = {c["name"]: c for c in r["layers"][8]["children"]}
    assert {"model.8.cv1", "model.8.cv2", "model.8.cv3", "model.8.m"} <= set(kids)
    assert sum(c["params"] for c in kids.values()) == r["layers"][8]["params"]
    assert sum(c["flops"] for c in kids.values()) <= r["layers"][8]["flops"]
    # grouped totals
    st = r["groups"]["stage"]
    assert list(st) == ["backbone", "neck", "head"]
    assert sum(g["params"] for g in st.values()) == r["params"]
    assert sum(g["flops"] for g in st.values()) == r["flops"]
    assert r["groups"]["type"]["C3"]["layers"] == 8
    # roofline
    for row in r["layers"]:
        assert row["bound"] in ("compute", "memory")
        assert (row["arithmetic_intensity"] >= r["machine"]["ridge_flops_per_byte"]) == (row["bound"] == "compute")
    assert [x["bound"] for x in r["layers"] if x["type"] in ("Concat", "nn.Upsample")] == ["memory"] * 6
    assert r["achieved_gflops"] == pytest.approx(r["flops"] / r["latency_ms"] / 1e6)


def test_onnxruntime_layers_add_up(report320):
    d = report320["deploy"]["onnxruntime"]
    names = [x["name"] for x in d["layers"]]
    assert {f"model.{i}" for i in range(25)} - {"model.11", "model.12", "model.15", "model.16", "model.19", "model.22"} \
        <= set(names)
    other = sum(x["latency_ms"] for x in d["layers"] if x["name"] == "other")
    assert other < 0.1 * d["layer_sum_ms"]
    assert 0.85 <= d["sum_ratio"] <= 1.15, (d["layer_sum_ms"], d["latency_ms"])
    assert d["layer_sum_ms"] == pytest.approx(sum(x["latency_ms"] for x in d["layers"]))
    assert any(k.startswith("model.8.cv1") for k in d["modules_ms"])
    by_name = {x["name"]: x for x in d["layers"]}
    assert by_name["model.24"]["type"] == "Detect" and by_name["model.8"]["stage"] == "backbone"


def test_pipeline_stages(report320):
    r = report320
    assert set(r["stages_ms"]) == STAGES and set(r["stages_ms_eval"]) == STAGES
    assert all(v > 0 for v in r["stages_ms"].values())
    p = r["pipeline"]
    assert p["deploy"]["conf"] == 0.25 and p["eval"]["conf"] == 0.001
    assert sum(p["eval"]["shares"].values()) == pytest.approx(1.0)
    # bus.jpg: a handful of boxes at 0.25, many more at 0.001
    assert 3 <= p["deploy"]["detections"][0] <= 10
    assert p["eval"]["detections"][0] > p["deploy"]["detections"][0]
    cands = [c["candidates"] for c in p["nms_vs_candidates"]]
    assert [c["conf"] for c in p["nms_vs_candidates"]] == sorted((c["conf"] for c in p["nms_vs_candidates"]),
                                                                 reverse=True)
    assert cands == sorted(cands) and cands[-1] > 10 * max(cands[0], 1)


def test_findings(report320):
    f = report320["findings"]
    layer_f = [x for x in f if x["kind"] == "layer"]
    assert len(layer_f) == 10
    slowest = max(report320["layers"], key=lambda x: x["latency_ms"])
    assert layer_f[0]["target"] == slowest["name"] and slowest["name"] in layer_f[0]["message"]
    assert all(x["message"] and "share" in x for x in f)
    assert {"stage", "pipeline", "nms", "efficiency", "deployment"} <= {x["kind"] for x in f}
    json.dumps(f)


def test_findings_memory_bound_ranges():
    def row(i, bound, ms):
        return {"index": i, "name": f"model.{i}", "type": "Conv", "stage": "backbone", "latency_ms": ms, "share": 0,
                "flops": 1e6, "bound": bound, "pct_of_peak": 10.0, "pct_of_roof": 80.0}

    rows = [row(0, "memory", 3), row(1, "memory", 2), row(2, "memory", 1), row(3, "compute", 4), row(4, "memory", 0.5)]
    for x in rows:
        x["share"] = x["latency_ms"] / 10.5
    f = find_bottlenecks({"layers": rows}, top=2)
    assert [x["target"] for x in f if x["kind"] == "layer"] == ["model.3", "model.0"]
    mem = [x for x in f if x["kind"] == "memory_bound"]
    assert mem[0]["message"].startswith("layers 0-2") and mem[0]["share"] == pytest.approx(6 / 10.5)
    assert mem[1]["message"].startswith("layer 4")


def test_central_mean_is_additive():
    passes = [{"a": 1.0, "b": 2.0}, {"a": 1.1, "b": 2.1}, {"a": 9.0, "b": 9.0}, {"a": 0.9, "b": 1.9}]
    totals = [sum(p.values()) for p in passes]
    c = central_mean(passes, totals)  # middle half: passes 0 and 1
    assert c == pytest.approx({"a": 1.05, "b": 2.05})


def test_map_node_name():
    assert map_node_name("/model.8/cv1/conv/Conv") == ("model.8", "model.8.cv1.conv")
    assert map_node_name("images_abcd_acdb_/model.0/conv/Conv/WithoutBiases") == ("model.0", "model.0.conv")
    assert map_node_name("/model.24/m.2/Conv_kernel") == ("model.24", "model.24.m.2")
    assert map_node_name("/model.2/m/m.0/cv1/act/Mul/QuickGeluFusion/") == ("model.2", "model.2.m.m.0.cv1.act")
    assert map_node_name("output") == ("other", "other")


def test_nonstandard_widths_all_runtimes_and_sweep(bus_jpg, machine, tmp_path):
    cfg = builtin_config("yolov5n", nc=3)
    cfg["width_multiple"] = 0.3  # channels 24, 40, 80, ... instead of 16, 32, 64, ...
    model = DetectionModel(cfg).eval()
    fused = copy.deepcopy(model).fuse()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fused(torch.zeros(2, 3, 192, 192))
    r = profile_model(model, ProfileSpec(imgsz=192, batch=2, threads=1, repeats=5, warmup=1, source=[str(bus_jpg)],
                      pipeline_repeats=1, sweep=True, sweep_sizes=(128, 160), sweep_batches=(1, 2), sweep_repeats=1,
                      deploy=("onnxruntime", "openvino") if _has("openvino") else ("onnxruntime",)), machine=machine)
    assert r["params"] == fused.num_params() == sum(x["params"] for x in r["layers"])
    assert r["params_unfused"] == model.num_params()
    assert r["flops"] == fc.get_total_flops() == sum(x["flops"] for x in r["layers"])
    assert r["layers"][0]["output_shape"] == [2, 24, 96, 96]
    assert r["layers"][24]["output_shape"] == [2, 3 * sum((192 // s) ** 2 for s in (8, 16, 32)), 8]
    for rt, d in r["deploy"].items():
        assert "error" not in d, d
        assert {"model.0", "model.24"} <= {x["name"] for x in d["layers"]}, rt
    sw = r["sweep"]
    assert [(x["imgsz"], x["batch"]) for x in sw] == [(128, 1), (128, 2), (160, 1), (160, 2)]
    for x in sw:
        assert x["throughput_ips"] == pytest.approx(x["batch"] / x["latency_ms"] * 1e3)
    assert any(x["kind"] == "scaling" for x in r["findings"])


def _has(mod):
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def test_onnx_model_input(deploy_artifacts, machine, bus_jpg):
    path = deploy_artifacts["onnx"].path  # conftest: yolov5n at 256
    r = profile_model(str(path), ProfileSpec(imgsz=640, threads=1, repeats=5, warmup=1, deploy=("onnxruntime",),
                      source=[str(bus_jpg)], pipeline_repeats=1), machine=machine)
    assert r["imgsz"] == 256  # taken from the model's fixed input shape
    assert r["layers"] == [] and "per-layer torch table" in r["note"]
    assert r["backend"] == "onnxruntime" and r["flops"] is None
    assert r["params"] >= 1_867_405
    assert r["latency_ms"] == r["deploy"]["onnxruntime"]["latency_ms"] > 0
    assert set(r["stages_ms"]) == STAGES


def test_cli_json_and_plots(cli320):
    res, out, plots = cli320
    assert res.returncode == 0, res.stderr
    assert "per-layer (torch)" in res.stdout and "findings" in res.stdout
    rep = json.loads(out.read_text())
    assert REQUIRED_KEYS <= set(rep)
    assert rep["params"] == 1_867_405 and rep["imgsz"] == 320
    assert rep["flops"] == sum(x["flops"] for x in rep["layers"])
    assert set(rep["machine"]) >= {"peak_gflops", "bandwidth_gbs"}
    assert set(rep["stages_ms"]) == STAGES
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["deploy.png", "layers.png", "roofline.png", "stages.png"]
    for p in plots.iterdir():
        im = cv2.imread(str(p))
        assert p.stat().st_size > 5000 and im is not None and im.shape[0] > 200 and im.shape[1] > 300
        assert im.std() > 5  # not a blank canvas


@pytest.mark.parametrize("args, msg", [
    (["missing.pt"], "weights file not found"),
    (["missing.onnx"], "model file not found"),
    (["{pt}", "--imgsz", "0"], "argument --imgsz: 0"),
    (["{pt}", "--batch", "0"], "argument --batch: 0"),
    (["{pt}", "--threads", "0"], "argument --threads: 0"),
    (["{pt}", "--source", "{tmp}/nothing.jpg"], "no such file"),
])
def test_cli_bad_input(yolov5n_pt, tmp_path, capsys, args, msg):
    from yolopt.cli import main

    args = [a.replace("{pt}", str(yolov5n_pt)).replace("{tmp}", str(tmp_path)) for a in args]
    parse_error = msg.startswith("argument")  # rejected while parsing options: exit 2
    try:
        rc = main(["profile", *args, "--runtimes"])
    except SystemExit as e:
        rc = e.code
    assert rc == (2 if parse_error else 1)
    lines = capsys.readouterr().err.strip().splitlines()
    prefix = "yolopt profile: error:" if parse_error else "yolopt: error:"
    assert len(lines) == 1 and lines[0].startswith(prefix) and msg in lines[0], lines


def test_cli_bad_input_subprocess(tmp_path):
    res = run_cli("profile", tmp_path / "missing.pt", cwd=tmp_path)
    assert res.returncode == 1 and res.stderr.strip() == f"yolopt: error: {tmp_path / 'missing.pt'}: weights file not found"


def test_bad_arguments_raise(yolov5n):
    with pytest.raises(YoloptError, match="backend"):
        profile_model(yolov5n, ProfileSpec(backend="tensorrt"))
    with pytest.raises(YoloptError, match="no such file"):
        profile_model(yolov5n, ProfileSpec(imgsz=64, repeats=1, warmup=0, deploy=(), source=["/nonexistent/x.jpg"]),
                      machine={"peak_gflops": 1.0, "bandwidth_gbs": 1.0, "ridge_flops_per_byte": 1.0})


def test_runtime_backend_is_profiled_and_used(bus_jpg, machine):
    cfg = builtin_config("yolov5n", nc=2)
    cfg["width_multiple"] = 0.2
    model = DetectionModel(cfg).eval()
    backend = "openvino" if _has("openvino") else "onnxruntime"
    r = profile_model(model, ProfileSpec(imgsz=128, backend=backend, threads=1, repeats=4, warmup=1, deploy=(),
                      source=[str(bus_jpg)], pipeline_repeats=1, children=False), machine=machine)
    assert list(r["deploy"]) == [backend]  # added even though no deployment runtimes were asked for
    d = r["deploy"][backend]
    assert r["latency_ms"] == d["latency_ms"] and r["latency_ms_torch"] > 0 and d["latency_ms_unprofiled"] > 0
    assert r["pipeline"]["backend"] == backend and set(r["stages_ms"]) == STAGES
    assert "children" not in r["layers"][0]
