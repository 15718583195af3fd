"""Confusion matrix of a detector at a deployment operating point (as upstream YOLOv5's val.py draws it).

Rows are the predicted class, columns the true class; the extra last row and column are
"background": ``m[nc, c]`` counts labels of class ``c`` no detection matched (missed), ``m[k, nc]``
detections of class ``k`` that matched no label (false alarms). Detections below ``conf`` are ignored;
a detection and a label match when their IoU is above ``iou`` (whatever their classes: a match with
the wrong class lands off the diagonal), one to one, highest IoU first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_write
from ..ops.boxes import box_iou

CONF, IOU = 0.25, 0.45  # upstream's ConfusionMatrix defaults


class ConfusionMatrix:
    def __init__(self, nc: int, conf: float = CONF, iou: float = IOU):
        self.nc, self.conf, self.iou = nc, conf, iou
        self.matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)

    def update(self, det, gt_cls, gt_xyxy) -> None:
        """One image: ``det`` (n, 6) [x1, y1, x2, y2, conf, cls]; labels ``gt_cls`` (m,) and ``gt_xyxy`` (m, 4),
        in the same pixels as the boxes."""
        det = torch.as_tensor(det, dtype=torch.float32).reshape(-1, 6)
        det = det[det[:, 4] > self.conf]
        gt_cls = np.asarray(gt_cls, dtype=np.int64).reshape(-1)
        gt_xyxy = torch.as_tensor(np.asarray(gt_xyxy, dtype=np.float32).reshape(-1, 4))
        dcls = det[:, 5].long().numpy()
        bg = self.nc
        matched_det = np.zeros(len(det), dtype=bool)
        matched_gt = np.zeros(len(gt_cls), dtype=bool)
        if len(det) and len(gt_cls):
            iou = box_iou(gt_xyxy, det[:, :4]).numpy()  # (m, n)
            gi, di = np.nonzero(iou > self.iou)
            for k in np.argsort(-iou[gi, di], kind="stable"):
                g, d = gi[k], di[k]
                if matched_gt[g] or matched_det[d]:
                    continue
                matched_gt[g] = matched_det[d] = True
                self.matrix[dcls[d], gt_cls[g]] += 1
        for g in np.nonzero(~matched_gt)[0]:
            self.matrix[bg, gt_cls[g]] += 1
        for d in np.nonzero(~matched_det)[0]:
            self.matrix[dcls[d], bg] += 1

    def to_dict(self, names: list[str] | None = None) -> dict:
        names = list(names) if names else [str(i) for i in range(self.nc)]
        return {"rows": "predicted", "columns": "true", "conf": self.conf, "iou": self.iou,
                "names": names + ["background"], "matrix": self.matrix.tolist()}


def plot_confusion(confusion: dict, path: str | Path, title: str = "") -> Path:
    """``confusion`` (:meth:`ConfusionMatrix.to_dict`) as a PNG heat map, each true-class column normalised
    to 1 (counts annotated when there are few classes). Written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(confusion["matrix"], dtype=np.float64)
    names = confusion["names"]
    n = len(names)
    cols = m.sum(0, keepdims=True)
    norm = np.divide(m, cols, out=np.zeros_like(m), where=cols > 0)
    size = min(max(4.0, 0.35 * n + 2.5), 24.0)
    fig = Figure(figsize=(size * 1.15, size))
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(n)
    fs = 10 if n <= 12 else max(4, int(200 / n))
    ax.set_xticks(ticks, names, rotation=90, fontsize=fs)
    ax.set_yticks(ticks, names, fontsize=fs)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=fs,
                            color="white" if norm[i, j] > 0.5 else "black")
    head = f"confusion matrix (conf {confusion['conf']:g}, IoU {confusion['iou']:g})"
    ax.set_title(f"{title}\n{head}" if title else head, fontsize=9)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
