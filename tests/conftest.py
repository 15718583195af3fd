"""Shared fixtures. Real assets come from ../shared (present in CI); never copied into the repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("YOLOPT_SHARED", ROOT.parent / "shared")).resolve()


# ---- one core per pytest-xdist worker
# `make test` runs the suite in one worker per usable core (pytest -n auto). Each worker is pinned to a core of
# its own, before torch is imported, so torch, ONNX Runtime, OpenVINO and every CLI subprocess it starts see a
# one-core machine (yolopt.machine.usable_cpus follows the affinity) and pick one thread: two workers never
# run four threads on two cores, where threads stall at barriers. Without xdist nothing changes.
def _pin_worker() -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    total = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if total < 2 or total > len(cores):
        return
    os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})
    os.environ["OMP_NUM_THREADS"] = "1"


_pin_worker()


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per usable core (affinity and cgroup quota), at most 2 (the CI machine's cores;
    more workers would build the session fixtures once more each)."""
    from yolopt.machine import usable_cpus

    return min(2, usable_cpus())


def pytest_collection_modifyitems(config, items):
    """Tests marked ``long`` are collected first: under xdist they start at once instead of being the run's tail."""
    items.sort(key=lambda it: it.get_closest_marker("long") is None)  # stable: the order is otherwise kept


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared asset missing: {path} (set YOLOPT_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def yolov5n_pt(shared) -> Path:
    return _need(shared / "weights" / "yolov5n.pt")


@pytest.fixture(scope="session")
def ppe_pt(shared) -> Path:
    return _need(shared / "weights" / "ppe_yolov5n.pt")


@pytest.fixture(scope="session")
def coco128_yaml(shared) -> Path:
    return _need(shared / "data" / "coco128" / "coco128.yaml")


@pytest.fixture(scope="session")
def bus_jpg(shared) -> Path:
    return _need(shared / "data" / "images" / "bus.jpg")


@pytest.fixture(scope="session")
def yolov5n(yolov5n_pt):
    """The official yolov5n, loaded once (eval, unfused). Tests must not modify it."""
    import yolopt

    return yolopt.load(yolov5n_pt)


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``yolopt ARGS`` in this process (``yolopt.cli.main``), with stdout and stderr captured as a user sees
    them: the same exit status, the same one-line errors. Most CLI tests are about options and messages, and a
    process start (torch, runtimes) costs seconds each; where process behaviour is the point (signals, broken
    pipes, the environment, import isolation) use :func:`run_cli_process`. ``timeout`` applies to the latter only."""
    import contextlib
    import io

    from yolopt.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = [str(a) for a in args]
    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse: --help (0) and bad options (2)
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, (int, type(None))):
                    print(e.code, file=sys.stderr)
            except Exception:  # what `python -m yolopt` would do: a traceback on stderr, status 1
                import traceback

                traceback.print_exc(file=sys.stderr)
                rc = 1
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(["yolopt", *argv], rc, out.getvalue(), err.getvalue())


def run_cli_process(*args: str, cwd: Path | None = None, timeout: int = 900, env: dict | None = None
                    ) -> subprocess.CompletedProcess:
    """Run ``python -m yolopt ARGS`` in a child process (exit code and stderr as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "yolopt", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env,
    )


@pytest.fixture(scope="session")
def deploy_artifacts(tmp_path_factory, yolov5n_pt, bus_jpg):
    """yolov5n exported once per test session at 256 px (verified): onnx, onnx_dyn, openvino, torchscript."""
    pytest.importorskip("onnxruntime")
    from yolopt.export import ExportSpec, export
    from yolopt.runtime.backends import torch_threads

    d = tmp_path_factory.mktemp("deploy")
    with torch_threads(1):  # session fixtures run before any module's thread setting; one thread is fastest here
        return {
            "onnx": export(yolov5n_pt, ExportSpec("onnx", imgsz=256, out=d / "static.onnx", verify_images=[bus_jpg])),
            "onnx_dyn": export(yolov5n_pt, ExportSpec("onnx", imgsz=256, dynamic=True, out=d / "dyn.onnx")),
            "openvino": export(yolov5n_pt, ExportSpec("openvino", imgsz=256, out=d / "ov" / "m.xml",
                                                      verify_images=[bus_jpg])),
            "torchscript": export(yolov5n_pt, ExportSpec("torchscript", imgsz=256, out=d / "m.torchscript")),
        }


def need_litert():
    """Skip unless the LiteRT converter (litert-torch) and runtime (ai-edge-litert) are installed; found without
    importing them (the converter imports jax, and runs in a child process anyway)."""
    import importlib.util

    for mod, pkg in (("litert_torch", "litert-torch"), ("ai_edge_litert", "ai-edge-litert")):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{pkg} is not installed (pip install 'yolopt[edge]')")


@pytest.fixture(scope="session")
def litert_export(tmp_path_factory, yolov5n_pt, bus_jpg):
    """yolov5n as a LiteRT .tflite at 256 px, verified on bus.jpg: converted once per session (about a minute)."""
    need_litert()
    from yolopt.export import ExportSpec, export

    d = tmp_path_factory.mktemp("litert")
    return export(yolov5n_pt, ExportSpec("litert", imgsz=256, out=d / "yolov5n.tflite", verify_images=[bus_jpg]))


def need_executorch():
    """Skip unless executorch (its exporter and its runtime: one wheel) and what it imports beyond the edge extra
    are installed; found without importing them."""
    import importlib.util

    for mod in ("executorch", "ruamel.yaml", "tabulate"):
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            pytest.skip(f"{mod} is not installed (make install, or pip install --no-deps executorch==1.5.1 "
                        "ruamel.yaml==0.19.1 tabulate==0.10.0)")


@pytest.fixture(scope="session")
def executorch_export(tmp_path_factory, yolov5n_pt, bus_jpg):
    """yolov5n as an ExecuTorch .pte (XNNPACK) at 256 px, verified on bus.jpg: lowered once per session."""
    need_executorch()
    from yolopt.export import ExportSpec, export
    from yolopt.runtime.backends import torch_threads

    d = tmp_path_factory.mktemp("executorch")
    with torch_threads(1):
        return export(yolov5n_pt, ExportSpec("executorch", imgsz=256, out=d / "yolov5n.pte", verify_images=[bus_jpg]))


@pytest.fixture(scope="module")
def two_threads():
    """Torch on 2 threads for a module (the machines have 2 cores), restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest single-threaded (and do not fight other jobs for the cores); CLI
    subprocesses inherit OMP_NUM_THREADS=1 too."""
    import torch

    n, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(n)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


# ---- tests3 fixtures

@pytest.fixture(scope="session")
def nms_onnx(tmp_path_factory, yolov5n_pt):
    """yolov5n exported once per session with ``--nms`` at 256 px through the CLI (conf 0.25 baked in, verified on
    the default images: the shared samples). Returns (path, the CLI's CompletedProcess, its ``--json`` report);
    tests must not modify the file."""
    import json

    pytest.importorskip("onnxruntime")
    from yolopt.runtime.backends import torch_threads

    d = tmp_path_factory.mktemp("nms")
    out, report = d / "nms.onnx", d / "export.json"
    with torch_threads(1):
        r = run_cli("export", yolov5n_pt, "--format", "onnx", "--nms", "--imgsz", "256", "--out", out, "--json",
                    report)
    assert r.returncode == 0, r.stderr
    return out, r, json.loads(report.read_text())
