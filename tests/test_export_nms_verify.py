"""export --nms verification compares real detections (never 0 = 0), and predict warns about baked-in thresholds."""

from __future__ import annotations

import json
import pathlib
import re

import cv2
import numpy as np
import pytest

from conftest import run_cli

pytest.importorskip("onnxruntime")

IMGSZ = "256"


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread(one_thread):
    """Torch on one thread for this module (conftest): the models here are small, and two cores shared with other
    work lose more to spinning threads than they gain."""


def _counts(text: str) -> tuple[int, int]:
    m = re.search(r"(\d+) PyTorch / (\d+) exported detections", text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def nms_export(nms_onnx):
    """yolov5n exported with --nms (conf 0.25 baked in) and no --verify-source (conftest: once per session)."""
    return nms_onnx


def test_nms_export_verifies_on_images_with_objects(nms_export, shared):
    _, r, report = nms_export
    n_torch, n_export = _counts(r.stdout)
    assert n_torch > 0 and n_export == n_torch and "PASS" in r.stdout
    v = report["verify"]
    # the default inputs are the shared sample images (real objects), not the synthetic scene
    want = [p.resolve() for p in sorted((shared / "data" / "images").glob("*.jpg"))]
    assert [pathlib.Path(s).resolve() for s in v["sources"]] == want  # ../shared may be a symbolic link
    assert v["detections_torch"] == n_torch and v["passed"] is True


def test_nms_export_with_nothing_to_compare_fails(yolov5n_pt, tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 114, np.uint8))
    out = tmp_path / "n.onnx"
    r = run_cli("export", yolov5n_pt, "--format", "onnx", "--nms", "--imgsz", IMGSZ, "--out", out,
                "--verify-source", blank)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yolopt: error: "), r.stderr
    assert "0 PyTorch / 0 exported detections at conf 0.25" in lines[0]
    assert "nothing to compare" in lines[0] and "give verification images with objects" in lines[0]
    assert "The model does detect objects elsewhere" in lines[0] and str(out) in lines[0]  # the images are
    assert lines[0].endswith("(--verify-source)")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["blank.png"]


@pytest.fixture(scope="module")
def generated_export(yolov5n_pt, tmp_path_factory):
    """An --nms export with no shared images (a user's machine), the synthetic scene it was verified on recorded:
    (ExportResult, [(scene given, scene made)] from ``scene_with_detections``)."""
    import sys

    import yolopt.export.exporter as exporter
    import yolopt.export.verify  # noqa: F401 - the module (yolopt.export.verify is also the function's name)
    from yolopt.export import ExportSpec, export

    vmod = sys.modules["yolopt.export.verify"]
    real, calls = vmod.scene_with_detections, []

    def recorded(model, x, *args, **kwargs):
        y = real(model, x, *args, **kwargs)
        calls.append((x.clone(), y.clone()))
        return y

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporter, "sample_images", lambda: [])
        mp.setattr(vmod, "scene_with_detections", recorded)
        res = export(yolov5n_pt, ExportSpec("onnx", imgsz=128, nms=True, out=tmp_path_factory.mktemp("g") / "g.onnx"))
    return res, calls


def test_generated_scene_made_to_produce_detections(generated_export):
    """No shared images (a user's machine): the synthetic scene is pushed until the model finds objects."""
    from yolopt.export.verify import GENERATED

    res, calls = generated_export
    v = res.verify
    assert v.sources == [GENERATED] and v.passed
    assert v.detections_torch >= 1 and v.detections_export == v.detections_torch
    assert len(calls) == 1


def test_synthetic_scene_alone_has_nothing_at_deploy_conf(yolov5n, generated_export):
    """Why the scene must be made to produce detections: as it is, nothing scores 0.25. (The scene
    ``scene_with_detections(model, x, 0.25)`` made of it is the one the export above was verified on.)"""
    import copy

    import torch

    from yolopt.export.verify import verify_inputs
    from yolopt.ops.nms import non_max_suppression

    m = copy.deepcopy(yolov5n).fuse().eval()
    x = verify_inputs((128, 128), 1)
    given, y = generated_export[1][0]
    assert torch.equal(given, x)
    with torch.no_grad():
        assert len(non_max_suppression(m(x), 0.25, 0.45)[0]) == 0
        assert len(non_max_suppression(m(y), 0.25 * 1.2, 0.45)[0]) >= 1
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_predict_on_nms_artifact_warns_below_baked_conf(nms_export, bus_jpg):
    out, _, _ = nms_export

    def predict(*extra):
        r = run_cli("predict", out, bus_jpg, "--imgsz", IMGSZ, "--json", *extra)
        assert r.returncode == 0, r.stderr
        warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("yolopt: warning:")]
        return json.loads(r.stdout)[0]["detections"], warnings

    dets, warnings = predict("--conf", "0.1")
    assert len(warnings) == 1, warnings
    assert "--conf 0.1 is below the conf 0.25 baked into it" in warnings[0] and str(out) in warnings[0]
    assert dets and min(d["conf"] for d in dets) > 0.25  # what the artifact can return
    base, warnings = predict()
    assert not warnings and len(base) == len(dets)
    hi, warnings = predict("--conf", "0.6")  # a higher threshold filters, no warning
    assert not warnings and hi and min(d["conf"] for d in hi) > 0.6 and len(hi) < len(base)
    _, warnings = predict("--iou", "0.3")
    assert len(warnings) == 1 and "--iou 0.3 has no effect" in warnings[0]
