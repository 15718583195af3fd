"""yolopt bench: latency percentiles, throughput, JSON records, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli

pytest.importorskip("onnxruntime")

KEYS = {"backend", "model", "imgsz", "batch", "threads", "streams", "latency_ms", "fps", "throughput_fps",
        "peak_rss_mb", "size_mb"}


@pytest.fixture(scope="module")
def onnx_dyn(deploy_artifacts):
    """The session's dynamic yolov5n ONNX (exported once for every test file); benched at 128 px."""
    return deploy_artifacts["onnx_dyn"].path


def _check(rec, batch, streams=1):
    assert KEYS <= set(rec)
    L = rec["latency_ms"]
    assert 0 < L["p50"] <= L["p90"] <= L["p99"]
    assert min(L.values()) > 0 and L["mean"] <= L["p99"] * 1.0001
    assert rec["batch"] == batch and rec["streams"] == streams
    assert rec["fps"] == pytest.approx(batch * 1000 / L["mean"], rel=1e-6)
    assert rec["throughput_fps"] > 0 and rec["peak_rss_mb"] > 50


def test_percentiles_and_time_calls():
    from yolopt.bench import percentiles, time_calls

    p = percentiles([1.0, 2.0, 3.0, 4.0, 100.0])
    assert p["p50"] == 3.0 and p["mean"] == 22.0 and p["p50"] < p["p90"] < p["p99"] < 100.0
    calls = []
    lat = time_calls(lambda: calls.append(1), warmup=3, iters=7)
    assert len(lat) == 7 and len(calls) == 10 and all(v >= 0 for v in lat)
    lat = time_calls(lambda: None, warmup=0, iters=None, duration=0.05)
    assert len(lat) > 10


def test_benchmark_api_streams_and_end2end(onnx_dyn, bus_jpg):
    from yolopt import runtime
    from yolopt.bench import BenchSpec, measure

    b = runtime.open(onnx_dyn, threads=1)
    r = measure(b, 128, BenchSpec(batch=2, warmup=1, iters=5, streams=2)).to_dict()
    _check(r, 2, 2)
    assert r["size_mb"] == pytest.approx(onnx_dyn.stat().st_size / 1e6)
    assert r["backend"] == "onnxruntime" and r["threads"] == 1 and not r["end2end"]
    assert r["extra"]["stream_latency_ms"]["p50"] > 0
    assert r["precision"] == "fp32" and r["machine"]["cpu"] and "avx2" in r["machine"]["isa"]
    e = measure(b, 128, BenchSpec(batch=1, warmup=1, iters=3, source=[bus_jpg]))
    assert e.end2end and e.latency_ms["p50"] > 0
    # per-stage medians of the same calls: each positive, together close to the whole step
    assert set(e.stages_ms) == {"decode", "preprocess", "inference", "nms", "postprocess"}
    assert all(v > 0 for v in e.stages_ms.values())
    assert sum(e.stages_ms.values()) <= e.latency_ms["p90"] * 1.05


def test_end_to_end_streams_run_as_processes_like_a_bundles_workers(onnx_dyn, bus_jpg, tmp_path):
    """End to end, N streams are N processes with a session each (as infer.py --workers N runs them): their
    throughput, latency and the memory they need together; a pipeline process that fails ends the measurement
    with one line naming the artifact, never a hang."""
    import shutil

    from yolopt import runtime
    from yolopt.bench import BenchSpec, measure
    from yolopt.errors import YoloptError

    b = runtime.open(onnx_dyn, threads=1)
    r = measure(b, 128, BenchSpec(warmup=1, iters=4, streams=2, source=[bus_jpg]))
    assert r.end2end and r.extra["stream_mode"] == "processes" and r.throughput_fps > 0
    assert r.extra["stream_latency_ms"]["p50"] > 0 and r.extra["stream_model_mem_mb"] > 0
    t = measure(b, 128, BenchSpec(warmup=1, iters=4, streams=2, source=[bus_jpg], processes=False))
    assert t.extra["stream_mode"] == "threads" and "stream_model_mem_mb" not in t.extra
    gone = tmp_path / "gone.onnx"
    shutil.copyfile(onnx_dyn, gone)
    g = runtime.open(gone, threads=1)
    gone.unlink()  # the parent's session is open; the pipeline processes cannot open the file
    with pytest.raises(YoloptError, match="a pipeline process failed") as e:
        measure(g, 128, BenchSpec(warmup=1, iters=2, streams=2, source=[bus_jpg]))
    assert str(gone) in str(e.value) and "\n" not in str(e.value)


