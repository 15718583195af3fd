"""End-to-end predict and val against upstream YOLOv5's reference outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli


def test_predict_matches_upstream(yolov5n_pt, bus_jpg, shared, tmp_path):
    out_json = tmp_path / "det.json"
    r = run_cli("predict", yolov5n_pt, bus_jpg, "--json", out_json, "--out", tmp_path / "vis")
    assert r.returncode == 0, r.stderr
    got = json.loads(out_json.read_text())
    assert len(got) == 1 and got[0]["width"] == 810 and got[0]["height"] == 1080
    dets = got[0]["detections"]
    ref = json.loads((shared / "reference" / "upstream_detections_bus.json").read_text())["bus"]["detections_xyxy_conf_cls"]
    assert len(dets) == len(ref)
    for d, (x1, y1, x2, y2, conf, cls) in zip(dets, ref):
        assert d["class"] == int(cls)
        assert np.abs(np.array(d["xyxy"]) - np.array([x1, y1, x2, y2])).max() <= 1.0
        assert abs(d["conf"] - conf) <= 1e-3
        assert d["name"] in ("person", "bus")
    vis = tmp_path / "vis" / "bus.jpg"
    import cv2

    im = cv2.imread(str(vis))
    assert im is not None and im.shape == (1080, 810, 3)
    assert np.abs(im.astype(int) - cv2.imread(str(bus_jpg)).astype(int)).sum() > 0  # boxes were drawn


def test_predict_json_stdout_and_folder(yolov5n_pt, shared):
    r = run_cli("predict", yolov5n_pt, shared / "data" / "images", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert sorted(g["image"].rsplit("/", 1)[-1] for g in got) == ["bus.jpg", "zidane.jpg"]
    zidane = next(g for g in got if g["image"].endswith("zidane.jpg"))
    assert sum(d["name"] == "person" for d in zidane["detections"]) >= 2


def test_predict_python_api(yolov5n, bus_jpg):
    import yolopt

    res = yolopt.predict(yolov5n, bus_jpg, conf=0.5)
    assert len(res) == 1 and len(res[0]) == 4  # 3 persons + bus above 0.5
    assert set(res[0].cls.tolist()) == {0, 5}


@pytest.mark.slow
def test_val_coco128_matches_upstream(yolov5n_pt, coco128_yaml, shared, tmp_path):
    out = tmp_path / "val.json"
    r = run_cli("val", yolov5n_pt, "--data", coco128_yaml, "--json", out)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    ref = json.loads((shared / "reference" / "upstream_val_coco128.json").read_text())["pycocotools_on_upstream_predictions"]
    assert abs(m["map50_95"] - ref["map50_95"]) <= 0.003, m["map50_95"]
    assert abs(m["map50"] - ref["map50"]) <= 0.003, m["map50"]
    assert m["images"] == 128 and m["instances"] == 929
    assert 0 < m["precision"] <= 1 and 0 < m["recall"] <= 1
    assert set(m["speed_ms"]) >= {"preprocess", "inference", "nms"} and all(v > 0 for v in m["speed_ms"].values())
    assert "mAP50-95" in r.stdout
