"""Resize-and-pad preprocessing, identical to upstream YOLOv5's letterbox."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

PAD_VALUE = 114



def letterbox(
    im: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color: int | tuple[int, int, int] = PAD_VALUE,
    auto: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio, then pad to ``new_shape`` (h, w), centred.

    ``auto=True`` pads only up to the next multiple of ``stride`` (minimum rectangle).
    Returns ``(image, (w_ratio, h_ratio), (pad_w, pad_h))`` with half-paddings.
    """
    shape = im.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    new_unpad = (int(round(shape[1] * r)), int(round(shape[0] * r)))
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    dw, dh = dw / 2, dh / 2
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    if isinstance(color, int):
        color = (color, color, color)
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, (r, r), (dw, dh)


def resize_long_side(im: np.ndarray, size: int, augment: bool = False) -> np.ndarray:
    """Resize so the longer side equals ``size`` (upstream's load_image for val/train)."""
    h0, w0 = im.shape[:2]
    r = size / max(h0, w0)
    if r != 1:
        interp = cv2.INTER_LINEAR if (augment or r > 1) else cv2.INTER_AREA
        im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
    return im


def to_pixels(x: np.ndarray) -> np.ndarray:
    """A float network input in [0, 1] -> the uint8 pixels it was made from (inverse of ``to_tensor``)."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def to_tensor(im_bgr: np.ndarray, pixels: bool = False) -> torch.Tensor:
    """HWC BGR uint8 -> CHW RGB float32 in [0, 1] (``pixels``: CHW RGB uint8, for graphs that take pixels)."""
    im = np.ascontiguousarray(im_bgr[..., ::-1].transpose(2, 0, 1))
    return torch.from_numpy(im) if pixels else torch.from_numpy(im).float().div_(255.0)
