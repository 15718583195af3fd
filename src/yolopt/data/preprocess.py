"""Decoded images -> one network input batch: the one pre-processing path.

Two letterbox modes, both exactly upstream YOLOv5's:

* ``square``: every image is resized to fit ``imgsz`` (h, w) and padded (114) to exactly that size,
  as upstream ``detect.py`` does for a fixed input. Fixed-shape artifacts need it.
* ``rect``: the long side is resized to ``imgsz`` (INTER_AREA when shrinking), then the batch is
  padded to the smallest stride-multiple rectangle that holds it (upstream ``val.py`` with
  ``rect=True``: less padding, a slightly different mAP). Only dynamic-shape models take it.

``resize_first=True`` in square mode reproduces upstream ``val.py`` with ``rect=False`` (long
side first, then pad without upscaling), which is how fixed-shape artifacts are evaluated.
"""

from __future__ import annotations

import numpy as np
import torch

from ..ops.postprocess import ImageMeta
from .letterbox import letterbox, resize_long_side, to_tensor

MODES = ("square", "rect")


def rect_shape(shapes_hw, imgsz: int, stride: int, pad: float = 0.5) -> tuple[int, int]:
    """The letterbox (h, w) for a batch of images of ``shapes_hw`` in rect mode (upstream's rule)."""
    ar = np.asarray([h / w for h, w in shapes_hw], dtype=np.float64)
    lo, hi = ar.min(), ar.max()
    rel = [1.0, 1.0]
    if hi < 1:
        rel = [hi, 1.0]
    elif lo > 1:
        rel = [1.0, 1.0 / lo]
    return tuple(int(v) for v in (np.ceil(np.array(rel) * imgsz / stride + pad).astype(int) * stride))


def preprocess(
    images: list[np.ndarray],
    imgsz: int | tuple[int, int] = 640,
    mode: str = "square",
    stride: int = 32,
    shape: tuple[int, int] | None = None,
    resize_first: bool = False,
    paths: list | None = None,
    pixels: bool = False,
) -> tuple[torch.Tensor, list[ImageMeta]]:
    """BGR uint8 HWC images -> ``(B, 3, H, W)`` float32 RGB in [0, 1] and one :class:`ImageMeta` each.

    ``imgsz``: the square size (or (h, w) for a fixed non-square input). ``mode``: ``square`` or
    ``rect`` (see module doc). ``shape``: the rect letterbox (h, w) when the caller already knows it
    (the evaluator groups a whole dataset by aspect ratio); otherwise it is computed from these images.
    ``pixels``: return the letterboxed uint8 RGB pixels instead (for quantized graphs that take them).
    """
    if mode not in MODES:
        raise ValueError(f"letterbox mode {mode!r}: choose one of {', '.join(MODES)}")
    if not images:
        raise ValueError("preprocess: no images")
    tensors, metas = [], []
    if mode == "rect" or resize_first:
        if not isinstance(imgsz, int):
            raise ValueError("rect letterbox needs one integer imgsz (the long side)")
        resized = [resize_long_side(im, imgsz) for im in images]
        if mode == "rect":
            target = tuple(shape) if shape is not None else rect_shape([im.shape[:2] for im in images], imgsz, stride)
        else:
            target = (imgsz, imgsz)
        for k, (im0, im) in enumerate(zip(images, resized)):
            padded, _, pad = letterbox(im, target, auto=False, scaleup=False)
            tensors.append(to_tensor(padded, pixels))
            metas.append(ImageMeta(im0.shape[:2], padded.shape[:2], im.shape[0] / im0.shape[0], pad,
                                   str(paths[k]) if paths else None))
    else:
        for k, im0 in enumerate(images):
            padded, ratio, _ = letterbox(im0, imgsz, auto=False)
            (h, w), (h0, w0), g = padded.shape[:2], im0.shape[:2], ratio[0]
            # upstream detect.py maps boxes back with the unrounded padding (input - original * gain) / 2
            pad = ((w - w0 * g) / 2, (h - h0 * g) / 2)
            tensors.append(to_tensor(padded, pixels))
            metas.append(ImageMeta((h0, w0), (h, w), g, pad, str(paths[k]) if paths else None))
    return torch.stack(tensors), metas
