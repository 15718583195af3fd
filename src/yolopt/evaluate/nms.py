"""Non-maximum suppression for YOLOv5 outputs (same semantics as upstream's).

torchvision is optional in yolopt, so greedy NMS is implemented here. Because greedy NMS
keeps boxes in descending score order, it stops once ``max_det`` boxes are kept, which bounds
the work even at the evaluation threshold (conf 0.001, thousands of candidates).
"""

from __future__ import annotations

import torch

from .boxes import box_area, xywh2xyxy

MAX_WH = 7680  # class offset: boxes of different classes never overlap
MAX_NMS = 30000  # candidates kept (by score) before NMS


def _torchvision_nms():
    try:
        import torchvision  # noqa: F401

        return torch.ops.torchvision.nms
    except Exception:  # noqa: BLE001 - missing or mismatched torchvision
        return None


_TV_NMS = _torchvision_nms()


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, max_keep: int | None = None) -> torch.Tensor:
    """Indices of kept boxes, in descending score order; a box is dropped if IoU > iou_thres."""
    if _TV_NMS is not None:
        keep = _TV_NMS(boxes, scores, iou_thres)
        return keep[:max_keep] if max_keep else keep
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    areas = box_area(boxes)
    keep: list[int] = []
    rest = torch.arange(len(order), device=boxes.device)
    limit = max_keep or len(order)
    while rest.numel() and len(keep) < limit:
        i = rest[0]
        keep.append(int(i))
        rest = rest[1:]
        if not rest.numel():
            break
        b, others = boxes[i], boxes[rest]
        w = (torch.min(b[2], others[:, 2]) - torch.max(b[0], others[:, 0])).clamp(min=0)
        h = (torch.min(b[3], others[:, 3]) - torch.max(b[1], others[:, 1])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        rest = rest[iou <= iou_thres]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


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
        keep = greedy_nms(x[:, :4] + offset, x[:, 4], iou_thres, max_keep=max_det)
        out[b] = x[keep[:max_det]]
    return out
