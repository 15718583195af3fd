"""COCO mAP (pycocotools) and precision / recall at the best-F1 confidence."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np


@dataclass
class CocoResult:
    map50_95: float
    map50: float
    per_class_ap: dict[int, tuple[float, float]]  # class -> (AP50-95, AP50), classes with labels only


def coco_map(gt_images: list[dict], gt_boxes: list[dict], detections: list[dict], nc: int) -> CocoResult:
    """COCO bbox mAP with pycocotools.

    ``gt_images``: ``{"id", "width", "height"}``; ``gt_boxes``: ``{"image_id", "category_id",
    "bbox": [x, y, w, h]}`` in pixels; ``detections``: COCO results (same plus ``score``).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns = []
    for k, b in enumerate(gt_boxes, 1):  # ids start at 1: pycocotools treats id 0 as "unmatched"
        w, h = b["bbox"][2], b["bbox"][3]
        anns.append({**b, "id": k, "area": float(w * h), "iscrowd": 0})
    dataset = {
        "images": gt_images,
        "annotations": anns,
        "categories": [{"id": c, "name": str(c)} for c in range(nc)],
    }
    if not anns:
        return CocoResult(0.0, 0.0, {})
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        if not detections:
            return CocoResult(0.0, 0.0, {})
        dt = gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [iou, recall, class, area, maxdet]
    per_class = {}
    for ki, cat in enumerate(ev.params.catIds):
        p = precision[:, :, ki, 0, -1]
        if (p > -1).any():
            p50 = p[0][p[0] > -1]
            per_class[cat] = (float(p[p > -1].mean()), float(p50.mean()) if p50.size else 0.0)
    return CocoResult(float(ev.stats[0]), float(ev.stats[1]), per_class)


def precision_recall(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray
) -> tuple[float, float]:
    """Mean precision and recall over classes at the confidence that maximises mean F1.

    ``tp``: bool per prediction (matched to a same-class label at IoU >= 0.5).
    """
    _, p, r = precision_recall_per_class(tp, conf, pred_cls, target_cls)
    return (float(p.mean()), float(r.mean())) if len(p) else (0.0, 0.0)


def precision_recall_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision and recall at one operating point: the confidence that maximises the mean F1
    over classes (upstream's rule), so their means are the overall P and R.

    Returns ``(classes, precision, recall)``: the classes that have labels (int), and their P and R.
    """
    classes = np.unique(np.asarray(target_cls).astype(np.int64))
    if not len(classes):
        return classes, np.zeros(0), np.zeros(0)
    pred_cls = np.asarray(pred_cls).astype(np.int64)
    target_cls = np.asarray(target_cls).astype(np.int64)
    grid = np.linspace(0, 1, 1000)
    p_curves, r_curves = np.zeros((len(classes), grid.size)), np.zeros((len(classes), grid.size))
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        n_gt = int((target_cls == c).sum())
        if not sel.any():
            continue
        tpc = np.cumsum(tp[sel])
        fpc = np.cumsum(~tp[sel])
        recall = tpc / (n_gt + 1e-16)
        precision = tpc / (tpc + fpc)
        # curves as a function of confidence (conf decreasing, hence the negation for interp)
        r_curves[ci] = np.interp(-grid, -conf[sel], recall, left=0)
        p_curves[ci] = np.interp(-grid, -conf[sel], precision, left=1)
    f1 = 2 * p_curves * r_curves / (p_curves + r_curves + 1e-16)
    i = int(f1.mean(0).argmax())
    return classes, p_curves[:, i], r_curves[:, i]
