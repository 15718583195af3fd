"""Training-time augmentation: mosaic, random affine, HSV jitter, flips.

Every function takes an explicit ``numpy.random.Generator`` so a sample's augmentation is
a pure function of ``(seed, epoch, index)`` - the property that makes resumed runs and
multi-process loading reproducible. Boxes travel with the pixels as ``(n, 4)`` xyxy
arrays in pixels of the current image; boxes that leave the image or shrink too much are
dropped together with their class.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..data.letterbox import PAD_VALUE


def xywhn_to_xyxy(xywh: np.ndarray, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> np.ndarray:
    out = np.empty_like(xywh, dtype=np.float32)
    out[:, 0] = w * (xywh[:, 0] - xywh[:, 2] / 2) + padw
    out[:, 1] = h * (xywh[:, 1] - xywh[:, 3] / 2) + padh
    out[:, 2] = w * (xywh[:, 0] + xywh[:, 2] / 2) + padw
    out[:, 3] = h * (xywh[:, 1] + xywh[:, 3] / 2) + padh
    return out


def xyxy_to_xywhn(xyxy: np.ndarray, w: float, h: float) -> np.ndarray:
    out = np.empty_like(xyxy, dtype=np.float32)
    out[:, 0] = (xyxy[:, 0] + xyxy[:, 2]) / 2 / w
    out[:, 1] = (xyxy[:, 1] + xyxy[:, 3]) / 2 / h
    out[:, 2] = (xyxy[:, 2] - xyxy[:, 0]) / w
    out[:, 3] = (xyxy[:, 3] - xyxy[:, 1]) / h
    return out


def box_candidates(before: np.ndarray, after: np.ndarray, wh_thr=2.0, ar_thr=100.0, area_thr=0.1, eps=1e-16):
    """Keep boxes still at least ``wh_thr`` px, ``area_thr`` of their scaled area, aspect < ``ar_thr``."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_affine(img: np.ndarray, boxes: np.ndarray, cls: np.ndarray, rng: np.random.Generator, hyp: dict,
                  border: tuple[int, int] = (0, 0)):
    """Rotation/scale/shear/translation (and optional perspective) about the image centre.

    ``border`` < 0 crops (mosaic canvases are 2x the output size: border = -s/2).
    Returns the warped image, its boxes and classes (boxes that fall out are removed).
    """
    height = img.shape[0] + border[0] * 2
    width = img.shape[1] + border[1] * 2
    C = np.eye(3)
    C[0, 2], C[1, 2] = -img.shape[1] / 2, -img.shape[0] / 2
    P = np.eye(3)
    persp = hyp.get("perspective", 0.0)
    P[2, 0], P[2, 1] = rng.uniform(-persp, persp), rng.uniform(-persp, persp)
    R = np.eye(3)
    deg, sc = hyp.get("degrees", 0.0), hyp.get("scale", 0.0)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=float(rng.uniform(-deg, deg)),
                                    scale=float(rng.uniform(1 - sc, 1 + sc)))
    S = np.eye(3)
    sh = hyp.get("shear", 0.0)
    S[0, 1] = math.tan(rng.uniform(-sh, sh) * math.pi / 180)
    S[1, 0] = math.tan(rng.uniform(-sh, sh) * math.pi / 180)
    T = np.eye(3)
    tr = hyp.get("translate", 0.0)
    T[0, 2] = rng.uniform(0.5 - tr, 0.5 + tr) * width
    T[1, 2] = rng.uniform(0.5 - tr, 0.5 + tr) * height
    M = T @ S @ R @ P @ C
    fill = (PAD_VALUE,) * 3
    if border[0] != 0 or border[1] != 0 or (M != np.eye(3)).any():
        if persp:
            img = cv2.warpPerspective(img, M, dsize=(width, height), borderValue=fill)
        else:
            img = cv2.warpAffine(img, M[:2], dsize=(width, height), borderValue=fill)
    n = len(boxes)
    if n:
        xy = np.ones((n * 4, 3))
        xy[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # 4 corners
        xy = xy @ M.T
        xy = (xy[:, :2] / xy[:, 2:3] if persp else xy[:, :2]).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
        scale_factor = math.sqrt(abs(np.linalg.det(M[:2, :2]))) if not persp else 1.0
        keep = box_candidates(boxes * scale_factor, new)
        boxes, cls = new[keep].astype(np.float32), cls[keep]
    return img, boxes, cls


def augment_hsv(img: np.ndarray, rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> None:
    """Random hue/saturation/value gains, in place (BGR uint8)."""
    if not (hgain or sgain or vgain):
        return
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=img)


def mosaic4(images: list[np.ndarray], labels: list[np.ndarray], s: int, rng: np.random.Generator, hyp: dict):
    """Four images (long side already ``s``) around a random centre on a 2s canvas, then affine to s x s.

    ``labels`` are ``(n, 5)`` [class, cx, cy, w, h] normalised to each image. Returns
    (image s x s, boxes xyxy px, classes).
    """
    border = (-s // 2, -s // 2)
    yc, xc = (int(rng.uniform(-b, 2 * s + b)) for b in border)
    canvas = np.full((s * 2, s * 2, 3), PAD_VALUE, dtype=np.uint8)
    all_boxes, all_cls = [], []
    for i, (img, lab) in enumerate(zip(images, labels)):
        h, w = img.shape[:2]
        if i == 0:  # top left
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        padw, padh = x1a - x1b, y1a - y1b
        if len(lab):
            all_boxes.append(xywhn_to_xyxy(lab[:, 1:5], w, h, padw, padh))
            all_cls.append(lab[:, 0])
    boxes = np.concatenate(all_boxes, 0) if all_boxes else np.zeros((0, 4), np.float32)
    cls = np.concatenate(all_cls, 0) if all_cls else np.zeros((0,), np.float32)
    np.clip(boxes, 0, 2 * s, out=boxes)
    return random_affine(canvas, boxes, cls, rng, hyp, border=border)
