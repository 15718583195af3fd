"""File and run integrity: upstream export metadata read without evaluating code, corrupted
checkpoints refused (zip CRCs, safetensors content hash; fuzzed), ``train --resume`` exact across
the end of warm-up, and ``best.safetensors`` holding only the deployable weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import yolopt
from yolopt.data.synth import generate
from yolopt.engine.checkpoint import read_train_checkpoint
from yolopt.engine.trainer import Callback, train

# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest single-threaded (and do not fight other jobs for the cores)."""
    n, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(n)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


@pytest.fixture(scope="module")
def warm_data(tmp_path_factory) -> Path:
    """8 train images (+2 val): at batch 1 an epoch is 8 optimizer-loop iterations."""
    return generate(tmp_path_factory.mktemp("warm") / "d", images=10, classes=3, imgsz=64, seed=3)


class _Interrupt(Callback):
    """Stops the run in the middle of epoch ``epoch`` (after the previous epoch's checkpoint),
    like a kill: what was computed after that checkpoint is lost."""

    class Stop(Exception):
        pass

    def __init__(self, epoch: int, nb: int):
        self.at = epoch * nb + nb // 2

    def on_step_end(self, trainer, step):
        if step >= self.at:
            raise self.Stop


# batch 1 with nbs 2: 8 iterations per epoch, an optimizer step every 2 batches after warm-up, which
# ends at iteration 100 (the minimum), i.e. inside epoch 12 (0-based); epoch 13 runs entirely on
# the lr schedule. val only at the end, no mosaic closing: the run crosses nothing but the warm-up.
WARM = dict(cfg="yolov5n", imgsz=64, batch=1, nbs=2, epochs=14, progress=False, plots=False, close_mosaic=0,
            val_every=100)


def test_resume_is_bit_exact_across_the_end_of_warmup(warm_data, tmp_path, one_thread):
    from safetensors.torch import load_file

    full = train(warm_data, out=tmp_path / "full", workers=1, **WARM)
    assert len(full.history) == 14
    with pytest.raises(_Interrupt.Stop):  # killed inside epoch 3, long before the warm-up ends
        train(warm_data, out=tmp_path / "cut", workers=0, callbacks=[_Interrupt(3, 8)], **WARM)
    _, _, st = read_train_checkpoint(tmp_path / "cut" / "last.safetensors")
    assert st["epoch"] == 2
    train(resume=tmp_path / "cut", workers=1, progress=False)

    a, b = load_file(tmp_path / "full" / "last.safetensors"), load_file(tmp_path / "cut" / "last.safetensors")
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ after resume, e.g. {diff[:4]}"  # weights, EMA, optimizer, RNG
    _, _, sa = read_train_checkpoint(tmp_path / "full" / "last.safetensors")
    _, _, sb = read_train_checkpoint(tmp_path / "cut" / "last.safetensors")
    for key in ("scheduler", "optimizer", "ema_updates", "last_opt_step", "accumulate"):
        assert sa[key] == sb[key], key
    lrs = [[row[f"lr/pg{j}"] for j in range(3)] for row in sa["history"]]
    assert lrs == [[row[f"lr/pg{j}"] for j in range(3)] for row in sb["history"]]
    assert lrs[13] != lrs[12]  # the last epoch ran on the schedule, after the warm-up


class _StopAfterFirstEpoch(Callback):
    class Stop(Exception):
        pass

    def on_epoch_end(self, trainer, epoch, metrics):
        raise self.Stop


def test_best_holds_only_the_deployable_weights_and_last_still_resumes(warm_data, tmp_path, one_thread):
    import json

    from safetensors import safe_open

    kw = {**WARM, "batch": 4, "nbs": 64, "epochs": 2, "val_every": 1}
    with pytest.raises(_StopAfterFirstEpoch.Stop):
        train(warm_data, out=tmp_path / "run", workers=0, callbacks=[_StopAfterFirstEpoch()], **kw)
    best, last = tmp_path / "run" / "best.safetensors", tmp_path / "run" / "last.safetensors"
    assert best.is_file() and last.is_file()
    n_params = yolopt.load(best).num_params()
    assert best.stat().st_size < 4 * n_params * 1.15  # fp32 weights + BN statistics + header, nothing more
    assert last.stat().st_size > 2.5 * best.stat().st_size  # raw weights, optimizer momenta: only in last
    with safe_open(str(best), "pt") as f:
        keys, md = list(f.keys()), f.metadata()
    assert not [k for k in keys if k.startswith(("train.", "optim.", "rng."))]
    assert set(md) == {"yolopt"} and json.loads(md["yolopt"])["format"] == "yolopt-model"
    with pytest.raises(yolopt.errors.CheckpointError, match="not a yolopt training checkpoint"):
        read_train_checkpoint(best)  # best is no resume point
    m = yolopt.load(best)  # the EMA weights of the best epoch (the only one so far), as a plain model
    assert m.nc == 3 and m.names[0] == "circle" and m.imgsz == 64
    tensors, _, _ = read_train_checkpoint(last)
    ema = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    assert m.state_dict().keys() == ema.keys() and all(torch.equal(v, ema[k]) for k, v in m.state_dict().items())

    before = best.read_bytes()
    train(resume=tmp_path / "run", workers=0, progress=False)  # last still resumes
    tensors, _, st = read_train_checkpoint(last)
    assert st["epoch"] == 1 and len(st["history"]) == 2
    ema = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    improved = st["history"][1]["fitness"] > st["history"][0]["fitness"]
    same = all(torch.equal(v, ema[k]) for k, v in yolopt.load(best).state_dict().items())
    assert same == improved and (best.read_bytes() == before) == (not improved)
