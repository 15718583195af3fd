"""Faults a run must survive or refuse cleanly: the cores it was given, two runs in one folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from yolopt.errors import YoloptError
from yolopt.fileio import FolderLock
from yolopt.machine import _cgroup_cpu_quota, usable_cpus


def test_usable_cpus_follows_the_affinity():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity on this platform")
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from yolopt.machine import usable_cpus, machine_info; from yolopt.runtime import default_threads; "
            "from yolopt.pipeline import OptimizeSpec; s = OptimizeSpec('m.pt', 'd.yaml', imgsz=[640]); s.check(); "
            "print(usable_cpus(), machine_info()['usable_cpus'], default_threads(), default_threads(2), s.threads)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "1", "1", "1", "1"]  # optimize's pipeline threads follow the usable cores
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)


def test_cgroup_quota_is_read(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    assert _cgroup_cpu_quota(tmp_path) is None


def test_folder_lock_refuses_a_second_run_and_dies_with_its_holder(tmp_path):
    with FolderLock(tmp_path / "run", "optimize"):
        with pytest.raises(YoloptError, match=r"another optimize is writing into this folder \(pid \d+"):
            with FolderLock(tmp_path / "run", "optimize"):
                pass
    with FolderLock(tmp_path / "run"):  # released on exit
        pass
    # a holder killed with SIGKILL leaves the lock file, not the lock
    code = ("import sys, time; from yolopt.fileio import FolderLock; l = FolderLock(sys.argv[1]).__enter__(); "
            "print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "k")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(YoloptError, match="another run"):
            FolderLock(tmp_path / "k").__enter__()
    finally:
        p.kill()
        p.wait()
    with FolderLock(tmp_path / "k"):
        assert (tmp_path / "k" / FolderLock.NAME).exists()


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from yolopt.data.synth import generate

    return generate(tmp_path_factory.mktemp("faults") / "d", images=12, classes=2, imgsz=64, seed=3)


def test_two_trainings_into_one_folder_the_second_is_refused(tiny_set, tmp_path):
    """Two real processes: the second `yolopt train` into the same --out stops at once, naming the first."""
    import time

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "yolopt", "train", "--data", str(tiny_set), "--cfg", "yolov5n", "--imgsz", "64",
            "--batch", "4", "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(out)]
    first = subprocess.Popen([*args, "--epochs", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        lock = out / FolderLock.NAME
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip()) and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.stderr.read().decode()[-1000:]
        second = subprocess.run([*args, "--epochs", "1"], capture_output=True, text=True, env=env, timeout=300)
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another training run is writing into this folder (pid {first.pid}" in lines[0]
    finally:
        first.kill()
        first.wait()


# ----------------------------------------------------------------------------- classes and blind models

SYNTH_MODEL = __import__("pathlib").Path(__file__).resolve().parents[1] / "src" / "yolopt" / "assets" / \
    "synth_yolov5n.safetensors"


def _renamed(data_yaml, tmp_path, names):
    import yaml

    cfg = yaml.safe_load(data_yaml.read_text())
    cfg["path"] = str(data_yaml.parent)
    cfg["names"] = names
    cfg["nc"] = len(names)
    out = tmp_path / "renamed.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def test_val_warns_when_no_class_name_is_shared(tiny_set, tmp_path):
    from conftest import run_cli

    data = _renamed(tiny_set, tmp_path, ["face", "hand"])
    r = run_cli("val", SYNTH_MODEL, "--data", data, "--imgsz", "64")
    assert r.returncode == 0, r.stderr
    assert "share no name" in r.stderr and "face" in r.stderr and "circle" in r.stderr


@pytest.fixture(scope="module")
def one_class_set(tmp_path_factory):
    from yolopt.data.synth import generate

    return generate(tmp_path_factory.mktemp("faults1") / "d", images=8, classes=1, imgsz=64, seed=4)  # "circle"


def test_quantize_refuses_a_blind_model_before_calibration_and_takes_match_classes(one_class_set, tmp_path):
    """A model that detects nothing on val is refused before calibration, nothing written (issue: a 0.0000-mAP
    model quantized with 'drop 0.0000'); quantize and prune accept --match-classes, which their advice names."""
    import torch

    import yolopt
    from conftest import run_cli

    m = yolopt.load(SYNTH_MODEL)
    with torch.no_grad():
        for conv in m.model[-1].m:  # objectness logits -> -30: no box ever passes conf 0.001
            conv.bias.view(3, -1)[:, 4] = -30.0
    blind = tmp_path / "blind.safetensors"
    yolopt.save(m, blind, imgsz=64)
    data = one_class_set  # one class, "circle", shared by name with the 2-class model
    out = tmp_path / "q" / "blind_int8.onnx"
    r = run_cli("quantize", blind, "--data", data, "--imgsz", "64", "--calib", "4", "--no-latency", "--out", out)
    assert r.returncode == 1 and "--match-classes" in r.stderr and "share 1 by name" in r.stderr, r.stderr
    r = run_cli("quantize", blind, "--data", data, "--imgsz", "64", "--calib", "4", "--no-latency", "--out", out,
                "--match-classes")
    assert r.returncode == 1 and "finds nothing on the val split" in r.stderr, r.stderr
    assert "calibrating" not in r.stderr and not out.exists() and not list(out.parent.glob("*"))
    from yolopt.cli import build_parser

    a = build_parser().parse_args(["prune", str(blind), "--ratio", "0.2", "--match-classes"])
    assert a.match_classes is True


# ----------------------------------------------------------------------------- dataset files

def _copy_set(src_yaml, dst):
    import shutil

    shutil.copytree(src_yaml.parent, dst)
    for cache in dst.rglob("*.yolopt.cache"):
        cache.unlink()
    return dst / src_yaml.name


def test_train_skips_a_truncated_jpeg_as_val_does(tiny_set, tmp_path):
    """A JPEG cut short keeps a valid header: the pre-scan decodes it in full and skips it with val's warning,
    instead of training stopping when a batch reaches it."""
    import cv2

    from conftest import run_cli

    data = _copy_set(tiny_set, tmp_path / "d")
    img = sorted((data.parent / "images" / "train").iterdir())[1]
    jpg = img.with_suffix(".jpg")
    ok, buf = cv2.imencode(".jpg", cv2.imread(str(img)))
    jpg.write_bytes(buf.tobytes()[: len(buf) // 3])  # header intact, scan data cut
    if jpg != img:
        img.unlink()
        lab = data.parent / "labels" / "train" / f"{img.stem}.txt"
        assert lab.exists()
    r = run_cli("train", "--data", data, "--cfg", "yolov5n", "--epochs", "1", "--imgsz", "64", "--batch", "4",
                "--workers", "0", "--device", "cpu", "--no-progress", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-1500:]
    assert f"{jpg}: corrupt or unreadable image, skipped" in r.stderr


def test_images_without_labels_and_labels_without_images_are_reported(tiny_set, tmp_path):
    """One summary line (val and train), and --strict makes it an error."""
    from conftest import run_cli

    data = _copy_set(tiny_set, tmp_path / "d")
    root = data.parent
    val_img = sorted((root / "images" / "val").iterdir())[0]
    (root / "labels" / "val" / f"{val_img.stem}.txt").unlink()  # an image without a label file
    (root / "labels" / "val" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # a label file without an image
    r = run_cli("val", SYNTH_MODEL, "--data", data, "--imgsz", "64")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stderr.splitlines() if "without a label file" in x)
    assert "`val`" in line and "1 without a label file, counted as background" in line and \
        "1 label files without an image" in line and "orphan.txt" in line
    r = run_cli("val", SYNTH_MODEL, "--data", data, "--imgsz", "64", "--strict")
    assert r.returncode == 1 and "refused in strict mode (--strict)" in r.stderr
    train_img = sorted((root / "images" / "train").iterdir())[0]
    (root / "labels" / "train" / f"{train_img.stem}.txt").unlink()
    r = run_cli("train", "--data", data, "--cfg", "yolov5n", "--epochs", "1", "--imgsz", "64", "--strict",
                "--out", tmp_path / "run", "--workers", "0", "--no-progress")
    assert r.returncode == 1 and "`train`: " in r.stderr and "refused in strict mode" in r.stderr, r.stderr


def test_optimize_into_a_folder_another_run_holds_is_refused(tiny_set, tmp_path):
    from conftest import run_cli

    out = tmp_path / "opt"
    with FolderLock(out, "optimize run"):
        r = run_cli("optimize", SYNTH_MODEL, "--data", tiny_set, "--out", out, "--imgsz", "64", "--time-budget", "2m",
                    "--no-progress")
    assert r.returncode == 1 and f"{out}: another optimize run is writing into this folder (pid {os.getpid()}" in \
        r.stderr, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [FolderLock.NAME]  # nothing else written


# ----------------------------------------------------------------------------- failures worth retrying

def test_a_full_disk_is_a_transient_failure(tmp_path):
    """An export onto a full filesystem (a 1 MB tmpfs) fails with an error classed as transient: optimize retries
    such failures on the next run instead of replaying them from its cache."""
    import shutil

    from yolopt.errors import is_transient
    from yolopt.export import ExportSpec, export

    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    disk = tmp_path / "tiny"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine does not let root mount a tmpfs (container without CAP_SYS_ADMIN)")
    try:
        with pytest.raises(YoloptError) as e:
            export(SYNTH_MODEL, ExportSpec("onnx", imgsz=64, verify=False, out=disk / "m.onnx"))
        assert is_transient(e.value), repr(e.value)
        assert list(disk.iterdir()) == []  # nothing half-written
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    assert not is_transient(YoloptError("the INT8 model lost its detections"))


def test_optimize_remembers_only_a_variants_own_failures(tiny_set, tmp_path):
    from yolopt.pipeline import OptimizeSpec
    from yolopt.pipeline.records import VariantResult
    from yolopt.pipeline.run import Optimizer
    from yolopt.pipeline.variants import Variant, build_key

    opt = Optimizer(OptimizeSpec(str(SYNTH_MODEL), str(tiny_set), imgsz=[64], out=str(tmp_path / "o")))
    try:
        v = Variant("fp32", "baseline", "FP32", build_key("fp32", 64), 64)
        for failure, reused in (("environment", False), (None, False), ("variant", True)):
            VariantResult(name="fp32", kind="baseline", variant=v, status="failed", reason="x",
                          failure=failure).save(opt._variant_file("fp32"))
            assert (opt._cached(v) is not None) == reused, failure
    finally:
        opt.release()


# ----------------------------------------------------------------------------- a bundle's artifact, reproduced

def test_predict_and_val_use_the_artifacts_own_size_and_letterbox_like_the_bundle(tiny_set, tmp_path):
    """A dynamic artifact exported at 96 px: predict and val default to 96 and its rect letterbox; the bundle's
    infer.py and `yolopt predict` agree within 1 px, under one key ("class")."""
    import json

    import numpy as np

    from conftest import run_cli
    from yolopt.export import ExportSpec, export
    from yolopt.pipeline.deploy import write_bundle

    art = export(SYNTH_MODEL, ExportSpec("onnx", imgsz=96, dynamic=True, verify=False, out=tmp_path / "m.onnx")).path
    bundle = write_bundle(art, tmp_path / "deploy", letterbox="rect")
    images = sorted((tiny_set.parent / "images" / "val").iterdir())[:2]
    r = subprocess.run([sys.executable, str(bundle / "infer.py"), *map(str, images), "--json", str(tmp_path / "i.json"),
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    theirs = {Path(x["image"]).name: x["detections"] for x in json.loads((tmp_path / "i.json").read_text())}
    r = run_cli("predict", art, *images, "--json", "--conf", "0.25")
    assert r.returncode == 0, r.stderr
    ours = {Path(x["image"]).name: x["detections"] for x in json.loads(r.stdout)}
    assert ours.keys() == theirs.keys() and sum(len(v) for v in ours.values()) > 0
    for name, dets in ours.items():
        assert [d["class"] for d in dets] == [d["class"] for d in theirs[name]], name
        assert np.abs(np.array([d["xyxy"] for d in dets]) - np.array([d["xyxy"] for d in theirs[name]])).max() <= 1
    r = run_cli("val", art, "--data", tiny_set, "--json", tmp_path / "v.json")
    assert r.returncode == 0, r.stderr
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["imgsz"] == 96 and v["mode"] == "rect"


Path = __import__("pathlib").Path


def test_optimize_keeps_time_for_its_finish_inside_the_budget():
    """Variants are planned within the budget less the confirmation rounds, profiles, report and bundle; the
    rounds shrink to what is left (none when not even one fits) instead of running past the budget."""
    from yolopt.pipeline import costs

    per_round = 2 * costs.bench_s(4.0)  # baseline + recommendation
    full = 3 * costs.bench_s(4.0)  # + the best FP32 pipeline setting: what the finish keeps time for
    assert costs.finish_s(4.0) == costs.CONFIRM_ROUNDS * full + costs.FINISH_FIXED_S
    assert costs.confirm_rounds(costs.finish_s(4.0), 4.0, per_round=3) == costs.CONFIRM_ROUNDS
    assert costs.confirm_rounds(costs.FINISH_FIXED_S + 2.5 * full, 4.0, per_round=3) == 2
    assert costs.confirm_rounds(costs.FINISH_FIXED_S + 2.5 * per_round, 4.0) == 2
    assert costs.confirm_rounds(costs.FINISH_FIXED_S + 0.5 * per_round, 4.0) == 0
    assert costs.confirm_rounds(1e6, 4.0) == costs.CONFIRM_ROUNDS


# ----------------------------------------------------------------------------- a killed prune fine-tune

def test_killed_prune_finetune_resumes_and_a_second_prune_is_refused(tiny_set, tmp_path, monkeypatch):
    """`prune --finetune` killed with SIGKILL after its first fine-tune epoch, then run again: pruning is redone
    (deterministic) and the fine-tune continues from its checkpoint, every epoch once; the log names the pruned
    model. While the first process lives, a second prune into the same --out is refused in one line."""
    import signal
    import time

    import torch

    import yolopt
    from conftest import run_cli
    from yolopt.engine.checkpoint import read_train_checkpoint
    from yolopt.models import DetectionModel, builtin_config

    torch.manual_seed(0)
    weights = yolopt.save(DetectionModel(builtin_config("yolov5n", nc=2)).eval(), tmp_path / "m.safetensors",
                          imgsz=64)
    out = tmp_path / "p.safetensors"
    args = ["prune", str(weights), "--ratio", "0.25", "--imgsz", "64", "--no-latency", "--force", "--data",
            str(tiny_set), "--finetune", "4", "--batch", "4", "--workers", "0", "--device", "cpu", "--val-every", "9",
            "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "yolopt", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env)
    ft = tmp_path / "p_finetune"
    last = ft / "step1" / "last.safetensors"
    try:
        deadline = time.time() + 300
        while not last.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert last.exists(), first.stderr.read()[-2000:] if first.poll() is not None else "no checkpoint in time"
        assert first.poll() is None, "the fine-tune ended before it could be killed"
        second = run_cli(*args)
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another prune run is writing into this folder (pid {first.pid}" in lines[0]
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert first.returncode == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    _, _, st = read_train_checkpoint(last)
    assert st["epoch"] in (0, 1, 2)
    with FolderLock(last.parent, "training run"):  # `train --resume` into a folder a live run holds: refused
        r = run_cli("train", "--resume", last.parent, "--workers", "0", "--no-progress")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"another training run is writing into this folder (pid {os.getpid()}" in r.stderr
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "training the pruned" in r.stderr, r.stderr
    assert "a model given in Python" not in r.stderr
    _, _, st = read_train_checkpoint(last)
    assert [row["epoch"] for row in st["history"]] == [1, 2, 3, 4]
    rows = (ft / "step1" / "results.csv").read_text().strip().splitlines()[1:]
    assert [int(x.split(",")[0]) for x in rows] == [1, 2, 3, 4]
    assert out.exists()

    # what the folder offers a next run: the finished fine-tune to the same pruned model; a model of other tensor
    # shapes starts over, with a warning that says why
    import json

    from yolopt.compress import workflow

    warned = []
    monkeypatch.setattr(workflow.log, "warning", lambda msg, *a: warned.append(msg % a))
    started = json.loads((ft / "step1" / workflow._PRUNED).read_text())["weights"]
    kw = dict(epochs=4, imgsz=64, batch=4, hyp=None, unlabeled=[], val_data=None, val_every=9)
    assert workflow._earlier_finetune(yolopt.load(out), started, tiny_set, kw, ft / "step1") == "finished"
    assert workflow._earlier_finetune(yolopt.load(weights), started, tiny_set, kw, ft / "step1") is None
    assert len(warned) == 1 and "tensor shapes differ from the pruned model's" in warned[0]
    assert workflow._earlier_finetune(yolopt.load(out), started, tiny_set, {**kw, "epochs": 6}, ft / "step1") is None
    assert "its settings differ (epochs)" in warned[-1]


# ----------------------------------------------------------------------------- the noise rule, shown

def test_a_variant_missing_the_budget_by_the_noise_rule_says_so_in_the_plot_and_the_report(monkeypatch):
    """A variant above the max-drop line whose drop + 1 SE exceeds the budget: the plot's legend states the noise
    rule and marks the miss, the table's reason and the 'closest' line give the numbers."""
    from yolopt.pipeline import OptimizeSpec, report
    from yolopt.pipeline.records import Budget, OptimizeResults, Recommendation, VariantResult
    from yolopt.pipeline.select import violations

    spec = OptimizeSpec("m.pt", "d.yaml", imgsz=[640], max_map_drop=0.01, map_noise=1.0)
    lat = {"p50": 10.0, "p99": 12.0}
    base = VariantResult(name="fp32", kind="baseline", status="done", map50_95=0.30, map50=0.5, drop=0.0, fps=50.0,
                         latency_ms=lat, size_mb=7.0)
    int8 = VariantResult(name="int8", kind="int8", status="done", map50_95=0.292, map50=0.49, drop=0.008,
                         drop_se=0.004, fps=90.0, latency_ms=lat, size_mb=2.0)
    for v in (base, int8):
        v.misses = violations(v, spec, spec.max_map_drop) or None
        v.meets = not v.misses
    assert base.meets and not int8.meets  # 0.008 <= 0.01, but 0.008 + 0.004 > 0.01
    res = OptimizeResults(model="m.pt", metric="map50_95", variants=[base, int8], baseline="fp32",
                          budget=Budget(max_map_drop=0.01, map_noise=1.0),
                          recommendation=Recommendation(scenario="realtime", variant=None, met=False, closest="int8"))
    legends = []

    def keep_legend(fig, _png=report._fig_png):
        legends.extend(t.get_text() for t in fig.axes[0].get_legend().get_texts())
        return _png(fig)

    monkeypatch.setattr(report, "_fig_png", keep_legend)
    assert report.pareto_png(res).startswith(b"\x89PNG")
    assert "noise rule: mAP − 1×SE must stay above the line" in legends
    assert "misses the budget (reason: report table)" in legends
    md = report.render_markdown(res)
    row = next(line for line in md.splitlines() if line.startswith("| int8"))
    assert "misses: mAP drop 0.80 + 1 x 0.40 standard error > 1.00 points" in row
    assert "Noise rule: a variant meets the mAP budget when its drop + 1 × its standard error" in md
    assert "Closest: int8: mAP50-95 drop 0.0080 + 1 × 0.0040 standard error = 0.0120 vs 0.0100 allowed" in md
    html = report.render_html(res, report.pareto_png(res))
    assert 'id="noise-rule"' in html


