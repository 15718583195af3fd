"""NMS against a brute-force reference, and its class handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yolopt.ops.boxes import box_iou, scale_boxes, xywh2xyxy, xyxy2xywh
from yolopt.ops.nms import greedy_nms, non_max_suppression


def _reference_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    iou = box_iou(boxes, boxes)
    keep, dead = [], set()
    for i in order:
        if i in dead:
            continue
        keep.append(i)
        dead |= {j for j in order if float(iou[i, j]) > thr}
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_greedy_nms_matches_bruteforce(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(200, 2, generator=g) * 100
    wh = torch.rand(200, 2, generator=g) * 40 + 2
    boxes = torch.cat((xy, xy + wh), 1)
    scores = torch.rand(200, generator=g)
    got = greedy_nms(boxes, scores, 0.45).tolist()
    assert got == _reference_nms(boxes, scores, 0.45)
    assert greedy_nms(boxes, scores, 0.45, max_keep=7).tolist() == got[:7]


def _pred(rows, nc=3):
    """rows of (cx, cy, w, h, obj, cls, cls_prob) -> (1, N, 5+nc)."""
    out = torch.zeros(1, len(rows), 5 + nc)
    for k, (cx, cy, w, h, obj, c, p) in enumerate(rows):
        out[0, k, :5] = torch.tensor([cx, cy, w, h, obj])
        out[0, k, 5 + c] = p
    return out


def test_class_aware_vs_agnostic():
    pred = _pred([(50, 50, 20, 20, 0.9, 0, 1.0), (51, 50, 20, 20, 0.8, 1, 1.0), (52, 50, 20, 20, 0.7, 0, 1.0)])
    aware = non_max_suppression(pred, 0.25, 0.45)[0]
    assert aware[:, 5].tolist() == [0.0, 1.0]  # same-class duplicate removed, other class kept
    agnostic = non_max_suppression(pred, 0.25, 0.45, agnostic=True)[0]
    assert agnostic[:, 5].tolist() == [0.0]
    torch.testing.assert_close(aware[0, :4], torch.tensor([40.0, 40.0, 60.0, 60.0]))
    assert aware[0, 4].item() == pytest.approx(0.9)


def test_conf_is_obj_times_cls_and_multilabel():
    pred = _pred([(50, 50, 20, 20, 0.5, 0, 0.6)])
    pred[0, 0, 5 + 2] = 0.4  # a second class with a lower score
    single = non_max_suppression(pred, 0.1, 0.45)[0]
    assert single.shape[0] == 1 and single[0, 4].item() == pytest.approx(0.3)
    multi = non_max_suppression(pred, 0.1, 0.45, multi_label=True)[0]
    assert sorted(multi[:, 5].tolist()) == [0.0, 2.0]
    assert non_max_suppression(pred, 0.35, 0.45)[0].shape[0] == 0


def test_box_conversions_roundtrip():
    x = torch.tensor([[10.0, 20.0, 4.0, 6.0]])
    assert xywh2xyxy(x).tolist() == [[8.0, 17.0, 12.0, 23.0]]
    torch.testing.assert_close(xyxy2xywh(xywh2xyxy(x)), x)
    b = torch.tensor([[100.0, 80.0, 300.0, 400.0]])
    # letterbox: ratio 0.5, pad (10, 20) -> back to the original, clipped to (h=500, w=500)
    out = scale_boxes(b.clone(), (0.5, 0.5), (10.0, 20.0), (500, 500))
    assert out.tolist() == [[180.0, 120.0, 500.0, 500.0]]
    assert np.isclose(box_iou(b, b).item(), 1.0)


def test_zero_area_boxes_give_no_nan_warning():
    """Degenerate (zero-area) predictions early in training used to print a RuntimeWarning from 0/0."""
    import warnings

    import numpy as np

    from yolopt.ops.nms import _greedy_one_class

    b = np.array([[10, 10, 10, 10], [10, 10, 10, 10], [0, 0, 20, 20], [1, 1, 19, 19]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        keep = _greedy_one_class(b, 0.45, 10)
    assert keep == [0, 1, 2]  # zero-area boxes overlap nothing; box 3 (IoU 0.81 with box 2) is suppressed
