"""predict's Ultralytics habits: run folders that never overwrite, --save-txt / --save-conf labels, --classes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli

IMGSZ = "320"


def _one_line_error(r, *needles, code=1):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_run_folders_never_overwrite(yolov5n_pt, bus_jpg, tmp_path):
    def predict(*extra):
        r = run_cli("predict", yolov5n_pt, bus_jpg, "--imgsz", IMGSZ, *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return r

    predict("--project", "runs/p", "--name", "exp")
    first = (tmp_path / "runs/p/exp/bus.jpg").read_bytes()
    r = predict("--project", "runs/p", "--name", "exp", "--conf", "0.8")  # a different result, in a new folder
    assert "results in runs/p/exp2" in r.stderr
    assert (tmp_path / "runs/p/exp/bus.jpg").read_bytes() == first  # the earlier run is untouched
    assert (tmp_path / "runs/p/exp2/bus.jpg").read_bytes() != first
    predict("--project", "runs/p", "--name", "exp")
    assert sorted(p.name for p in (tmp_path / "runs/p").iterdir()) == ["exp", "exp2", "exp3"]
    predict("--project", "runs/p", "--name", "exp", "--exist-ok", "--conf", "0.8")  # reuses exp
    assert sorted(p.name for p in (tmp_path / "runs/p").iterdir()) == ["exp", "exp2", "exp3"]
    assert (tmp_path / "runs/p/exp/bus.jpg").read_bytes() == (tmp_path / "runs/p/exp2/bus.jpg").read_bytes()
    # --save-txt alone uses the default run folder runs/predict/exp
    predict("--save-txt")
    assert (tmp_path / "runs/predict/exp/labels/bus.txt").is_file()
    # images only, no output option: nothing written (as before)
    predict()
    assert sorted(p.name for p in (tmp_path / "runs/predict").iterdir()) == ["exp"]


def test_run_folder_helper(tmp_path):
    from yolopt.commands._rundir import new_run_dir
    from yolopt.errors import YoloptError

    assert new_run_dir(tmp_path / "r", "exp") == tmp_path / "r" / "exp"
    (tmp_path / "r" / "exp2").write_text("a file in the way")
    assert new_run_dir(tmp_path / "r", "exp") == tmp_path / "r" / "exp3"
    assert new_run_dir(tmp_path / "r", "exp", exist_ok=True) == tmp_path / "r" / "exp"
    with pytest.raises(YoloptError, match="--name"):
        new_run_dir(tmp_path / "r", "a/b")
    (tmp_path / "f").write_text("x")
    with pytest.raises(YoloptError, match="--project"):
        new_run_dir(tmp_path / "f", "exp")


def test_out_conflicts_and_bad_paths(yolov5n_pt, bus_jpg, tmp_path):
    _one_line_error(run_cli("predict", yolov5n_pt, bus_jpg, "--out", tmp_path / "o", "--name", "x", cwd=tmp_path),
                    "--out", "not both")
    (tmp_path / "file").write_text("x")
    _one_line_error(run_cli("predict", yolov5n_pt, bus_jpg, "--project", tmp_path / "file", cwd=tmp_path),
                    "--project", "file")
    _one_line_error(run_cli("predict", yolov5n_pt, bus_jpg, "--json", tmp_path / "file" / "d.json", cwd=tmp_path),
                    "--json")


def test_save_txt_and_save_conf(yolov5n_pt, bus_jpg, tmp_path):
    out = tmp_path / "d.json"
    r = run_cli("predict", yolov5n_pt, bus_jpg, "--imgsz", IMGSZ, "--save-txt", "--out", tmp_path / "o", "--json", out)
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())[0]
    w, h = rec["width"], rec["height"]
    rows = [line.split() for line in (tmp_path / "o/labels/bus.txt").read_text().splitlines()]
    assert len(rows) == len(rec["detections"]) >= 4 and all(len(row) == 5 for row in rows)
    for row, d in zip(rows, rec["detections"]):  # by hand: class, centre and size normalised by the image size
        x1, y1, x2, y2 = d["xyxy"]
        assert int(row[0]) == d["class"]
        want = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
        assert np.allclose([float(v) for v in row[1:]], want, atol=2e-4)
        assert all(0 <= float(v) <= 1 for v in row[1:])
    r = run_cli("predict", yolov5n_pt, bus_jpg, "--imgsz", IMGSZ, "--save-conf", "--out", tmp_path / "o2")
    assert r.returncode == 0, r.stderr
    rows2 = [line.split() for line in (tmp_path / "o2/labels/bus.txt").read_text().splitlines()]
    assert [row[:5] for row in rows2] == rows  # --save-conf implies --save-txt and adds a sixth column
    assert [round(float(row[5]), 4) for row in rows2] == [round(d["conf"], 4) for d in rec["detections"]]


def test_classes_filter(yolov5n_pt, bus_jpg):
    def classes(*sel):
        r = run_cli("predict", yolov5n_pt, bus_jpg, "--imgsz", IMGSZ, "--json", "--classes", *sel)
        assert r.returncode == 0, r.stderr
        return [d["class"] for d in json.loads(r.stdout)[0]["detections"]]

    assert classes("5") == [5]  # the bus only
    people = classes("person")
    assert people and set(people) == {0}
    assert sorted(set(classes("0", "bus"))) == [0, 5]
    _one_line_error(run_cli("predict", yolov5n_pt, bus_jpg, "--classes", "80"), "class 80", "0-79", "(--classes)")
    _one_line_error(run_cli("predict", yolov5n_pt, bus_jpg, "--classes", "helmet"), "class helmet",
                    "no class of that name", "(--classes)")
