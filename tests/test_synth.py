"""Synthetic dataset: deterministic, valid YOLO labels, train/val split, CLI."""

from __future__ import annotations

import hashlib

import pytest

from yolopt.data.dataset import image_files, label_path, load_data_config, read_labels
from yolopt.data.images import read_image
from yolopt.data.synth import generate
from yolopt.errors import YoloptError

from conftest import run_cli


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generate_is_deterministic_and_valid(tmp_path):
    a = generate(tmp_path / "a", images=20, classes=5, imgsz=128, seed=3)
    generate(tmp_path / "b", images=20, classes=5, imgsz=128, seed=3)
    generate(tmp_path / "c", images=20, classes=5, imgsz=128, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")

    cfg = load_data_config(a)
    assert cfg.nc == 5 and cfg.names[:3] == ["circle", "square", "triangle"]
    train, val = image_files(cfg, "train"), image_files(cfg, "val")
    assert (len(train), len(val)) == (16, 4)
    classes, n_obj = set(), 0
    for f in train + val:
        im = read_image(f)
        assert im.shape == (128, 128, 3)
        lab = read_labels(label_path(f), cfg.nc)  # validates range / columns
        n_obj += len(lab)
        classes |= set(lab[:, 0].astype(int).tolist())
        assert (lab[:, 3:] > 0).all() and (lab[:, 1:] <= 1).all()
    assert n_obj >= 20 and len(classes) >= 4


def test_boxes_cover_drawn_objects(tmp_path):
    """Every label is a real, in-image box of at least 3 pixels."""
    y = generate(tmp_path / "d", images=6, classes=2, imgsz=96, seed=0)
    cfg = load_data_config(y)
    for f in image_files(cfg, "train"):
        lab = read_labels(label_path(f), cfg.nc)
        for _, cx, cy, w, h in lab:
            assert 3 / 96 <= w <= 1 and 3 / 96 <= h <= 1
            assert 0 <= cx - w / 2 + 1e-6 and cx + w / 2 <= 1 + 1e-6


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(YoloptError, match="--classes"):
        generate(tmp_path / "x", images=10, classes=0)
    with pytest.raises(YoloptError, match="--images"):
        generate(tmp_path / "x", images=1)


def test_cli_synth(tmp_path):
    r = run_cli("data", "synth", "--out", tmp_path / "s", "--images", "5", "--classes", "3", "--imgsz", "64")
    assert r.returncode == 0, r.stderr
    cfg = load_data_config(tmp_path / "s" / "data.yaml")
    assert cfg.nc == 3 and len(image_files(cfg, "train")) == 4
    r = run_cli("data", "synth", "--out", tmp_path / "t", "--classes", "99")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "--classes 99" in r.stderr
