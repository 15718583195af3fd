"""The YOLOv5 training loss, numerically identical to upstream's ``ComputeLoss``.

Targets are ``(n, 6)`` rows ``[image_index, class, cx, cy, w, h]`` normalised to the
input image. Each target is matched to every anchor whose width and height ratios are
within ``anchor_t`` of it, in its own grid cell and the two nearest neighbouring cells
(offset 0.5). Box loss is ``1 - CIoU``; objectness is a BCE against the (detached,
clamped) IoU of the matched prediction (``gr = 1``); classes are a BCE against one-hot
targets. Per-level objectness is weighted by ``balance``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# hyp.scratch-low (upstream's default for training from scratch and fine-tuning small models)
DEFAULT_HYP: dict[str, float] = {
    "lr0": 0.01,
    "lrf": 0.01,
    "momentum": 0.937,
    "weight_decay": 0.0005,
    "warmup_epochs": 3.0,
    "warmup_momentum": 0.8,
    "warmup_bias_lr": 0.1,
    "box": 0.05,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "iou_t": 0.2,
    "anchor_t": 4.0,
    "fl_gamma": 0.0,
    "label_smoothing": 0.0,
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.5,
    "shear": 0.0,
    "perspective": 0.0,
    "flipud": 0.0,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
}

_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


def scaled_loss_hyp(hyp: dict, nl: int, nc: int, imgsz: int) -> dict:
    """Loss gains as the trainer uses them: scaled by detection layers, classes and image size."""
    h = dict(hyp)
    h["box"] = hyp["box"] * 3 / nl
    h["cls"] = hyp["cls"] * nc / 80 * 3 / nl
    h["obj"] = hyp["obj"] * (imgsz / 640) ** 2 * 3 / nl
    return h


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matching rows of two ``(n, 4)`` xywh tensors; returns ``(n,)``."""
    x1, y1, w1, h1 = box1.unbind(-1)
    x2, y2, w2, h2 = box2.unbind(-1)
    ax1, ax2, ay1, ay2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    bx1, bx2, by1, by2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(0) * (
        torch.minimum(ay2, by2) - torch.maximum(ay1, by1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)  # enclosing box
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    diag2 = cw**2 + ch**2 + eps
    centre2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre2 / diag2 + v * alpha)


class _FocalBCE(nn.Module):
    """BCE-with-logits wrapped in focal modulation (used when ``fl_gamma > 0``)."""

    def __init__(self, bce: nn.BCEWithLogitsLoss, gamma: float, alpha: float = 0.25):
        super().__init__()
        self.bce, self.gamma, self.alpha = bce, gamma, alpha
        self.bce.reduction = "none"

    def forward(self, pred, true):
        loss = self.bce(pred, true)
        p = pred.sigmoid()
        p_t = true * p + (1 - true) * (1 - p)
        loss = loss * (true * self.alpha + (1 - true) * (1 - self.alpha)) * (1 - p_t) ** self.gamma
        return loss.mean()


class YoloLoss:
    """``loss(preds, targets) -> (total * batch_size, tensor([lbox, lobj, lcls]))``.

    ``preds`` is the train-mode output of a ``DetectionModel`` (list of ``(B, na, ny, nx, 5+nc)``).
    ``hyp`` must already be scaled (see :func:`scaled_loss_hyp`) when used for training.
    """

    def __init__(self, model, hyp: dict | None = None, gr: float = 1.0):
        hyp = {**DEFAULT_HYP, **(hyp or {})}
        det = model.module.detect if hasattr(model, "module") else model.detect
        device = det.anchors.device
        self.bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["cls_pw"]], device=device))
        self.bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["obj_pw"]], device=device))
        if hyp["fl_gamma"] > 0:
            self.bce_cls, self.bce_obj = _FocalBCE(self.bce_cls, hyp["fl_gamma"]), _FocalBCE(self.bce_obj, hyp["fl_gamma"])
        eps = hyp.get("label_smoothing", 0.0)
        self.cp, self.cn = 1.0 - 0.5 * eps, 0.5 * eps
        self.nl, self.na, self.nc = det.nl, det.na, det.nc
        self.balance = {3: [4.0, 1.0, 0.4]}.get(self.nl, [4.0, 1.0, 0.25, 0.06, 0.02])
        self.anchors = det.anchors  # grid units, (nl, na, 2)
        self.hyp, self.gr = hyp, gr

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor):
        device = preds[0].device
        targets = targets.to(device)
        lcls = torch.zeros(1, device=device)
        lbox = torch.zeros(1, device=device)
        lobj = torch.zeros(1, device=device)
        tcls, tbox, indices, anch = self.build_targets(preds, targets)
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anch[i]
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox[i])
                lbox = lbox + (1.0 - iou).mean()
                iou = iou.detach().clamp(0).to(tobj.dtype)
                if self.gr < 1:
                    iou = (1.0 - self.gr) + self.gr * iou
                tobj[b, a, gj, gi] = iou
                if self.nc > 1:
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(n, device=device), tcls[i]] = self.cp
                    lcls = lcls + self.bce_cls(pcls, t)
            lobj = lobj + self.bce_obj(pi[..., 4], tobj) * self.balance[i]
        lbox = lbox * self.hyp["box"]
        lobj = lobj * self.hyp["obj"]
        lcls = lcls * self.hyp["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, preds, targets):
        """Per level: target classes, boxes (offset within cell, wh in grid units), indices, anchors."""
        na, nt = self.na, targets.shape[0]
        device = targets.device
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=device)
        ai = torch.arange(na, device=device, dtype=torch.float32).view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # (na, nt, 7)
        g = 0.5
        off = _OFFSETS.to(device) * g
        for i in range(self.nl):
            anchors, shape = self.anchors[i], preds[i].shape
            gain[2:6] = torch.tensor(shape, device=device, dtype=torch.float32)[[3, 2, 3, 2]]
            t = targets * gain
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                keep = torch.max(r, 1 / r).max(2)[0] < self.hyp["anchor_t"]
                t = t[keep]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                left, top = ((gxy % 1 < g) & (gxy > 1)).T
                right, bottom = ((gxi % 1 < g) & (gxi > 1)).T
                sel = torch.stack((torch.ones_like(left), left, top, right, bottom))
                t = t.repeat((5, 1, 1))[sel]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[sel]
            else:
                t = targets[0]
                offsets = 0
            bc, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gi, gj = gij.T
            gj = gj.clamp(0, shape[2] - 1)
            gi = gi.clamp(0, shape[3] - 1)
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch
