"""High-level prediction: images in, detections out (and annotated images / JSON)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from .data.images import list_images, read_image
from .data.preprocess import preprocess
from .fileio import atomic_write
from .ops.postprocess import postprocess

log = logging.getLogger("yolopt")


@dataclass
class Detections:
    """Detections of one image, boxes in original-image pixels."""

    image: str
    width: int
    height: int
    xyxy: np.ndarray  # (n, 4)
    conf: np.ndarray  # (n,)
    cls: np.ndarray  # (n,) int
    names: list[str] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.conf)

    def to_dict(self) -> dict:
        return {
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "detections": [
                {
                    "xyxy": [round(float(v), 2) for v in box],
                    "conf": round(float(c), 5),
                    "class": int(k),
                    "name": self.names[int(k)] if int(k) < len(self.names) else str(int(k)),
                }
                for box, c, k in zip(self.xyxy, self.conf, self.cls)
            ],
        }


def _palette(k: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(k * 7919 + 17)
    return tuple(int(v) for v in rng.integers(40, 255, 3))


def draw(im: np.ndarray, det: Detections) -> np.ndarray:
    """Annotated copy of a BGR image."""
    out = im.copy()
    lw = max(round(sum(im.shape[:2]) / 2 * 0.003), 2)
    for (x1, y1, x2, y2), c, k in zip(det.xyxy.astype(int), det.conf, det.cls):
        color = _palette(int(k))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
        label = f"{det.names[int(k)] if int(k) < len(det.names) else int(k)} {c:.2f}"
        fs = lw / 3
        (tw, th), _ = cv2.getTextSize(label, 0, fs, max(lw - 1, 1))
        y0 = y1 - th - 3 if y1 - th - 3 >= 0 else y1 + th + 3
        cv2.rectangle(out, (x1, y0), (x1 + tw, y1), color, -1, cv2.LINE_AA)
        cv2.putText(out, label, (x1, y1 - 2 if y0 < y1 else y0 - 2), 0, fs, (255, 255, 255), max(lw - 1, 1), cv2.LINE_AA)
    return out


def predict(
    model,
    source: str | Path | Iterable,
    imgsz: int | tuple[int, int] = 640,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    agnostic: bool = False,
    classes: list[int] | None = None,
) -> list[Detections]:
    """Detect objects in image files (paths, folders or globs).

    ``model``: a model file, an in-memory ``DetectionModel`` or a :mod:`yolopt.runtime` backend.
    Unreadable images are skipped with a warning. Each image is letterboxed to an ``imgsz``
    square (pad 114), exactly like upstream YOLOv5's detect.py at a fixed input size.
    """
    from .runtime import open as open_backend

    backend = open_backend(model)
    names = list(getattr(backend, "names", []))
    results = []
    for path in list_images(source if not isinstance(source, Path) else str(source)):
        im = read_image(path)
        if im is None:
            log.warning("%s: corrupt or unreadable image, skipped", path)
            continue
        x, metas = preprocess([im], imgsz, mode="square")
        det = postprocess(backend(x), metas, conf=conf, iou=iou, max_det=max_det, classes=classes, agnostic=agnostic,
                          end2end=backend.end2end)[0]
        results.append(
            Detections(str(path), im.shape[1], im.shape[0], det[:, :4].numpy(), det[:, 4].numpy(),
                       det[:, 5].numpy().astype(int), names)
        )
    return results


def write_outputs(results: list[Detections], out_dir: str | Path | None, json_path: str | Path | None) -> None:
    """Annotated images into ``out_dir`` and/or the JSON list into ``json_path`` (atomic writes)."""
    if out_dir:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for r in results:
            im = read_image(r.image)
            target = out_dir / Path(r.image).name
            if Path(r.image).resolve() == target.resolve():
                raise ValueError(f"{target}: --out would overwrite the input image")
            ext = target.suffix or ".jpg"
            ok, buf = cv2.imencode(ext, draw(im, r))
            if ok:
                atomic_write(target, lambda tmp, b=buf: Path(tmp).write_bytes(b.tobytes()))
    if json_path:
        payload = json.dumps([r.to_dict() for r in results], indent=1)
        atomic_write(json_path, lambda tmp: Path(tmp).write_text(payload))
