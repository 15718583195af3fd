"""yolopt compress: the selection split, bad input, and a killed run that resumes to the same result.
(The synthetic recipe reaching half the FLOPs without losing mAP50 is the demo test in test_compress.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import yolopt
from yolopt.data.split import carve_selection, split_files
from yolopt.data.synth import generate
from yolopt.errors import YoloptError

from conftest import run_cli


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "d", images=40, classes=3, imgsz=64, seed=5)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from yolopt.models import DetectionModel, builtin_config

    torch.manual_seed(0)
    m = DetectionModel(builtin_config("yolov5n", nc=3)).eval()
    return yolopt.save(m, tmp_path_factory.mktemp("w") / "base.safetensors", imgsz=64)


def _lines(p: Path) -> list[str]:
    return p.read_text().split()


def test_selection_split_is_deterministic_stratified_and_disjoint(data, tmp_path):
    a = carve_selection(data, tmp_path / "a", fraction=0.25, seed=0)
    b = carve_selection(data, tmp_path / "b", fraction=0.25, seed=0)
    c = carve_selection(data, tmp_path / "c", fraction=0.25, seed=1)
    sel, tr = _lines(a.folder / "select.txt"), _lines(a.folder / "train.txt")
    assert sel == _lines(b.folder / "select.txt") and tr == _lines(b.folder / "train.txt")  # deterministic
    assert sel != _lines(c.folder / "select.txt")  # the seed matters
    assert not set(sel) & set(tr)  # disjoint from the fine-tuning images ...
    val = {str(p) for p in (data.parent / "images" / "val").iterdir()}
    assert not set(sel) & val and not set(tr) & val  # ... and from val
    train_all = {str(p.resolve()) for p in (data.parent / "images" / "train").iterdir()}
    assert set(sel) | set(tr) == train_all
    assert a.n_select == len(sel) and a.n_train == len(tr) and 0.15 <= len(sel) / len(train_all) <= 0.35
    assert sum(a.strata.values()) == len(sel)
    doc = yaml.safe_load(a.train_yaml.read_text())
    assert doc["train"] == "train.txt" and doc["val"] == "select.txt"


def test_split_files_stratifies_by_the_rarest_class():
    files = [Path(f"im{i:03d}.jpg") for i in range(100)]
    classes = [{0} for _ in range(90)] + [{0, 1} for _ in range(10)]  # class 1 is rare: 10 images
    train, select, counts = split_files(files, classes, 0.2, seed=3)
    assert counts[1] == 2 and counts[0] == 18  # 20% of each stratum
    assert len(select) == 20 and len(train) == 80 and not set(train) & set(select)
    assert sum(1 for f in select if int(f.stem[2:]) >= 90) == 2
    with pytest.raises(YoloptError, match="between 0 and 1"):
        split_files(files, classes, 1.0)


@pytest.mark.parametrize("args, message", [
    (["--target-flops", "1.5"], "1.5"),
    (["--target-flops", "0"], "0"),
    (["--time-budget", "1s"], "buys"),
])
def test_cli_refuses_bad_targets_and_budgets(weights, data, tmp_path, args, message):
    r = run_cli("compress", weights, "--data", data, "--out", tmp_path / "run", "--no-progress", *args)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], r.stderr
    assert not (tmp_path / "run" / "pruned.safetensors").exists()  # refused before any work


def test_cli_refuses_a_dataset_without_train_and_an_artifact(weights, data, tmp_path):
    no_train = tmp_path / "val_only.yaml"
    no_train.write_text(yaml.safe_dump({"path": str(data.parent), "val": "images/val", "names": ["a", "b", "c"]}))
    r = run_cli("compress", weights, "--data", no_train, "--out", tmp_path / "r1", "--no-progress")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert "val_only.yaml" in r.stderr and "no `train` split" in r.stderr
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not really")
    r = run_cli("compress", onnx, "--data", data, "--out", tmp_path / "r2", "--no-progress")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert "m.onnx" in r.stderr and "exported artifact" in r.stderr


def _env() -> dict:
    src = str(Path(yolopt.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_killed_run_resumes_to_the_uninterrupted_result(weights, data, tmp_path):
    """kill -9 in the first stage's second epoch, the same command again: the same stages, scores and weights
    as a run that was never stopped; a run folder with other settings is refused."""
    common = ["--data", str(data), "--epochs-budget", "8", "--imgsz", "64", "--batch", "8", "--workers", "0",
              "--no-fill", "--no-latency", "--no-progress"]  # the fill has its own test (test_compress.py)
    ref = tmp_path / "ref"
    r = run_cli("compress", weights, *common, "--out", ref)
    assert r.returncode == 0, r.stderr[-2000:]

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "yolopt", "compress", str(weights), *common, "--out", str(run)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = run / "recover" / "last.safetensors"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "final.safetensors").exists()
    r = run_cli("compress", weights, *common, "--out", run)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "continuing" in r.stderr

    a, b = (json.loads((d / "report.json").read_text()) for d in (ref, run))
    assert [s["name"] for s in a["stages"]] == [s["name"] for s in b["stages"]]
    assert [s["epochs"] for s in a["stages"]] == [s["epochs"] for s in b["stages"]] and a["stop"] == b["stop"]
    assert [s["select"] for s in a["stages"]] == [s["select"] for s in b["stages"]]
    assert a["final"]["val"] == b["final"]["val"]
    wa, wb = (yolopt.load(d / "final.safetensors").state_dict() for d in (ref, run))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    md = (run / "report.md").read_text()
    assert "## Stages" in md and "recover" in md and (run / "report.png").stat().st_size > 1000

    r = run_cli("compress", weights, *common[:-1], "--target-flops", "0.6", "--no-progress", "--out", run)
    assert r.returncode != 0 and "other settings (target_flops)" in r.stderr


MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"


@pytest.mark.parametrize("name", ["hardhat_base", "hardhat_compressed"])
def test_shipped_models_match_their_sha256_load_and_detect(name, shared):
    """benchmarks/models: each file's SHA-256 is the one its README gives; it loads as a 416-px helmet detector
    and finds helmets on 16 hardhat val images."""
    import hashlib

    from yolopt.evaluate import EvalSpec, evaluate

    path = MODELS / f"{name}.safetensors"
    if not path.exists():
        pytest.skip(f"{path.name} is not shipped yet (the compress run that makes it is in progress)")
    readme = (MODELS / "README.md").read_text()
    section = readme.split(f"## {path.name}")[1].split("\n## ")[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() in section
    m = yolopt.load(path)
    assert m.names == ["helmet"] and m.imgsz == 416
    r = evaluate(m, shared / "data" / "hardhat" / "hardhat.yaml", EvalSpec(imgsz=416, max_images=16, progress=False))
    assert r.map50 > 0.8, r.map50