# ----------------------------------------------------------------------------- export of a model that sees nothing

def test_export_of_a_blind_model_blames_the_model_not_the_images(tmp_path):
    """No detection on the sample images nor on the generated scene: the model is the problem, and the error
    does not send the user looking for other --verify-source images; a model that does detect elsewhere does."""
    import cv2
    import numpy as np
    import torch

    import yolopt
    from conftest import run_cli

    m = yolopt.load(SYNTH_MODEL)
    with torch.no_grad():
        for conv in m.model[-1].m:  # objectness logits -> -30: no box ever passes conf 0.01
            conv.bias.view(3, -1)[:, 4] = -30.0
    blind = yolopt.save(m, tmp_path / "blind.safetensors", imgsz=64)
    r = run_cli("export", blind, "--format", "onnx", "--imgsz", "64", "--out", tmp_path / "b.onnx")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "The PyTorch model itself detects nothing" in lines[0] and "the model is the problem" in lines[0]
    assert "--verify-source" not in lines[0] and "give verification images" not in lines[0]
    assert not (tmp_path / "b.onnx").exists()

    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), np.full((64, 64, 3), 114, np.uint8))
    r = run_cli("export", blind, "--format", "onnx", "--imgsz", "64", "--out", tmp_path / "b.onnx",
                "--verify-source", gray)
    assert r.returncode == 1 and "itself detects nothing (nor on " in r.stderr, r.stderr
    # a model that detects on other images: the images are the problem (the synthetic model sees something even in
    # a gray square, so the rule is checked on verification results as export builds them)
    from yolopt.export.exporter import _nothing_to_compare
    from yolopt.export.verify import NOTHING_HINT, VerifyResult

    problem = f"0 PyTorch / 0 exported detections at conf 0.25 on gray.png: nothing to compare. {NOTHING_HINT}"
    elsewhere = VerifyResult(0, 0, 1.0, 3, 3, sources=["bus.jpg", "zidane.jpg", "a.jpg"], passed=True)
    text, blind = _nothing_to_compare(problem, [elsewhere])
    assert not blind and text.endswith("does detect objects elsewhere (3 on bus.jpg, zidane.jpg and 1 more): "
                                       "give verification images with objects of its classes")
    text, blind = _nothing_to_compare(problem, [VerifyResult(0, 0, 1.0, 0, 0, sources=["generated scene"])])
    assert blind and "itself detects nothing (nor on generated scene)" in text and NOTHING_HINT not in text


