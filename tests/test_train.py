"""Training engine: augmentation keeps labels, optimiser groups, exact resume, SIGKILL resume,
NaN stop, freeze, DDP (gloo, 2 CPU processes) and bad input. Tiny synthetic data only."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import yolopt
from yolopt.data.synth import generate
from yolopt.engine import loader as L
from yolopt.engine.checkpoint import read_train_checkpoint
from yolopt.engine.loss import DEFAULT_HYP
from yolopt.engine.ema import unwrap
from yolopt.engine.trainer import Callback, TrainConfig, Trainer, TrainingError, build_optimizer, close_mosaic_epochs, lr_lambda, train
from yolopt.models import DetectionModel, builtin_config

from conftest import ROOT, run_cli

TINY = dict(cfg="yolov5n", imgsz=64, batch=4, workers=0, progress=False, plots=False, close_mosaic=1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs single-threaded (see conftest.one_thread)."""
    yield


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "d", images=15, classes=3, imgsz=64, seed=11)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


# ----------------------------------------------------------------------------- data pipeline


def test_flip_and_letterbox_keep_labels_consistent(tiny_data):
    idx, _ = L.index_split(tiny_data, "train")
    hyp = {**DEFAULT_HYP, "mosaic": 0.0, "translate": 0.0, "scale": 0.0, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0,
           "fliplr": 1.0}
    k = next(i for i, lab in enumerate(idx.labels) if len(lab))
    ds = L.TrainDataset(idx, 64, hyp, seed=0)
    img, lab, *_ = ds[(k, 0, False)]
    ref = idx.labels[k]
    assert lab.shape == (len(ref), 6)
    np.testing.assert_allclose(lab[:, 1].numpy(), ref[:, 0])
    np.testing.assert_allclose(lab[:, 2].numpy(), 1 - ref[:, 1], atol=2e-3)  # mirrored x
    np.testing.assert_allclose(lab[:, 3:].numpy(), ref[:, 2:], atol=2e-3)
    from yolopt.data.images import read_image

    orig = read_image(idx.files[k])[..., ::-1]  # RGB
    np.testing.assert_array_equal(img.numpy().transpose(1, 2, 0), orig[:, ::-1])


def test_mosaic_and_affine_boxes_stay_on_objects(tiny_data):
    idx, _ = L.index_split(tiny_data, "train")
    ds = L.TrainDataset(idx, 64, dict(DEFAULT_HYP, hsv_h=0, hsv_s=0, hsv_v=0), seed=1)
    total = 0
    for i in range(len(ds)):
        img, lab, *_ = ds[(i, 2, True)]
        assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
        if len(lab):
            xywh = lab[:, 2:]
            assert (xywh[:, :2] >= 0).all() and (xywh[:, :2] <= 1).all() and (xywh[:, 2:] > 0).all()
            for _, _, cx, cy, w, h in lab.tolist():  # a box never covers only mosaic padding
                x1, y1 = int((cx - w / 2) * 64), int((cy - h / 2) * 64)
                x2, y2 = max(int((cx + w / 2) * 64), x1 + 1), max(int((cy + h / 2) * 64), y1 + 1)
                assert (img[:, y1:y2, x1:x2] != 114).any()
        total += len(lab)
    assert total > 0
    # same (seed, epoch, index) -> same sample; another epoch -> a different one
    a, b, c = ds[(3, 5, True)], ds[(3, 5, True)], ds[(3, 6, True)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_label_cache_is_reused_and_invalidated(tiny_data):
    idx, _ = L.index_split(tiny_data, "val")
    cache = Path(str(L.label_path(idx.files[0]).parent) + ".yolopt.cache")
    assert cache.is_file()
    lp = L.label_path(idx.files[0])
    old = lp.read_text()
    try:
        lp.write_text("7 0.5 0.5 0.1 0.1\n")  # class 7 of 3: the cache must not hide it
        with pytest.raises(yolopt.errors.DatasetError, match=r"class id 7 out of range"):
            L.index_split(tiny_data, "val")
    finally:
        lp.write_text(old)


def test_sampler_splits_ranks_and_depends_only_on_epoch():
    s0, s1 = L.EpochSampler(7, seed=0, rank=0, world=2), L.EpochSampler(7, seed=0, rank=1, world=2)
    s0.set_epoch(3, True)
    s1.set_epoch(3, True)
    a, b = [k[0] for k in s0], [k[0] for k in s1]
    assert len(a) == len(b) == 4 and set(a) | set(b) == set(range(7))
    s0.set_epoch(3, True)
    assert [k[0] for k in s0] == a


# ----------------------------------------------------------------------------- optimisation


def test_optimizer_groups_and_schedules():
    model = DetectionModel(builtin_config("yolov5n", nc=3))
    opt = build_optimizer(model, 0.01, 0.937, 0.0005)
    g_bias, g_w, g_bn = opt.param_groups
    assert g_bias["weight_decay"] == 0 and g_bn["weight_decay"] == 0 and g_w["weight_decay"] == 0.0005
    assert g_bias["nesterov"] and g_bias["momentum"] == 0.937
    n_bn = sum(1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert len(g_bn["params"]) == n_bn
    assert len(g_bias["params"]) == n_bn + 3  # BN biases + Detect conv biases
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    adam = build_optimizer(model, 0.001, 0.9, 0.0005, "AdamW")
    assert isinstance(adam, torch.optim.AdamW) and adam.param_groups[0]["betas"] == (0.9, 0.999)
    assert [g["weight_decay"] for g in adam.param_groups] == [0.0, 0.0005, 0.0]
    with pytest.raises(yolopt.errors.YoloptError, match="unknown optimizer 'Lion'"):
        build_optimizer(model, 0.01, 0.937, 0.0005, "Lion")
    lin, cos = lr_lambda(100, 0.01, False), lr_lambda(100, 0.01, True)
    assert lin(0) == pytest.approx(1) and lin(50) == pytest.approx(0.505) and lin(100) == pytest.approx(0.01)
    assert cos(0) == pytest.approx(1) and cos(50) == pytest.approx(0.505) and cos(100) == pytest.approx(0.01)


# ----------------------------------------------------------------------------- runs


class _StopAfterFirstEpoch(Callback):
    class Stop(Exception):
        pass

    def on_epoch_end(self, trainer, epoch, metrics):
        raise self.Stop


def test_resume_is_bit_exact_and_outputs_are_written(tiny_data, tmp_path):
    full = train(tiny_data, epochs=2, out=tmp_path / "full", **TINY)
    assert full.epochs == 2 and len(full.history) == 2
    rows = (tmp_path / "full" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,train/box_loss")
    with pytest.raises(_StopAfterFirstEpoch.Stop):
        train(tiny_data, epochs=2, out=tmp_path / "cut", callbacks=[_StopAfterFirstEpoch()], **TINY)
    _, _, st = read_train_checkpoint(tmp_path / "cut" / "last.safetensors")
    assert st["epoch"] == 0
    train(resume=tmp_path / "cut", workers=1, progress=False)  # another worker count: same batches
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "full" / "last.safetensors"), load_file(tmp_path / "cut" / "last.safetensors")
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, diff[:5]
    # last/best are ordinary yolopt models (EMA weights)
    m = yolopt.load(tmp_path / "cut" / "best.safetensors")
    assert m.nc == 3 and m.names[0] == "circle"
    ema = {k[len("model."):]: v for k, v in a.items() if k.startswith("model.")}
    assert torch.equal(m.state_dict()["model.24.m.0.weight"], ema["model.24.m.0.weight"])


def test_nan_loss_stops_with_message_and_keeps_last(tiny_data, tmp_path):
    class Poison(Callback):
        def extra_loss(self, trainer, imgs, targets, preds):
            return torch.tensor(float("nan")) if trainer.epoch == 1 else None

    with pytest.raises(TrainingError, match=r"non-finite loss.*epoch 2, batch 1.*last good checkpoint kept"):
        train(tiny_data, epochs=3, out=tmp_path / "nan", callbacks=[Poison()], **TINY)
    _, _, st = read_train_checkpoint(tmp_path / "nan" / "last.safetensors")
    assert st["epoch"] == 0  # epoch 1's checkpoint, untouched
    yolopt.load(tmp_path / "nan" / "last.safetensors")


def test_freeze_keeps_backbone_and_extra_loss_hook_runs(tiny_data, tmp_path):
    torch.manual_seed(0)
    start = DetectionModel(builtin_config("yolov5n", nc=3))
    start.names = ["a", "b", "c"]
    yolopt.save(start, tmp_path / "start.safetensors", imgsz=64)
    calls = []

    class Count(Callback):
        def extra_loss(self, trainer, imgs, targets, preds):
            calls.append(imgs.shape[0])
            with torch.no_grad():
                t = trainer.teacher(imgs)  # frozen teacher in eval mode: decoded outputs
            s = torch.cat([p[..., 4].flatten(1) for p in preds], 1)
            assert t.shape[:2] == s.shape and not trainer.teacher.training
            return 0.1 * torch.nn.functional.binary_cross_entropy_with_logits(s, t[..., 4])

    teacher = DetectionModel(builtin_config("yolov5n", nc=3))
    res = train(tiny_data, epochs=1, out=tmp_path / "fz", freeze=10, callbacks=[Count()], teacher=teacher,
                **{**TINY, "cfg": None, "weights": str(tmp_path / "start.safetensors")})
    assert sum(calls) == 12  # every training image went through the hook
    from safetensors.torch import load_file

    sd = load_file(res.last)
    s0 = start.state_dict()
    assert torch.equal(sd["train.model.model.0.conv.weight"], s0["model.0.conv.weight"])  # frozen
    assert torch.equal(sd["train.model.model.9.cv2.conv.weight"], s0["model.9.cv2.conv.weight"])
    assert not torch.equal(sd["train.model.model.24.m.0.weight"], s0["model.24.m.0.weight"])  # trained


def test_sigkill_mid_epoch_then_resume(tiny_data, tmp_path):
    data = generate(tmp_path / "d", images=60, classes=3, imgsz=96, seed=5)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "yolopt", "train", "--data", str(data), "--cfg", "yolov5n", "--epochs", "3",
           "--imgsz", "96", "--batch", "4", "--workers", "1", "--out", str(out), "--no-progress", "--val-every", "9"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = out / "last.safetensors"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
    time.sleep(0.3)  # into epoch 2
    assert proc.poll() is None, "run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _, _, st = read_train_checkpoint(last)  # complete and readable
    assert st["epoch"] in (0, 1)
    r = run_cli("train", "--resume", out, "--no-progress", "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    _, _, st = read_train_checkpoint(last)
    assert st["epoch"] == 2 and len(st["history"]) == 3
    assert [row["epoch"] for row in st["history"]] == [1, 2, 3]
    rows = (out / "results.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3]

    v = run_cli("val", out / "best.safetensors", "--data", data, "--imgsz", "96", "--json", tmp_path / "v.json")
    assert v.returncode == 0, v.stderr
    assert 0 <= json.loads((tmp_path / "v.json").read_text())["map50"] <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_gloo(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "yolopt", "train", "--data", str(tiny_data), "--cfg", "yolov5n",
           "--epochs", "1", "--imgsz", "64", "--batch", "8", "--workers", "0", "--device", "cpu", "--out", str(out),
           "--no-progress"]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(2 processes)" in r.stderr
    assert r.stderr.count("done: 1 epochs") == 1  # rank-0-only logging
    _, _, st = read_train_checkpoint(out / "last.safetensors")
    assert st["epoch"] == 0 and st["config"]["batch"] == 8
    assert len((out / "results.csv").read_text().strip().splitlines()) == 2
    assert yolopt.load(out / "best.safetensors").nc == 3


# ----------------------------------------------------------------------------- seams for compression


def _drop_stem_channels(model, keep) -> None:
    """Prune by hand, in place: keep only output channels ``keep`` of layer 0 (conv + BN) and the
    matching input channels of layer 1's conv, as a channel pruner would."""
    l0, l1 = model.model[0], model.model[1]
    dev = l0.conv.weight.device
    keep = torch.as_tensor(keep, device=dev)
    conv0 = nn.Conv2d(l0.conv.in_channels, len(keep), l0.conv.kernel_size, l0.conv.stride, l0.conv.padding,
                      bias=False).to(dev)
    bn0 = nn.BatchNorm2d(len(keep), eps=l0.bn.eps, momentum=l0.bn.momentum).to(dev).train(l0.bn.training)
    conv1 = nn.Conv2d(len(keep), l1.conv.out_channels, l1.conv.kernel_size, l1.conv.stride, l1.conv.padding,
                      bias=False).to(dev)
    with torch.no_grad():
        conv0.weight.copy_(l0.conv.weight[keep])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn0, name).copy_(getattr(l0.bn, name)[keep])
        bn0.num_batches_tracked.copy_(l0.bn.num_batches_tracked)
        conv1.weight.copy_(l1.conv.weight[:, keep])
    l0.conv, l0.bn, l1.conv = conv0, bn0, conv1


KEEP12 = [0, 1, 2, 3, 5, 7, 8, 9, 11, 13, 14, 15]  # 12 of yolov5n's 16 stem channels


def _pruned_student(nc: int = 3) -> DetectionModel:
    torch.manual_seed(0)
    m = DetectionModel(builtin_config("yolov5n", nc=nc))
    _drop_stem_channels(m, KEEP12)
    return m


def test_pruned_in_memory_model_trains_reloads_and_resumes_bit_exact(tiny_data, tmp_path):
    kw = {**TINY, "cfg": None}
    student = _pruned_student()
    t = Trainer(TrainConfig(data=str(tiny_data), epochs=2, out=str(tmp_path / "full"), **kw), model=student)
    res = t.train()
    assert unwrap(t.model) is student  # trained in place
    loaded = yolopt.load(res.last)  # the yolopt loader rebuilds the irregular widths from tensor shapes
    assert loaded.model[0].conv.out_channels == 12 and loaded.model[1].conv.in_channels == 12
    assert loaded.num_params() == t.ema.ema.num_params() < DetectionModel(builtin_config("yolov5n", nc=3)).num_params()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), t.ema.ema.eval()(x), rtol=0, atol=0)
    _, meta, _ = read_train_checkpoint(res.last)
    assert meta["provenance"]["trained_from"] == "a model given in Python"

    # cut after epoch 1, resume: the architecture comes from the checkpoint (the yaml would give 16 channels)
    with pytest.raises(_StopAfterFirstEpoch.Stop):
        train(tiny_data, model=_pruned_student(), epochs=2, out=tmp_path / "cut", callbacks=[_StopAfterFirstEpoch()],
              **kw)
    train(resume=tmp_path / "cut", workers=0, progress=False)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "full" / "last.safetensors"), load_file(tmp_path / "cut" / "last.safetensors")
    assert a.keys() == b.keys() and a["train.model.model.0.conv.weight"].shape[0] == 12
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, diff[:5]


def test_model_argument_is_checked(tiny_data, tmp_path):
    kw = {**TINY, "cfg": None}
    four = DetectionModel(builtin_config("yolov5n", nc=4))
    with pytest.raises(yolopt.errors.YoloptError, match=r"model=: the model predicts 4 classes but .*data.yaml has 3"):
        train(tiny_data, model=four, epochs=1, out=tmp_path / "a", **kw)
    with pytest.raises(yolopt.errors.YoloptError, match="give model= or weights/cfg, not both"):
        train(tiny_data, model=four, epochs=1, out=tmp_path / "b", **TINY)
    with pytest.raises(yolopt.errors.YoloptError, match="model= cannot be combined with resume"):
        train(resume=tmp_path / "c", model=four)
    with pytest.raises(yolopt.errors.YoloptError, match="expected a yolopt DetectionModel, got Conv2d"):
        train(tiny_data, model=nn.Conv2d(3, 3, 1), epochs=1, out=tmp_path / "d", **kw)
    with pytest.raises(yolopt.errors.YoloptError, match="no teacher"):
        Trainer(TrainConfig(data=str(tiny_data))).teacher_outputs(torch.zeros(1, 3, 64, 64))


def test_hooks_prepare_model_and_after_backward_in_order(tiny_data, tmp_path, monkeypatch):
    from yolopt.models.common import Conv

    events: list[str] = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: (events.append("clip"), clip(*a, **k))[1])

    class Spy(Callback):
        def prepare_model(self, trainer, model):
            assert trainer.optimizer is None and trainer.ema is None  # before both exist
            assert next(model.parameters()).device == trainer.device
            events.append("prepare")
            self.new = copy.deepcopy(model)  # a replacement, as QAT would build it
            for m in self.new.modules():
                if isinstance(m, Conv):
                    m.act = nn.Hardswish()
            return self.new

        def extra_loss(self, trainer, imgs, targets, preds):
            assert trainer.student_feats is None  # nobody asked for features: none kept
            events.append("batch")

        def on_after_backward(self, trainer):
            bns = [m for m in unwrap(trainer.model).modules() if isinstance(m, nn.BatchNorm2d)]
            assert bns and all(m.weight.grad is not None for m in bns)
            for m in bns:  # BN-L1 sparsity (network slimming)
                m.weight.grad.add_(1e-4 * torch.sign(m.weight.detach()))
            events.append("after_backward")
            with pytest.raises(TrainingError, match="during a batch"):
                trainer.rebuild_optimizer()

        def on_step_end(self, trainer, step):
            events.append("step_end")

    spy = Spy()
    # nbs 400 with batch 4: gradients accumulate over more and more batches during warm-up
    t = Trainer(TrainConfig(data=str(tiny_data), epochs=2, nbs=400, out=str(tmp_path / "h"), **TINY),
                callbacks=[spy])
    t.train()
    assert events[0] == "prepare" and events.count("prepare") == 1
    assert t.model is spy.new and isinstance(t.ema.ema.model[0].act, nn.Hardswish)
    in_opt = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in spy.new.parameters()}
    steps = [e for e in events if e in ("after_backward", "clip", "step_end")]
    assert steps and steps == ["after_backward", "clip", "step_end"] * (len(steps) // 3)
    assert 0 < events.count("after_backward") < events.count("batch") == 6  # once per optimizer step


class _PruneAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch == 0:
            lrs = [g["lr"] for g in trainer.optimizer.param_groups]
            _drop_stem_channels(unwrap(trainer.model), KEEP12)
            trainer.rebuild_optimizer()
            assert [g["lr"] for g in trainer.optimizer.param_groups] == lrs  # schedule position kept
            self.ema_updates = trainer.ema.updates

    def on_epoch_start(self, trainer, epoch):
        if epoch == 1:  # the new optimizer and EMA hold the pruned parameters
            model = unwrap(trainer.model)
            assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == \
                {id(p) for p in model.parameters()}
            assert trainer.ema.ema.model[0].conv.out_channels == 12 and trainer.ema.updates == self.ema_updates


def test_rebuild_optimizer_after_pruning_mid_training(tiny_data, tmp_path):
    res = train(tiny_data, epochs=2, out=tmp_path / "p", callbacks=[_PruneAfterFirstEpoch()], **TINY)
    assert len(res.history) == 2 and all(np.isfinite(h["train/box_loss"]) for h in res.history)
    _, _, st = read_train_checkpoint(res.last)
    assert st["epoch"] == 1
    m = yolopt.load(res.last)
    assert m.model[0].conv.out_channels == 12 and m.model[1].conv.in_channels == 12
    assert m.num_params() < DetectionModel(builtin_config("yolov5n", nc=3)).num_params()


def test_teacher_outputs_and_student_features_for_distillation(tiny_data, tmp_path):
    seen: dict = {}

    class FeatureDistill(Callback):
        needs_features = True

        def extra_loss(self, trainer, imgs, targets, preds):
            t_raw, t_feats = trainer.teacher_outputs(imgs)
            s_feats = trainer.student_feats
            assert not trainer.teacher.training and not any(t.requires_grad for t in t_raw + t_feats)
            assert all(f.requires_grad for f in s_feats)
            assert [r.shape[:4] for r in t_raw] == [p.shape[:4] for p in preds] and t_raw[0].shape[-1] == 10
            # the features are this very forward pass's Detect inputs
            raw = unwrap(trainer.model).detect.raw_maps(s_feats)
            assert all(torch.equal(a, b) for a, b in zip(raw, preds))
            seen.setdefault("shapes", [tuple(f.shape) for f in s_feats])
            seen["calls"] = seen.get("calls", 0) + 1
            return 0.01 * sum(nn.functional.mse_loss(s, t) for s, t in zip(s_feats, t_feats))

    teacher = DetectionModel(builtin_config("yolov5n", nc=5)).train()  # another class count is fine
    train(tiny_data, epochs=1, out=tmp_path / "kd", callbacks=[FeatureDistill()], teacher=teacher, **TINY)
    assert seen["calls"] == 3
    assert seen["shapes"] == [(4, 64, 8, 8), (4, 128, 4, 4), (4, 256, 2, 2)]


# ----------------------------------------------------------------------------- bad input


def _one_line_error(r, *needles):
    assert r.returncode == 1, (r.returncode, r.stderr[-1000:])
    err = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("yolopt: error:")]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-1000:]
    for n in needles:
        assert n in err[0], err[0]