def test_bench_cli_json(onnx_dyn, tmp_path):
    out = tmp_path / "b.json"
    r = run_cli("bench", onnx_dyn, "--imgsz", "128", "--batch", "1,2", "--warmup", "1", "--iters", "4",
                "--threads", "1", "--json", out)
    assert r.returncode == 0, r.stderr
    recs = json.loads(out.read_text())
    assert isinstance(recs, list) and [x["batch"] for x in recs] == [1, 2]
    for rec, b in zip(recs, (1, 2)):
        _check(rec, b)
        assert rec["imgsz"] == [128, 128] and rec["threads"] == 1
    assert "p50 ms" in r.stdout


def test_bench_cli_end2end_torch_unfused(yolov5n_pt, bus_jpg, tmp_path):
    out = tmp_path / "e.json"
    r = run_cli("bench", yolov5n_pt, "--imgsz", "128", "--warmup", "1", "--iters", "3", "--end2end", "--source",
                bus_jpg, "--no-fuse", "--json", out)
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())
    _check(rec, 1)
    assert rec["backend"] == "torch-unfused" and rec["end2end"] is True
    assert rec["size_mb"] == pytest.approx(yolov5n_pt.stat().st_size / 1e6)


@pytest.mark.parametrize("args,needle", [
    (["--batch", "1,x"], "--batch 1,x: expected integers"),
    (["--batch", "0"], "batch sizes must be >= 1"),
    (["--end2end"], "--end2end needs --source"),
    (["--streams", "0"], "argument --streams: 0: must be at least 1"),
])
def test_bench_bad_options(onnx_dyn, args, needle):
    r = run_cli("bench", onnx_dyn, "--iters", "1", *args)
    parse_error = needle.startswith("argument")  # rejected while parsing: exit 2, like every command
    assert r.returncode == (2 if parse_error else 1) and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bench_unknown_file(tmp_path):
    p = tmp_path / "model.bin"
    p.write_bytes(b"x")
    r = run_cli("bench", p)
    assert r.returncode == 1 and "unknown model format '.bin'" in r.stderr and str(p) in r.stderr


def test_glue_around_a_runtime_runs_on_one_torch_thread():
    """bench.measure runs the torch glue (input, decode, NMS) on one torch thread when the model is not run by
    torch (its OpenMP threads fought ONNX Runtime's spin-waiting ones), keeps a torch backend's setting, and puts
    the process-wide setting back afterwards."""
    import numpy as np
    import torch

    from yolopt.bench import BenchSpec, measure

    class Fake:
        path, threads, uint8_input, precision = "fake.onnx", 2, False, "fp32"

        def __init__(self, name):
            self.name, self.seen = name, []

        def __call__(self, x):
            self.seen.append(torch.get_num_threads())
            return np.zeros((1, 10, 85), np.float32)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ort, pt = Fake("onnxruntime"), Fake("torch")
        measure(ort, 32, BenchSpec(warmup=1, iters=2))
        measure(pt, 32, BenchSpec(warmup=1, iters=2))
        assert set(ort.seen) == {1} and set(pt.seen) == {2}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_peak_memory_of_a_child_is_its_own_not_its_parents():
    """A benchmark worker started by a large process (optimize after an INT8 build) reports its own peak memory:
    Linux's ru_maxrss would carry the parent's 700 MB into it across fork + exec."""
    import subprocess
    import sys

    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc/self/status: the peak comes from ru_maxrss here")
    child = "from yolopt.bench.timing import peak_rss_mb; print(peak_rss_mb())"
    parent = ("import subprocess, sys\n"
              "a = bytearray(700 * 2**20)\n"
              "a[::4096] = b'\\x01' * len(range(0, len(a), 4096))\n"  # touch every page: 700 MB resident
              f"sys.exit(subprocess.run([sys.executable, '-c', {child!r}]).returncode)\n")
    r = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
    peak = float(r.stdout.strip())
    assert 10 < peak < 600, peak  # numpy and yolopt's bench imported: far below the parent's 700 MB