# ----------------------------------------------------------------------------- smaller ones (finding 11)

def test_a_warning_during_a_progress_bar_goes_through_its_write(monkeypatch):
    import io
    import logging

    import tqdm

    from yolopt.cli import _OneLineFormatter, _StderrHandler

    written = []
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, s, file=None, **kw: written.append(s)))
    h = _StderrHandler()
    h.setFormatter(_OneLineFormatter())
    rec = logging.LogRecord("yolopt", logging.WARNING, __file__, 1, "a warning", None, None)
    with tqdm.tqdm(total=2, file=io.StringIO()):
        h.emit(rec)
    assert written == ["yolopt: warning: a warning"]


def test_the_report_says_gains_for_a_negative_drop():
    from yolopt.pipeline import OptimizeSpec
    from yolopt.pipeline.records import VariantResult
    from yolopt.pipeline.select import Choice, describe

    lat = {"p50": 10.0}
    base = VariantResult(name="fp32", kind="baseline", status="done", map50_95=0.30, map50=0.5, drop=0.0, fps=50.0,
                         latency_ms=lat, description="fp32")
    v = VariantResult(name="int8", kind="int8", status="done", map50_95=0.3058, map50=0.5, drop=-0.0058, fps=90.0,
                      latency_ms=lat, description="int8")
    text = describe(Choice("int8", True), [base, v], OptimizeSpec("m.pt", "d.yaml", imgsz=[640]))
    assert "It gains 0.58 mAP50-95 points" in text and "costs -" not in text


