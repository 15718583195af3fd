"""Network output -> detections in original-image pixels: the one post-processing path.

Every caller (``yolopt.predict``, the evaluator, ``bench --end2end``, the profiler's pipeline
stages, export verification) goes through :func:`postprocess`; :func:`split_end2end` is the one
place that reads the rows of an artifact exported with ``--nms``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .boxes import scale_boxes
from .nms import PREDICT_NMS, NMSOptions, non_max_suppression

__all__ = ["ImageMeta", "NMSOptions", "postprocess", "select", "split_end2end", "to_original"]


@dataclass(frozen=True)
class ImageMeta:
    """Where one original image sits in the network input (what :func:`postprocess` needs to map back).

    ``orig_hw``: (h0, w0) original pixels. ``input_hw``: (h, w) of the batch tensor. ``gain``:
    original -> input scale. ``pad``: (pad_w, pad_h) half-paddings in input pixels.
    """

    orig_hw: tuple[int, int]
    input_hw: tuple[int, int]
    gain: float
    pad: tuple[float, float]
    path: str | None = None


def split_end2end(pred: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """Rows ``(K, 7)`` = [batch_index, x1, y1, x2, y2, conf, cls] of an in-graph-NMS artifact ->
    per image ``(n, 6)`` = [x1, y1, x2, y2, conf, cls] (input pixels), in the artifact's order."""
    pred = torch.as_tensor(pred).float().cpu()
    return [pred[pred[:, 0] == i][:, 1:] for i in range(batch)]


def select(pred: torch.Tensor, nms: NMSOptions = PREDICT_NMS, *, multi_label: bool = False, end2end: bool = False,
           batch: int | None = None) -> list[torch.Tensor]:
    """The NMS step: predictions -> per image ``(n, 6)`` [x1, y1, x2, y2, conf, cls] in input pixels.

    ``pred``: ``(B, N, 5+nc)`` decoded outputs (xywh in input pixels, objectness, class
    probabilities), or with ``end2end`` the ``(K, 7)`` rows of an artifact that ran NMS itself
    (then ``nms.conf``, ``nms.classes`` and ``nms.max_det`` only filter further; ``batch`` = images in the call).
    """
    if not end2end:
        return non_max_suppression(torch.as_tensor(pred).float().cpu(), nms.conf, nms.iou, nms.classes, nms.agnostic,
                                   multi_label=multi_label, max_det=nms.max_det)
    if batch is None:
        batch = int(pred[:, 0].max().item()) + 1 if len(pred) else 0
    dets = []
    for d in split_end2end(pred, batch):
        d = d[d[:, 4] > nms.conf]
        if nms.classes is not None:
            d = d[torch.isin(d[:, 5].long(), torch.tensor(nms.classes))]
        dets.append(d[:nms.max_det])
    return dets


def to_original(dets: list[torch.Tensor], metas: list[ImageMeta]) -> list[torch.Tensor]:
    """Map each image's xyxy boxes from the letterboxed input back to its original pixels (clipped)."""
    out = []
    for d, m in zip(dets, metas):
        d = d.clone()
        scale_boxes(d[:, :4], (m.gain, m.gain), m.pad, m.orig_hw)
        out.append(d)
    return out


def postprocess(pred: torch.Tensor, metas: list[ImageMeta], nms: NMSOptions = PREDICT_NMS, *,
                multi_label: bool = False, end2end: bool = False) -> list[torch.Tensor]:
    """Network output -> per image ``(n, 6)`` [x1, y1, x2, y2, conf, cls] in original pixels, by confidence.

    :func:`select` (NMS with ``nms``, or the filter of an ``end2end`` artifact) then :func:`to_original`.
    """
    return to_original(select(pred, nms, multi_label=multi_label, end2end=end2end, batch=len(metas)), metas)
