"""AP50 per detection level: which of a model's output levels (P3 / P4 / P5 in YOLOv5) loses accuracy.

Each ground-truth box and each detection is put on the level whose anchors best fit its size in model
input pixels (boxes are scaled by the letterbox ratio ``imgsz / max(h0, w0)``): the size boundary between
two adjacent levels is the geometric mean of the larger level's smallest anchor and the smaller level's
largest anchor (``sqrt(w * h)`` per anchor). pycocotools then scores each level as an area range, so a
detection of another size that matches a ground truth of this level still counts, as in COCO's
small / medium / large AP.

    >>> res = evaluate(model, "data.yaml", EvalSpec(imgsz=416))
    >>> level_ap50(res, "data.yaml", model, imgsz=416)
    [LevelScore(level=0, stride=8, lo=0.0, hi=34.3, instances=812, ap50=0.74, ap50_95=0.41), ...]
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LevelScore:
    """One output level: its stride, the box size range it owns (``sqrt(w*h)`` in model input pixels,
    ``[lo, hi)``), its ground-truth boxes and their AP50 / AP50-95 (-1 when it has none)."""

    level: int
    stride: int
    lo: float
    hi: float
    instances: int
    ap50: float
    ap50_95: float

    def to_dict(self) -> dict:
        return asdict(self)


def level_bounds(model) -> list[tuple[int, float, float]]:
    """``(stride, lo, hi)`` per output level of a yolopt ``DetectionModel`` (anchor sizes in pixels)."""
    det = model.model[-1]
    strides = [int(s) for s in det.stride.tolist()]
    sizes = [sorted(math.sqrt(float(w) * float(h)) * s for w, h in det.anchors[i].tolist())
             for i, s in enumerate(strides)]
    cuts = [math.sqrt(sizes[i][-1] * sizes[i + 1][0]) for i in range(len(sizes) - 1)]
    edges = [0.0, *cuts, math.inf]
    return [(strides[i], edges[i], edges[i + 1]) for i in range(len(strides))]


def level_ap50(result, data: str | Path, model, imgsz: int, split: str = "val") -> list[LevelScore]:
    """AP50 and AP50-95 per output level of ``model`` from an :func:`~yolopt.evaluate.evaluate` ``result`` on
    ``data``'s ``split`` (its ``predictions``, COCO results in original pixels)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ..data.dataset import image_files, load_data_config
    from .validate import _load_items

    cfg = load_data_config(data)
    items, _ = _load_items(image_files(cfg, split)[: result.images or None], cfg.nc)
    scale = {it.image_id: imgsz / max(it.shape) for it in items}
    images, anns = [], []
    for it in items:
        h0, w0 = it.shape
        r = scale[it.image_id]
        images.append({"id": it.image_id, "width": w0 * r, "height": h0 * r})
        for c, cx, cy, w, h in it.labels.tolist():
            bw, bh = w * w0 * r, h * h0 * r
            anns.append({"id": len(anns) + 1, "image_id": it.image_id, "category_id": int(c), "iscrowd": 0,
                         "bbox": [(cx * w0 - w * w0 / 2) * r, (cy * h0 - h * h0 / 2) * r, bw, bh],
                         "area": bw * bh})
    dets = []
    for d in result.predictions:
        r = scale.get(d["image_id"])
        if r is not None:
            dets.append({**d, "bbox": [v * r for v in d["bbox"]]})
    bounds = level_bounds(model)
    sizes = np.array([math.sqrt(a["area"]) for a in anns]) if anns else np.zeros(0)
    out = []
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c, "name": str(c)} for c in range(cfg.nc)]}
        gt.createIndex()
        ev = None
        if anns and dets:
            ev = COCOeval(gt, gt.loadRes(dets), "bbox")
            ev.params.areaRng = [[lo * lo, min(hi * hi, 1e10)] for _, lo, hi in bounds]
            ev.params.areaRngLbl = [f"level{i}" for i in range(len(bounds))]
            ev.evaluate()
            ev.accumulate()
    for i, (stride, lo, hi) in enumerate(bounds):
        n = int(((sizes >= lo) & (sizes < hi)).sum())
        ap50 = ap = -1.0 if n == 0 else 0.0
        if ev is not None and n:
            p = ev.eval["precision"][:, :, :, i, -1]  # [iou, recall, class]
            ap50 = float(p[0][p[0] > -1].mean()) if (p[0] > -1).any() else 0.0
            ap = float(p[p > -1].mean()) if (p > -1).any() else 0.0
        out.append(LevelScore(i, stride, round(lo, 1), round(hi, 1) if math.isfinite(hi) else math.inf, n,
                              ap50, ap))
    return out