def test_optimize_help_names_the_sizes_it_uses():
    from yolopt.cli import build_parser
    from yolopt.pipeline.spec import default_sizes

    sub = next(a for a in build_parser()._actions if a.choices and "optimize" in a.choices)
    help_text = " ".join(sub.choices["optimize"].format_help().split())
    assert default_sizes(640) == [640, 576, 512, 416] and "640 -> 640,576,512,416" in help_text


def test_an_export_that_fails_names_its_destination_folder(tmp_path, monkeypatch):
    """A writer's error about its temporary file (a full disk) names the destination, folder included."""
    from dataclasses import replace

    from yolopt.errors import ExportError
    from yolopt.export import ExportSpec, export
    from yolopt.export.exporter import EXPORTERS

    def full(model, out, spec, meta, workdir):
        raise ExportError(f"{out.name}: torch.onnx.export failed ([Errno 28] No space left on device)")

    monkeypatch.setitem(EXPORTERS, "onnx", replace(EXPORTERS["onnx"], write=full))
    out = tmp_path / "deep" / "m.onnx"
    with pytest.raises(ExportError) as e:
        export(SYNTH_MODEL, ExportSpec("onnx", imgsz=64, verify=False, out=out))
    assert str(e.value).startswith(f"{out}: torch.onnx.export failed ([Errno 28]")
    assert not out.exists()


def test_info_prints_a_table_and_json_on_request():
    import json

    from conftest import run_cli

    r = run_cli("info", SYNTH_MODEL)
    assert r.returncode == 0, r.stderr
    with pytest.raises(ValueError):
        json.loads(r.stdout)
    assert "params" in r.stdout
    r = run_cli("info", SYNTH_MODEL, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["nc"] == 2


def test_compress_into_a_folder_another_run_holds_is_refused(tiny_set, tmp_path):
    from conftest import run_cli

    out = tmp_path / "c"
    with FolderLock(out, "compress run"):
        r = run_cli("compress", SYNTH_MODEL, "--data", tiny_set, "--imgsz", "64", "--no-latency", "--out", out)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert f"{out}: another compress run is writing into this folder (pid {os.getpid()}" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [FolderLock.NAME]
