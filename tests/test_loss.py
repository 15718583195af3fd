"""Loss parity with upstream ComputeLoss, and basic properties of the loss pieces."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from yolopt.engine.loss import DEFAULT_HYP, YoloLoss, bbox_ciou, scaled_loss_hyp
from yolopt.models import DetectionModel, builtin_config


def test_loss_matches_upstream_reference_batch(shared, yolov5n, one_thread):
    ref = json.loads((shared / "reference" / "upstream_loss_batch.json").read_text())
    x = torch.from_numpy(np.load(shared / "reference" / "loss_batch_images_uint8.npy")).float() / 255
    t = torch.from_numpy(np.load(shared / "reference" / "loss_batch_targets.npy")).float()
    model = copy.deepcopy(yolov5n).train()  # the session's yolov5n.pt, loaded once; this test trains a copy
    det = model.detect
    loss_fn = YoloLoss(model, scaled_loss_hyp(DEFAULT_HYP, det.nl, det.nc, 640))
    total, parts = loss_fn(model(x), t)
    got = {"loss_total_times_bs": total.item(), "lbox": parts[0].item(), "lobj": parts[1].item(), "lcls": parts[2].item()}
    for k, v in got.items():
        assert v == pytest.approx(ref[k], rel=1e-4), (k, v, ref[k])
    total.backward()  # differentiable end to end
    assert all(p.grad is not None for p in model.detect.parameters())


def test_ciou_identical_boxes_is_one_and_penalises_offsets():
    a = torch.tensor([[5.0, 5.0, 2.0, 4.0]])
    assert bbox_ciou(a, a).item() == pytest.approx(1.0, abs=1e-6)
    b = torch.tensor([[6.0, 5.0, 2.0, 4.0]])  # shifted by 1 in x: IoU 1/3, centre term 1/(3^2+4^2)
    assert bbox_ciou(a, b).item() == pytest.approx(1 / 3 - 1 / 25, abs=1e-5)
    far = torch.tensor([[50.0, 50.0, 2.0, 4.0]])
    assert bbox_ciou(a, far).item() < 0


def test_scaled_hyp_follows_layers_classes_and_size():
    h = scaled_loss_hyp(DEFAULT_HYP, nl=3, nc=4, imgsz=320)
    assert h["box"] == pytest.approx(0.05)
    assert h["cls"] == pytest.approx(0.5 * 4 / 80)
    assert h["obj"] == pytest.approx(0.25)
    h4 = scaled_loss_hyp(DEFAULT_HYP, nl=4, nc=80, imgsz=640)
    assert h4["box"] == pytest.approx(0.05 * 3 / 4)


def test_target_matching_uses_neighbour_cells_and_anchor_ratio():
    torch.manual_seed(0)
    model = DetectionModel(builtin_config("yolov5n", nc=2)).train()
    preds = model(torch.zeros(1, 3, 64, 64))
    loss_fn = YoloLoss(model)
    # a 16x16-pixel box centred at (20.8, 20.8) px in a 64 image: at stride 8 it sits in cell
    # (2, 2) at offset 0.6 -> own cell plus right/bottom neighbours (0.6 > 0.5 after 1-x);
    # anchors (10,13),(16,30),(33,23) px: all within ratio 4 -> 3 anchors x 3 cells.
    t = torch.tensor([[0, 1, 20.8 / 64, 20.8 / 64, 16 / 64, 16 / 64]])
    tcls, tbox, indices, _ = loss_fn.build_targets(preds, t)
    b, a, gj, gi = indices[0]
    cells = sorted(set(zip(gj.tolist(), gi.tolist())))
    assert cells == [(2, 2), (2, 3), (3, 2)]
    assert len(b) == 9 and set(a.tolist()) == {0, 1, 2}
    assert (tcls[0] == 1).all()
    # stride-32 level: anchors 116..373 px vs 16 px box: ratio > 4 -> no match
    assert len(indices[2][0]) == 0
    # empty targets still give a finite loss (objectness only)
    total, parts = loss_fn(preds, torch.zeros(0, 6))
    assert math.isfinite(total.item()) and parts[0] == 0 and parts[1] > 0
