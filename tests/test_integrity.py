"""File and run integrity: upstream export metadata read without evaluating code, corrupted
checkpoints refused (zip CRCs, safetensors content hash; fuzzed), ``train --resume`` exact across
the end of warm-up, and ``best.safetensors`` holding only the deployable weights."""

from __future__ import annotations

import copy
import json
import random
import shutil
import signal
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

import yolopt
from yolopt import runtime
from yolopt.data.synth import generate
from yolopt.engine.checkpoint import read_train_checkpoint, save_train_checkpoint
from yolopt.engine.trainer import Callback, TrainConfig, Trainer, build_optimizer, train
from yolopt.evaluate import evaluate
from yolopt.models import DetectionModel, builtin_config
from yolopt.models.checkpoint import content_hash, write_safetensors

from conftest import run_cli

# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread(one_thread):
    """Torch on one thread for this module (conftest): the models here are small, and two cores shared with other
    work lose more to spinning threads than they gain."""


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
    full = train(warm_data, out=tmp_path / "full", workers=1, **WARM)
    assert len(full.history) == 14
    with pytest.raises(_Interrupt.Stop):  # killed inside epoch 3, long before the warm-up ends
        train(warm_data, out=tmp_path / "cut", workers=0, callbacks=[_Interrupt(3, 8)], **WARM)
    tensors, _, st = read_train_checkpoint(tmp_path / "cut" / "last.safetensors")
    assert st["epoch"] == 2 and st["scheduler"]["last_epoch"] == 3  # epoch 3 is next; the schedule is at 3

    # a checkpoint from before the schedule was saved resumes at the same position
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "cut", old)
    with safe_open(str(old / "last.safetensors"), "pt") as f:
        md = f.metadata()
    write_safetensors(old / "last.safetensors", tensors, {
        **md, "yolopt_train": json.dumps({k: v for k, v in st.items() if k != "scheduler"})})
    t = Trainer(TrainConfig(data=str(warm_data), workers=0), resume=old / "last.safetensors")
    t._setup()
    assert t.start_epoch == 3 and t.scheduler.last_epoch == 3
    assert t.scheduler.get_last_lr() == [g["lr"] for g in st["optimizer"]["param_groups"]]

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


# ----------------------------------------------------------------------------- corrupted checkpoints


def _one_line_refusal(err: Exception, path: Path) -> str:
    msg = str(err)
    assert "\n" not in msg and msg.startswith(f"{path}:"), msg
    return msg


def _zip_headers(data: bytes, path: Path) -> list[tuple[int, int]]:
    """Byte spans of a zip's local file headers (with names and extra fields) and of its central
    directory + end record."""

    with zipfile.ZipFile(path) as zf:
        spans = []
        for info in zf.infolist():
            o = info.header_offset
            name_len, extra_len = struct.unpack("<HH", data[o + 26:o + 30])
            spans.append((o, o + 30 + name_len + extra_len))
        spans.append((zf.start_dir, len(data)))
    return spans


def _zip_data(path: Path) -> list[tuple[int, int]]:
    """Byte spans of the records' contents (pickle and tensor storages)."""

    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        out = []
        for info in zf.infolist():
            o = info.header_offset
            name_len, extra_len = struct.unpack("<HH", data[o + 26:o + 30])
            start = o + 30 + name_len + extra_len
            if info.compress_size:
                out.append((start, start + info.compress_size))
    return out


def _safetensors_spans(data: bytes) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:

    (n,) = struct.unpack("<Q", data[:8])
    return [(0, 8 + n)], [(8 + n, len(data))]


KINDS = ("data", "header", "truncate", "zero", "header+data")


def _mutate(data: bytes, seed: int, headers, contents) -> tuple[bytes, str]:

    r = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    b = bytearray(data)

    def flip(spans, times):
        for _ in range(times):
            lo, hi = r.choice(spans)
            p = r.randrange(lo, hi)
            b[p] ^= 1 << r.randrange(8)

    if kind == "data":
        flip(contents, r.randint(1, 3))
    elif kind == "header":
        flip(headers, r.randint(1, 2))
    elif kind == "header+data":
        flip(headers, 1)
        flip(contents, 1)
    elif kind == "truncate":
        b = b[:r.randrange(0, len(b))]
    else:
        p = r.randrange(len(b))
        n = r.choice([8, 64, 512, 4096])
        b[p:p + n] = bytes(len(b[p:p + n]))
    return bytes(b), kind


