"""A deterministic synthetic detection dataset in YOLO format (for fast tests and the demo).

Each image is a textured clutter background (smooth colour noise, stripes, random
lines and blobs that are *not* classes) with 1-6 objects drawn from shape / glyph
classes with varied colour, scale, aspect, rotation and partial occlusion by other
objects. Every image is generated from its own ``(seed, index)`` random stream, so the
same arguments always give byte-identical files.

Layout::

    OUT/images/{train,val}/000000.jpg
    OUT/labels/{train,val}/000000.txt   # class cx cy w h, normalised
    OUT/data.yaml                       # path: . , train, val, names
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import yaml

from ..errors import YoloptError
from ..fileio import atomic_write

CLASS_NAMES = ["circle", "square", "triangle", "star", "cross", "ring", "letter_A", "arrow", "hexagon", "letter_Z"]
MAX_OCCLUDED = 0.4  # an object may lose at most this fraction of its area to later objects


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    # smooth colour noise at a random scale
    k = int(rng.integers(4, 17))
    small = rng.integers(0, 256, (k, k, 3), dtype=np.uint8)
    bg = cv2.resize(small, (s, s), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    bg = bg * rng.uniform(0.3, 0.8) + rng.uniform(20, 120)
    # fine grain texture
    bg += rng.normal(0, rng.uniform(4, 18), (s, s, 1)).astype(np.float32)
    if rng.random() < 0.5:  # stripes
        ang, freq = rng.uniform(0, math.pi), rng.uniform(0.05, 0.4)
        yy, xx = np.mgrid[0:s, 0:s]
        stripes = np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * freq)
        bg += (stripes[..., None] * rng.uniform(5, 25)).astype(np.float32)
    bg = np.clip(bg, 0, 255).astype(np.uint8)
    # clutter: lines and soft blobs (distractors, never labelled)
    for _ in range(int(rng.integers(3, 12))):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        p1 = tuple(int(v) for v in rng.integers(0, s, 2))
        p2 = tuple(int(v) for v in rng.integers(0, s, 2))
        if rng.random() < 0.6:
            cv2.line(bg, p1, p2, c, int(rng.integers(1, 4)), cv2.LINE_AA)
        else:
            axes = tuple(int(v) for v in rng.integers(1, max(2, s // 40), 2))  # smaller than any object
            cv2.ellipse(bg, p1, axes, float(rng.uniform(0, 180)), 0, 360, c, -1, cv2.LINE_AA)
    return bg


def _polygon(cls: int, rng: np.random.Generator) -> list[np.ndarray] | None:
    """Outline of class ``cls`` in unit coordinates (centred at 0, radius ~1); None = glyph/ring."""
    if cls == 1:  # square
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)]
    if cls == 2:  # triangle
        a = np.deg2rad([-90, 30, 150])
        return [np.stack([np.cos(a), np.sin(a)], 1)]
    if cls == 3:  # 5-point star
        a = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return [np.stack([np.cos(a) * r, np.sin(a) * r], 1)]
    if cls == 4:  # cross
        w = 0.33
        return [np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w],
                          [-1, w], [-1, -w], [-w, -w]], np.float64)]
    if cls == 7:  # arrow
        return [np.array([[-1, -0.3], [0.2, -0.3], [0.2, -0.8], [1, 0], [0.2, 0.8], [0.2, 0.3], [-1, 0.3]], np.float64)]
    if cls == 8:  # hexagon
        a = np.deg2rad(np.arange(6) * 60)
        return [np.stack([np.cos(a), np.sin(a)], 1)]
    return None


def _draw_object(cls: int, rng: np.random.Generator, s: int, colour) -> tuple[np.ndarray, np.ndarray] | None:
    """Mask (uint8 0/1, s x s) and a colour layer of one object; None if it fell off the image."""
    size = rng.uniform(0.06, 0.32) * s  # half-extent in pixels
    aspect = rng.uniform(0.7, 1.4)
    cx, cy = rng.uniform(0.05, 0.95, 2) * s
    angle = rng.uniform(0, 2 * math.pi)
    mask = np.zeros((s, s), np.uint8)
    poly = _polygon(cls, rng)
    if poly is not None:
        ca, sa = math.cos(angle), math.sin(angle)
        for p in poly:
            p = p * [size * aspect, size]
            p = p @ np.array([[ca, sa], [-sa, ca]]) + [cx, cy]
            cv2.fillPoly(mask, [np.round(p * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    elif cls == 0:  # circle / ellipse
        cv2.ellipse(mask, (int(cx), int(cy)), (int(size * aspect), int(size)), math.degrees(angle), 0, 360, 1, -1)
    elif cls == 5:  # ring
        cv2.ellipse(mask, (int(cx), int(cy)), (int(size * aspect), int(size)), math.degrees(angle), 0, 360, 1,
                    max(2, int(size * 0.3)))
    else:  # glyphs: letters, rotated
        letter = "A" if cls == 6 else "Z"
        scale = size / 11.0
        thick = max(2, int(size / 5))
        (tw, th), _ = cv2.getTextSize(letter, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        patch = np.zeros((th * 2 + 8, tw * 2 + 8), np.uint8)
        cv2.putText(patch, letter, (tw // 2 + 4, th + th // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, 1, thick)
        M = cv2.getRotationMatrix2D((patch.shape[1] / 2, patch.shape[0] / 2), math.degrees(angle) % 360 - 180, 1.0)
        M[:, 2] += [cx - patch.shape[1] / 2, cy - patch.shape[0] / 2]
        mask = cv2.warpAffine(patch, M, (s, s), flags=cv2.INTER_NEAREST)
    if mask.sum() < 12:
        return None
    return mask, colour


def _render(index: int, seed: int, nc: int, s: int) -> tuple[np.ndarray, list[list[float]]]:
    rng = np.random.default_rng([seed, index])
    img = _background(rng, s)
    owner = np.full((s, s), -1, np.int32)  # which object each pixel shows
    objects: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(1, 7))):
        cls = int(rng.integers(0, nc))
        base = rng.integers(0, 256, 3).astype(np.float32)
        # keep objects distinguishable from the background around them
        colour = tuple(int(v) for v in base)
        drawn = _draw_object(cls, rng, s, colour)
        if drawn is None:
            continue
        mask, colour = drawn
        m = mask.astype(bool)
        # reject placements that would hide too much of an earlier object
        ok = True
        for k, (_, prev) in enumerate(objects):
            vis = (owner == k)
            if vis.sum() and (vis & m).sum() > MAX_OCCLUDED * prev.sum():
                ok = False
                break
        if not ok:
            continue
        k = len(objects)
        objects.append((cls, m))
        owner[m] = k
        shade = rng.uniform(0.75, 1.15)
        layer = np.clip(np.array(colour, np.float32) * shade + rng.normal(0, 6, (s, s, 3)), 0, 255)
        img[m] = layer[m].astype(np.uint8)
        edge = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(bool)
        if rng.random() < 0.5:  # dark outline on half the objects
            img[edge & m] = (img[edge & m] * 0.4).astype(np.uint8)
    labels = []
    for cls, m in objects:
        ys, xs = np.nonzero(m)
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(s, x2), min(s, y2)
        if x2 - x1 < 3 or y2 - y1 < 3:
            continue
        labels.append([cls, (x1 + x2) / 2 / s, (y1 + y2) / 2 / s, (x2 - x1) / s, (y2 - y1) / s])
    # mild global blur / noise like a camera
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    return img, labels


def generate(out: str | Path, images: int = 1000, classes: int = 4, imgsz: int = 320, seed: int = 0,
             val_fraction: float = 0.2, progress: bool = False) -> Path:
    """Write the dataset under ``out``; returns the data yaml path."""
    if not 1 <= classes <= len(CLASS_NAMES):
        raise YoloptError(f"--classes {classes}: must be between 1 and {len(CLASS_NAMES)}")
    if images < 2:
        raise YoloptError(f"--images {images}: need at least 2 images (train and val)")
    if imgsz < 32:
        raise YoloptError(f"--imgsz {imgsz}: must be at least 32")
    out = Path(out)
    n_val = max(1, int(round(images * val_fraction)))
    n_train = images - n_val
    it = range(images)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="synth", unit="img")
    for i in it:
        split = "train" if i < n_train else "val"
        img, labels = _render(i, seed, classes, imgsz)
        ip = out / "images" / split / f"{i:06d}.jpg"
        lp = out / "labels" / split / f"{i:06d}.txt"
        ip.parent.mkdir(parents=True, exist_ok=True)
        lp.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        atomic_write(ip, lambda tmp, b=buf: Path(tmp).write_bytes(b.tobytes()))
        text = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
        atomic_write(lp, lambda tmp, t=text: Path(tmp).write_text(t))
    cfg = {"path": ".", "train": "images/train", "val": "images/val", "nc": classes, "names": CLASS_NAMES[:classes]}
    y = out / "data.yaml"
    atomic_write(y, lambda tmp: Path(tmp).write_text(
        f"# yolopt synthetic dataset: {images} images ({n_train} train / {n_val} val), {imgsz}px, seed {seed}\n"
        + yaml.safe_dump(cfg, sort_keys=False)))
    return y
