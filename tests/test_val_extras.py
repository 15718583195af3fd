"""val: class mapping by name (--match-classes), per-class P/R in --verbose, confusion matrix (--plots)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import run_cli

IMGSZ = "320"


def _one_line_error(r, *needles):
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("yolopt: error")]
    assert len(lines) == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def hardhat_small(tmp_path_factory, shared) -> Path:
    """The first 6 hardhat val images (1 class: helmet) as their own dataset."""
    src = shared / "data" / "hardhat"
    if not src.is_dir():
        pytest.skip("shared hardhat dataset missing")
    root = tmp_path_factory.mktemp("hardhat")
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for f in sorted((src / "images" / "val").glob("*.jpg"))[:6]:
        shutil.copy(f, root / "images" / "val" / f.name)
        shutil.copy(src / "labels" / "val" / f"{f.stem}.txt", root / "labels" / "val" / f"{f.stem}.txt")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "val": "images/val", "names": {0: "helmet"}}))
    return root / "data.yaml"


def test_class_count_mismatch_says_how_to_proceed(ppe_pt, hardhat_small):
    line = _one_line_error(run_cli("val", ppe_pt, "--data", hardhat_small), str(hardhat_small))
    assert "dataset has 1 classes (helmet) but the model predicts 2 (helmet, vest)" in line
    assert "they share 1 by name (helmet): evaluate with match_classes to keep only those" in line
    assert line.endswith("(--match-classes)")


def test_match_classes_evaluates_the_shared_classes(ppe_pt, hardhat_small, tmp_path):
    out = tmp_path / "m.json"
    r = run_cli("val", ppe_pt, "--data", hardhat_small, "--imgsz", IMGSZ, "--match-classes", "--verbose", "--json", out)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    assert m["class_map"] == [{"model": 0, "dataset": 0, "name": "helmet"}]
    assert m["images"] == 6 and m["instances"] == sum(
        len([ln for ln in f.read_text().splitlines() if ln.strip()])
        for f in (hardhat_small.parent / "labels" / "val").glob("*.txt"))
    assert 0 < m["map50"] <= 1 and [pc["name"] for pc in m["per_class"]] == ["helmet"]
    assert "vest" in r.stderr and "ignored" in r.stderr  # says what was left out


def test_match_classes_maps_model_ids_to_dataset_ids(ppe_pt, hardhat_small, tmp_path):
    """A dataset that names its classes in another order: the model's helmet (0) is the dataset's 1."""
    from yolopt.evaluate import EvalSpec, evaluate

    root = tmp_path / "swapped"
    shutil.copytree(hardhat_small.parent, root)
    for f in (root / "labels" / "val").glob("*.txt"):
        rows = [ln.split() for ln in f.read_text().splitlines() if ln.strip()]
        f.write_text("".join(" ".join(["1", *r[1:]]) + "\n" for r in rows))
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "val": "images/val",
                                                    "names": {0: "boots", 1: "helmet"}}))
    a = evaluate(ppe_pt, hardhat_small, EvalSpec(imgsz=int(IMGSZ), match_classes=True, progress=False))
    b = evaluate(ppe_pt, root / "data.yaml", EvalSpec(imgsz=int(IMGSZ), match_classes=True, progress=False))
    assert b.class_map == [{"model": 0, "dataset": 1, "name": "helmet"}]
    assert b.map50_95 == pytest.approx(a.map50_95, abs=1e-9) and b.map50 == pytest.approx(a.map50, abs=1e-9)
    assert {p["category_id"] for p in b.predictions} == {1}  # vest (model class 1) never reaches the dataset
    # no shared name at all: one line saying so
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "val": "images/val", "names": {0: "a", 1: "b"}}))
    r = run_cli("val", ppe_pt, "--data", root / "data.yaml", "--match-classes")
    _one_line_error(r, "--match-classes", "share no name")


def test_verbose_per_class_table_and_json(yolov5n_pt, shared, tmp_path):
    """Per-class images, P and R filled in, at the same operating point as the overall P and R; int ids."""
    root = tmp_path / "c"
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    coco = shared / "data" / "coco128"
    for f in sorted((coco / "images" / "train2017").glob("*.jpg"))[:8]:
        shutil.copy(f, root / "images" / "val" / f.name)
        lab = coco / "labels" / "train2017" / f"{f.stem}.txt"
        if lab.exists():
            shutil.copy(lab, root / "labels" / "val" / lab.name)
    names = yaml.safe_load((coco / "coco128.yaml").read_text())["names"]
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "val": "images/val", "names": names}))
    out = tmp_path / "v.json"
    r = run_cli("val", yolov5n_pt, "--data", root / "data.yaml", "--imgsz", IMGSZ, "--verbose", "--json", out)
    assert r.returncode == 0, r.stderr
    raw = out.read_text()
    m = json.loads(raw)
    pcs = m["per_class"]
    assert pcs and all(isinstance(pc["class"], int) for pc in pcs)
    assert '"class": 0,' in raw and '"class": 0.0' not in raw  # ints in the file, not floats
    labels = {int(ln.split()[0]) for f in (root / "labels" / "val").glob("*.txt") for ln in f.read_text().splitlines()}
    assert [pc["class"] for pc in pcs] == sorted(labels)
    per_image = [{int(ln.split()[0]) for ln in f.read_text().splitlines()} for f in (root / "labels" / "val").glob("*.txt")]
    for pc in pcs:
        assert pc["images"] == sum(pc["class"] in s for s in per_image)
        assert 0 <= pc["precision"] <= 1 and 0 <= pc["recall"] <= 1
    assert np.mean([pc["precision"] for pc in pcs]) == pytest.approx(m["precision"], abs=1e-9)
    assert np.mean([pc["recall"] for pc in pcs]) == pytest.approx(m["recall"], abs=1e-9)
    # the table: first column "class", person row with its images, P and R filled in
    header = next(ln for ln in r.stdout.splitlines() if "instances" in ln)
    assert header.split()[1] == "class" and "images" in header
    person = next(pc for pc in pcs if pc["name"] == "person")
    row = next(ln for ln in r.stdout.splitlines() if ln.split()[1:2] == ["person"])
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells == ["person", str(person["images"]), str(person["instances"]), f"{person['precision']:.3f}",
                     f"{person['recall']:.3f}", f"{person['map50']:.4f}", f"{person['map50_95']:.4f}"]
    assert "val val" not in r.stderr


def test_confusion_matrix_hand_checked():
    from yolopt.evaluate.confusion import ConfusionMatrix

    cm = ConfusionMatrix(nc=3)  # conf 0.25, IoU 0.45
    gt_xyxy = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]], np.float32)
    gt_cls = np.array([0, 1, 2, 2])
    det = torch.tensor([
        [0, 0, 10, 10, 0.9, 0],      # label 0 (class 0), right class             -> m[0, 0]
        [20, 20, 30, 31, 0.8, 2],    # label 1 (class 1), wrong class             -> m[2, 1]
        [40, 40, 50, 50, 0.2, 2],    # below conf 0.25: ignored, so label 2 missed -> m[3, 2]
        [60, 60, 70, 70, 0.7, 2],    # label 3 (class 2)                          -> m[2, 2]
        [61, 61, 71, 71, 0.6, 2],    # duplicate of label 3: already taken        -> m[2, 3]
        [100, 100, 120, 120, 0.5, 1],  # nothing there                            -> m[1, 3]
        [0, 0, 4, 10, 0.9, 0],       # IoU 0.4 with label 0: under 0.45          -> m[0, 3]
    ])
    cm.update(det, gt_cls, gt_xyxy)
    want = np.zeros((4, 4), int)
    want[0, 0] = want[2, 1] = want[3, 2] = want[2, 2] = want[2, 3] = want[1, 3] = want[0, 3] = 1
    assert cm.matrix.tolist() == want.tolist()
    cm.update(torch.zeros((0, 6)), np.array([1]), np.array([[0, 0, 5, 5]]))  # an image with nothing found
    cm.update(torch.tensor([[0, 0, 5, 5, 0.9, 1]]), np.zeros(0), np.zeros((0, 4)))  # a background image
    assert cm.matrix[3, 1] == 1 and cm.matrix[1, 3] == 2
    assert cm.matrix.sum() == 7 + 2


def test_val_plots_writes_confusion_matrix(ppe_pt, hardhat_small, tmp_path):
    r = run_cli("val", ppe_pt, "--data", hardhat_small, "--imgsz", IMGSZ, "--match-classes", "--plots",
                "--project", "runs/val", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = tmp_path / "runs" / "val" / "exp"
    png = d / "confusion_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    cm = json.loads((d / "confusion_matrix.json").read_text())
    assert cm["names"] == ["helmet", "background"] and cm["conf"] == 0.25 and cm["iou"] == 0.45
    m = np.array(cm["matrix"])
    n_labels = sum(len([ln for ln in f.read_text().splitlines() if ln.strip()])
                   for f in (hardhat_small.parent / "labels" / "val").glob("*.txt"))
    assert m.shape == (2, 2) and m[:, 0].sum() == n_labels  # every label is either found or missed
    assert m[1, 1] == 0
    # the same again: a new run folder, the first one untouched; --plots DIR writes exactly there
    r = run_cli("val", ppe_pt, "--data", hardhat_small, "--imgsz", IMGSZ, "--match-classes", "--plots",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs" / "val" / "exp2" / "confusion_matrix.png").is_file()
    r = run_cli("val", ppe_pt, "--data", hardhat_small, "--imgsz", IMGSZ, "--match-classes", "--plots",
                tmp_path / "pl")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "pl" / "confusion_matrix.json").read_text())["matrix"] == cm["matrix"]