class _Hang(Exception):
    pass


def _load_with_deadline(path: Path, seconds: float = 20.0):
    def alarm(*_):
        raise _Hang(f"{path}: still loading after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return yolopt.load(path)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _same_model(m, ref) -> bool:
    a, b = m.state_dict(), ref.state_dict()
    return (a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
            and m.names == ref.names and torch.equal(m.stride, ref.stride) and m.yaml == ref.yaml)


def _fuzz(src: Path, ref, spans, tmp: Path, seeds: int) -> dict[str, list]:
    """Load ``seeds`` mutated copies of ``src``: each must load as ``ref`` exactly or be refused
    with one CheckpointError line; returns {outcome: [(seed, kind, path)]}."""
    data = src.read_bytes()
    outcome: dict[str, list] = {"same": [], "refused": []}
    for seed in range(seeds):
        mutated, kind = _mutate(data, seed, *spans)
        f = tmp / f"{src.stem}.{seed}.{kind}{src.suffix}"
        f.write_bytes(mutated)
        try:
            m = _load_with_deadline(f)
        except yolopt.errors.CheckpointError as e:
            _one_line_refusal(e, f)
            outcome["refused"].append((seed, kind, f))
            continue
        # anything else (another exception, a hang) fails the test right here
        assert _same_model(m, ref), f"seed {seed} ({kind}): {f.name} loaded silently as a different model"
        outcome["same"].append((seed, kind, f))
    return outcome


def _cli_refusals(files: list[Path]) -> None:
    """`yolopt info FILE` on each (in process: conftest's run_cli): exit 1, one `yolopt: error: FILE: ...` line,
    no traceback."""

    for f in files:
        p = run_cli("info", f)
        err = p.stderr
        lines = err.strip().splitlines()
        assert p.returncode == 1 and "Traceback" not in err, err
        assert len(lines) == 1 and lines[0].startswith(f"yolopt: error: {f}:"), err


SEEDS = 45


def test_fuzzed_pt_loads_identically_or_is_refused_in_one_line(yolov5n_pt, yolov5n, tmp_path):
    data = yolov5n_pt.read_bytes()
    res = _fuzz(yolov5n_pt, yolov5n, (_zip_headers(data, yolov5n_pt), _zip_data(yolov5n_pt)), tmp_path, SEEDS)
    assert len(res["same"]) + len(res["refused"]) == SEEDS
    # every change to a record's bytes is caught by the zip CRCs (flipped padding may load, identical)
    assert all(kind not in ("data", "header+data", "truncate") for _, kind, _ in res["same"]), res["same"]
    assert len(res["refused"]) >= SEEDS * 3 // 4
    crc = [f for _, kind, f in res["refused"] if kind == "data"]
    _cli_refusals([crc[0], next(f for _, kind, f in res["refused"] if kind in ("header", "zero"))])


def test_fuzzed_safetensors_loads_identically_or_is_refused_in_one_line(yolov5n, tmp_path):
    src = yolopt.save(yolov5n, tmp_path / "yolov5n.safetensors")
    ref = yolopt.load(src)
    assert _same_model(ref, yolov5n)
    res = _fuzz(src, ref, _safetensors_spans(src.read_bytes()), tmp_path, SEEDS)
    assert all(kind not in ("data", "header+data", "truncate") for _, kind, _ in res["same"]), res["same"]
    assert len(res["refused"]) >= SEEDS * 3 // 4
    _cli_refusals([next(f for _, kind, f in res["refused"] if kind == k) for k in ("data", "header")])


def test_crc_mismatch_in_a_pt_is_refused_naming_the_record(yolov5n_pt, tmp_path):
    data = bytearray(yolov5n_pt.read_bytes())
    with zipfile.ZipFile(yolov5n_pt) as zf:
        rec = max(zf.infolist(), key=lambda i: i.compress_size)  # the largest tensor storage
    lo, hi = next((a, b) for a, b in _zip_data(yolov5n_pt) if b - a == rec.compress_size)
    data[(lo + hi) // 2] ^= 0x10  # one bit of one weight
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(yolopt.errors.CheckpointError) as e:
        yolopt.load(bad)
    msg = _one_line_refusal(e.value, bad)
    assert f"record {rec.filename!r}" in msg and "CRC" in msg


def _header_meta(path: Path) -> dict:

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _rewrite_header(path: Path, out: Path, edit) -> Path:
    """Copy a safetensors file with ``edit(metadata dict) -> metadata dict`` applied (tensors untouched)."""

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = edit(dict(header["__metadata__"]))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    return out


def test_safetensors_content_hash_covers_tensors_and_metadata(yolov5n, tmp_path):
    src = yolopt.save(yolov5n, tmp_path / "m.safetensors")
    desc = json.loads(_header_meta(src)["yolopt"])
    assert desc["version"] == 2 and len(desc["sha256"]) == 64

    assert content_hash(load_file(str(src)), _header_meta(src)) == desc["sha256"]

    # a tensor byte
    data = bytearray(src.read_bytes())
    data[-1000] ^= 0x01
    (tmp_path / "w.safetensors").write_bytes(bytes(data))
    # a class name, same length (the header still parses; nothing but the name changes)
    renamed = _rewrite_header(src, tmp_path / "n.safetensors", lambda md: {
        **md, "yolopt": md["yolopt"].replace('"person"', '"persom"')})
    # the stride
    stride = _rewrite_header(src, tmp_path / "s.safetensors", lambda md: {
        **md, "yolopt": md["yolopt"].replace('"stride": [8.0, 16.0, 32.0]', '"stride": [8.0, 16.0, 64.0]')})
    # the hash removed from a version-2 file
    nohash = _rewrite_header(src, tmp_path / "h.safetensors", lambda md: {
        **md, "yolopt": json.dumps({k: v for k, v in json.loads(md["yolopt"]).items() if k != "sha256"})})
    for bad, needle in [(tmp_path / "w.safetensors", "SHA-256"), (renamed, "SHA-256"), (stride, "SHA-256"),
                        (nohash, "hash is missing")]:
        assert bad.read_bytes() != src.read_bytes()
        with pytest.raises(yolopt.errors.CheckpointError, match=needle) as e:
            yolopt.load(bad)
        _one_line_refusal(e.value, bad)

    # a bad header length / header JSON: one line, no traceback
    data = bytearray(src.read_bytes())
    data[8 + 1] = ord("!")  # {"__metadata__"... -> {!__metadata__"
    (tmp_path / "j.safetensors").write_bytes(bytes(data))
    with pytest.raises(yolopt.errors.CheckpointError, match="corrupt safetensors header") as e:
        yolopt.load(tmp_path / "j.safetensors")
    _one_line_refusal(e.value, tmp_path / "j.safetensors")


def test_safetensors_written_before_the_hash_still_load(yolov5n, tmp_path):
    src = yolopt.save(yolov5n, tmp_path / "m.safetensors")

    def old_style(md):  # what yolopt wrote before: format version 1, no hash
        desc = json.loads(md["yolopt"])
        del desc["sha256"]
        desc["version"] = 1
        return {"yolopt": json.dumps(desc)}

    old = _rewrite_header(src, tmp_path / "old.safetensors", old_style)
    assert _same_model(yolopt.load(old), yolopt.load(src))


def test_training_checkpoint_hash_is_checked_on_load_and_resume(warm_data, tmp_path):
    torch.manual_seed(0)
    model = DetectionModel(builtin_config("yolov5n", nc=3))
    model.names = ["circle", "square", "triangle"]
    opt = build_optimizer(model, 0.01, 0.9, 5e-4)
    model(torch.rand(1, 3, 64, 64))[0].sum().backward()
    opt.step()
    run = tmp_path / "run"

    last = save_train_checkpoint(run / "last.safetensors", ema_model=copy.deepcopy(model), model=model, optimizer=opt,
                                 imgsz=64, train_state={"epoch": 0, "config": {"data": str(warm_data), "epochs": 3}})
    read_train_checkpoint(last)  # intact: reads
    data = bytearray(last.read_bytes())
    data[-5000] ^= 0x04  # somewhere in the tensors (the raw weights / optimizer momenta / RNG)
    last.write_bytes(bytes(data))
    for call in (lambda: yolopt.load(last), lambda: read_train_checkpoint(last), lambda: train(resume=run)):
        with pytest.raises(yolopt.errors.CheckpointError, match="SHA-256") as e:
            call()
        _one_line_refusal(e.value, last)
    r = run_cli("train", "--resume", run)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith(f"yolopt: error: {last}:") and "SHA-256" in lines[0], r.stderr


# ----------------------------------------------------------------------------- upstream export metadata


def _set_onnx_metadata(src: Path, out: Path, props: dict[str, str]) -> Path:
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(out))
    return out


@pytest.fixture(scope="module")
def upstream_onnx(tmp_path_factory, deploy_artifacts, yolov5n) -> Path:
    """A yolov5n ONNX whose metadata is what upstream's export.py writes: ``str()`` of each value (made from
    conftest's 256 px export)."""
    d = tmp_path_factory.mktemp("upstream")
    res = deploy_artifacts["onnx"]
    names = dict(enumerate(yolov5n.names))
    assert str(names).startswith("{0: 'person', 1: 'bicycle'")
    return _set_onnx_metadata(res.path, d / "upstream_yolov5n.onnx", {"stride": str(32), "names": str(names)})


def test_upstream_onnx_metadata_is_read_as_upstream_writes_it(upstream_onnx, yolov5n, bus_jpg, coco128_yaml):
    b = runtime.open(upstream_onnx)
    assert b.names == list(yolov5n.names) and b.nc == 80
    assert b.stride.tolist() == [32.0] and b.imgsz == (256, 256)
    r = run_cli("predict", upstream_onnx, bus_jpg, "--json", "-")
    assert r.returncode == 0, r.stderr
    dets = json.loads(r.stdout)[0]["detections"]
    assert {d["name"] for d in dets} >= {"bus", "person"}
    assert all(d["name"] == yolov5n.names[d["class"]] for d in dets)
    res = evaluate(b, coco128_yaml, max_images=2, imgsz=256, progress=False)  # 80 classes, like the data
    assert 0 <= res.map50 <= 1


def test_metadata_that_is_not_a_literal_is_never_evaluated(upstream_onnx, tmp_path, caplog):
    marker = tmp_path / "ran"
    evil = _set_onnx_metadata(upstream_onnx, tmp_path / "evil.onnx", {
        "stride": "__import__('os').getpid()",
        "names": f"__import__('os').system('touch {marker}') or {{0: 'person'}}"})
    with caplog.at_level("WARNING", logger="yolopt"):
        b = runtime.open(evil)
    assert not marker.exists()
    assert b.names == [str(i) for i in range(80)] and b.nc == 80  # numbered, from the output's 85 columns
    assert b.stride.tolist() == [8.0, 16.0, 32.0]
    assert "numbered class names" in caplog.text and "stride" in caplog.text

    # a literal of the wrong size: the output shape decides the class count
    short = _set_onnx_metadata(upstream_onnx, tmp_path / "short.onnx", {"stride": "32", "names": "{0: 'a', 1: 'b'}"})
    b = runtime.open(short)
    assert b.nc == 80 and b.names[:2] == ["0", "1"]
    # gaps in the indices, and a list written as Python's repr (older upstream)
    gaps = _set_onnx_metadata(upstream_onnx, tmp_path / "gaps.onnx", {"names": str({i * 2: "x" for i in range(80)})})
    assert runtime.open(gaps).names[79] == "79"
    as_list = _set_onnx_metadata(upstream_onnx, tmp_path / "list.onnx", {"names": str([f"c{i}" for i in range(80)])})
    assert runtime.open(as_list).names[79] == "c79"


def test_upstream_openvino_ir_reads_the_yaml_beside_it(upstream_onnx, yolov5n, tmp_path):
    ov = pytest.importorskip("openvino")
    folder = tmp_path / "upstream_yolov5n_openvino_model"
    folder.mkdir()
    xml = folder / "upstream_yolov5n.xml"
    ov.save_model(ov.convert_model(str(upstream_onnx)), str(xml))
    assert not ov.Core().read_model(str(xml)).has_rt_info(["yolopt"])
    # what upstream's yaml_save writes: yaml.safe_dump of {'stride': 32, 'names': {0: 'person', ...}}
    (folder / "upstream_yolov5n.yaml").write_text(
        yaml.safe_dump({"stride": 32, "names": dict(enumerate(yolov5n.names))}, sort_keys=False))
    assert "0: person" in (folder / "upstream_yolov5n.yaml").read_text()
    for target in (xml, folder):
        b = runtime.open(target)
        assert b.names == list(yolov5n.names) and b.nc == 80 and b.stride.tolist() == [32.0]
    # Ultralytics' later name for it, and none at all
    (folder / "upstream_yolov5n.yaml").rename(folder / "metadata.yaml")
    assert runtime.open(xml).names[5] == "bus"
    (folder / "metadata.yaml").unlink()
    assert runtime.open(xml).names == [str(i) for i in range(80)]