def test_bad_input_exits_with_one_line(tiny_data, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_data.parent, bad)
    lab = sorted((bad / "labels" / "train").glob("*.txt"))[2]
    lab.write_text("5 0.5 0.5 0.2 0.2\n")
    _one_line_error(run_cli("train", "--data", bad / "data.yaml", "--cfg", "yolov5n", "--epochs", "1",
                            "--imgsz", "64", "--out", tmp_path / "o1"), str(lab), "class id 5 out of range")
    empty = tmp_path / "empty"
    (empty / "images" / "train").mkdir(parents=True)
    (empty / "images" / "val").mkdir(parents=True)
    (empty / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [a]\n")
    _one_line_error(run_cli("train", "--data", empty / "data.yaml", "--cfg", "yolov5n", "--out", tmp_path / "o2"),
                    "images/train", "empty")
    _one_line_error(run_cli("train", "--data", tiny_data, "--cfg", "yolov5q.yaml", "--out", tmp_path / "o3"),
                    "--cfg yolov5q.yaml", "unknown model config")
    (tmp_path / "norun").mkdir()
    _one_line_error(run_cli("train", "--resume", tmp_path / "norun"), "norun", "no last.safetensors")
    r = run_cli("train", "--resume", cwd=tmp_path / "norun")
    _one_line_error(r, "--resume", "runs/train")  # bare --resume: newest run under ./runs/train
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 0.02\nmomentm: 0.9\n")  # typo must not be silently ignored
    _one_line_error(run_cli("train", "--data", tiny_data, "--cfg", "yolov5n", "--hyp", hyp, "--out", tmp_path / "o4"),
                    str(hyp), "unknown hyperparameter 'momentm' (did you mean 'momentum'?)")


def test_hyp_file_overrides_defaults_and_tolerates_upstream_extras(tmp_path):
    from yolopt.engine.trainer import load_hyp

    p = tmp_path / "hyp.scratch-low.yaml"
    p.write_text("lr0: 0.02\nscale: 0.25\ncopy_paste: 0.0\nanchors: 3\n")  # upstream files carry the last two
    hyp = load_hyp(str(p))
    assert hyp["lr0"] == 0.02 and hyp["scale"] == 0.25 and hyp["momentum"] == DEFAULT_HYP["momentum"]
    assert "copy_paste" not in hyp and "anchors" not in hyp
    p.write_text("lr0: fast\n")
    with pytest.raises(yolopt.errors.YoloptError, match="'lr0' must be a number"):
        load_hyp(str(p))


class _FirstLrs(Callback):
    def __init__(self):
        self.lrs = []

    def on_after_backward(self, trainer):
        self.lrs.append([g["lr"] for g in trainer.optimizer.param_groups])


def test_warmup_epochs_zero_means_no_warmup(tiny_data, tmp_path):
    """Upstream warms up for at least 100 iterations; hyp warmup_epochs 0 turns warm-up off, so a short
    fine-tune starts at lr0 (bias lr too) instead of bias lr 0.1."""
    runs = {}
    for w in (0.0, 3.0):
        cb = _FirstLrs()
        train(tiny_data, epochs=1, out=str(tmp_path / f"w{w}"), callbacks=[cb], hyp={"lr0": 0.01, "warmup_epochs": w},
              nbs=4, **TINY)
        runs[w] = cb.lrs
    assert all(lr == pytest.approx(0.01) for lrs in runs[0.0] for lr in lrs)
    assert runs[3.0][0][0] == pytest.approx(DEFAULT_HYP["warmup_bias_lr"]) and runs[3.0][0][1] == 0.0


class _MosaicFlags(Callback):
    def __init__(self):
        self.flags = {}

    def on_after_backward(self, trainer):
        self.flags.setdefault(trainer.epoch, set()).add(trainer.sampler.mosaic)


@pytest.mark.parametrize("close,epochs,expect", [(None, 3, 0), (None, 12, 10), (2, 3, 2), (3, 3, 3), (5, 3, 3), (0, 3, 0)])
def test_close_mosaic_epochs(close, epochs, expect):
    """--close-mosaic N turns mosaic off for the last N epochs, the whole run when N >= epochs; by default
    only a run longer than 10 epochs closes it (its last 10)."""
    assert close_mosaic_epochs(close, epochs) == expect


def test_close_mosaic_as_long_as_the_run_turns_mosaic_off_throughout(tiny_data, tmp_path):
    seen = {}
    for close in (2, 1):
        cb = _MosaicFlags()
        train(tiny_data, epochs=2, out=str(tmp_path / f"c{close}"), callbacks=[cb],
              **{**TINY, "close_mosaic": close})
        seen[close] = cb.flags
    assert seen[2] == {0: {False}, 1: {False}}
    assert seen[1] == {0: {True}, 1: {False}}
