"""Non-maximum suppression for YOLOv5 outputs (same semantics as upstream's).

torchvision is optional in yolopt, so greedy NMS is implemented here. Because greedy NMS
keeps boxes in descending score order, it stops once ``max_det`` boxes are kept, which bounds
the work even at the evaluation threshold (conf 0.001, thousands of candidates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .boxes import xywh2xyxy

MAX_WH = 7680  # class offset: boxes of different classes never overlap
MAX_NMS = 30000  # candidates kept (by score) before NMS


@dataclass(frozen=True)
class NMSOptions:
    """The NMS options every caller passes through: thresholds, per-image cap, class filter.

    ``conf``: minimum objectness x class score. ``iou``: a box is dropped when its IoU with a kept,
    higher-scoring box of its class is above this. ``max_det``: boxes kept per image. ``classes``:
    keep only these class ids (None = all). ``agnostic``: boxes of different classes suppress each other.
    The defaults are prediction's; :meth:`val` gives the evaluation thresholds (upstream val.py).
    """

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    classes: tuple[int, ...] | None = None
    agnostic: bool = False

    def __post_init__(self):
        if self.classes is not None and not isinstance(self.classes, tuple):
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))

    @classmethod
    def predict(cls, **changes) -> NMSOptions:
        """Prediction defaults: conf 0.25, IoU 0.45, 300 boxes (upstream detect.py)."""
        return cls(**changes)

    @classmethod
    def val(cls, **changes) -> NMSOptions:
        """Evaluation defaults: conf 0.001, IoU 0.6, 300 boxes (upstream val.py)."""
        return cls(**{"conf": 0.001, "iou": 0.6, **changes})

    def check(self) -> NMSOptions:
        """Raise ``ValueError`` for thresholds outside [0, 1] or ``max_det`` under 1; returns self."""
        if not 0 <= self.conf <= 1 or not 0 <= self.iou <= 1:
            raise ValueError(f"thresholds must be in [0, 1], got conf={self.conf} iou={self.iou}")
        if int(self.max_det) < 1:
            raise ValueError(f"max_det {self.max_det}: must be at least 1")
        return self


PREDICT_NMS = NMSOptions.predict()
VAL_NMS = NMSOptions.val()


def _torchvision_nms():
    try:
        import torchvision  # noqa: F401

        return torch.ops.torchvision.nms
    except Exception:  # noqa: BLE001 - missing or mismatched torchvision
        return None


_TV_NMS = _torchvision_nms()


def _greedy_one_class(b: np.ndarray, iou_thres: float, limit: int) -> list[int]:
    """Greedy NMS of score-sorted float32 xyxy boxes of one class; positions kept."""
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    rest = np.arange(len(b))
    keep: list[int] = []
    while rest.size and len(keep) < limit:
        i = rest[0]
        keep.append(int(i))
        rest = rest[1:]
        if not rest.size:
            break
        o = b[rest]
        w = np.minimum(b[i, 2], o[:, 2]) - np.maximum(b[i, 0], o[:, 0])
        h = np.minimum(b[i, 3], o[:, 3]) - np.maximum(b[i, 1], o[:, 1])
        inter = np.maximum(w, 0, dtype=np.float32) * np.maximum(h, 0, dtype=np.float32)
        union = area[i] + area[rest] - inter
        # zero-area boxes (a degenerate prediction) have no overlap: IoU 0, never NaN, and they do not suppress
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        rest = rest[iou <= iou_thres]
    return keep


def greedy_nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, max_keep: int | None = None,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices of kept boxes, in descending score order; a box is dropped if IoU > iou_thres.

    ``groups`` (e.g. class ids) splits the problem: boxes of different groups never suppress
    each other, which is what upstream's class offset achieves, at a fraction of the work.
    """
    if _TV_NMS is not None:
        keep = _TV_NMS(boxes, scores, iou_thres)
        return keep[:max_keep] if max_keep else keep
    order = torch.sort(scores, descending=True, stable=True).indices.cpu().numpy()
    b = boxes.detach().float().cpu().numpy()[order]
    g = np.zeros(len(order), np.int64) if groups is None else groups.detach().cpu().numpy()[order].astype(np.int64)
    limit = max_keep or len(order)
    kept: list[int] = []
    for c in np.unique(g):
        pos = np.flatnonzero(g == c)  # still in score order
        kept.extend(pos[_greedy_one_class(b[pos], iou_thres, limit)].tolist())
    kept.sort()  # positions in the score-sorted list = global descending-score order
    return torch.from_numpy(order[np.array(kept[:limit], dtype=np.int64)]).to(boxes.device)


def non_max_suppression(
    prediction: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: list[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
) -> list[torch.Tensor]:
    """Decoded predictions (B, N, 5+nc) -> per image (n, 6) tensors [x1, y1, x2, y2, conf, cls].

    ``conf`` is objectness x class probability. With ``multi_label`` a box may be kept once
    per class whose score passes ``conf_thres`` (used for mAP evaluation).
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"thresholds must be in [0, 1], got conf={conf_thres} iou={iou_thres}")
    nc = prediction.shape[2] - 5
    multi_label &= nc > 1
    candidates = prediction[..., 4] > conf_thres
    out = [torch.zeros((0, 6), device=prediction.device)] * prediction.shape[0]
    for b, x in enumerate(prediction):
        x = x[candidates[b]]
        if not x.shape[0]:
            continue
        scores = x[:, 5:] * x[:, 4:5]
        box = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)]
        if not x.shape[0]:
            continue
        x = x[x[:, 4].argsort(descending=True)[:MAX_NMS]]
        offset = x[:, 5:6] * (0 if agnostic else MAX_WH)
        # The offset is kept (though groups already separate classes) so IoUs are computed on the
        # same float32 coordinates as upstream's torchvision call: identical suppressions.
        keep = greedy_nms(x[:, :4] + offset, x[:, 4], iou_thres, max_keep=max_det,
                          groups=None if agnostic else x[:, 5])
        out[b] = x[keep[:max_det]]
    return out
