"""Box decoding outside the graph, for artifacts exported with a raw head (``yolopt export --raw-head``).

Such an artifact ends at Detect's 1x1 convs: one ``(B, na*(5+nc), ny, nx)`` logit map per level. Decoding
here, in NumPy, does what Detect's eval forward does in the graph (sigmoid, ``xy = (2s + grid) * stride``,
``wh = (2s)^2 * anchor``), and with a score threshold only for the cells whose objectness passes it: NMS
keeps no box whose objectness is at or under ``conf`` (its score is objectness x class probability), so the
other cells never need their sigmoid, boxes or class scores. On an INT8 graph the in-graph decode
(dequantize, sigmoid over every cell, concat) is a fifth of the model's time.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["decode_raw", "objectness_logit"]


def objectness_logit(conf: float) -> float:
    """The logit whose sigmoid is ``conf``, lowered by a margin: every cell whose objectness could pass ``conf``
    after the float sigmoid is kept (NMS applies the exact test)."""
    if conf <= 0.0:
        return -math.inf
    if conf >= 1.0:
        return math.inf
    return math.log(conf / (1.0 - conf)) - 1e-3


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-v, dtype=np.float32))).astype(np.float32)


def decode_raw(maps: list, anchors: np.ndarray, strides, conf: float | None = None) -> np.ndarray:
    """Raw head maps -> ``(B, N, 5+nc)`` predictions (xywh in input pixels, objectness, class probabilities),
    the layout of Detect's decoded output: rows by level, then anchor, then grid row and column.

    ``maps[i]``: ``(B, na*(5+nc), ny_i, nx_i)`` logits. ``anchors``: ``(nl, na, 2)`` anchor sizes in input
    pixels. ``strides``: ``nl`` level strides. ``conf``: None decodes every cell (the graph's full output);
    a threshold decodes only the cells whose objectness can pass it, and each image's rows are zero-padded to
    the batch's longest (objectness 0: no NMS keeps them).
    """
    anchors = np.asarray(anchors, dtype=np.float32)
    nl, na = anchors.shape[:2]
    maps = [np.asarray(m, dtype=np.float32) for m in maps]
    bs = maps[0].shape[0]
    no = maps[0].shape[1] // na
    if conf is None:
        out = []
        for i, m in enumerate(maps):
            _, _, ny, nx = m.shape
            s = _sigmoid(m.reshape(bs, na, no, ny, nx).transpose(0, 1, 3, 4, 2))
            gy, gx = np.meshgrid(np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32), indexing="ij")
            grid = np.stack((gx, gy), -1) - np.float32(0.5)  # (ny, nx, 2)
            xy = (s[..., :2] * 2 + grid) * np.float32(strides[i])
            wh = (s[..., 2:4] * 2) ** 2 * anchors[i].reshape(1, na, 1, 1, 2)
            out.append(np.concatenate((xy, wh, s[..., 4:]), -1).reshape(bs, -1, no))
        return np.concatenate(out, 1)
    thr = np.float32(objectness_logit(conf))
    rows: list[list[np.ndarray]] = [[] for _ in range(bs)]
    for i, m in enumerate(maps):
        _, _, ny, nx = m.shape
        v = m.reshape(bs, na, no, ny, nx)
        b, a, y, x = np.nonzero(v[:, :, 4] > thr)  # C order: by image, anchor, row, column
        if not len(b):
            continue
        s = _sigmoid(v[b, a, :, y, x])  # (K, no)
        grid = np.stack((x, y), -1).astype(np.float32) - np.float32(0.5)
        xy = (s[:, :2] * 2 + grid) * np.float32(strides[i])
        wh = (s[:, 2:4] * 2) ** 2 * anchors[i][a]
        dec = np.concatenate((xy, wh, s[:, 4:]), -1)
        for k in np.unique(b):
            rows[k].append(dec[b == k])
    per = [np.concatenate(r, 0) if r else np.zeros((0, no), np.float32) for r in rows]
    n = max(max(len(p) for p in per), 1)
    out = np.zeros((bs, n, no), np.float32)
    for k, p in enumerate(per):
        out[k, :len(p)] = p
    return out
