"""Finding and reading images."""

from __future__ import annotations

import glob
from pathlib import Path

import cv2
import numpy as np

from ..errors import YoloptError

IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm"}


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(sources: str | Path | list) -> list[Path]:
    """Expand files, folders (recursively sorted) and glob patterns into image paths."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    out: list[Path] = []
    for src in sources:
        s = str(src)
        if any(ch in s for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(s, recursive=True))
            if not matches:
                raise YoloptError(f"{s}: no files match this pattern")
            out.extend(p for p in matches if p.is_file() and is_image(p))
            continue
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and is_image(q))
            if not found:
                raise YoloptError(f"{p}: folder contains no images")
            out.extend(found)
        elif p.is_file():
            if not is_image(p):
                raise YoloptError(f"{p}: not an image file (supported: {', '.join(sorted(IMAGE_SUFFIXES))})")
            out.append(p)
        else:
            raise YoloptError(f"{p}: no such file or folder")
    return out


def read_image(path: str | Path) -> np.ndarray | None:
    """BGR uint8 HWC array, or None when the file cannot be decoded."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    im = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if im is None or im.size == 0:
        return None
    return im


def sample_images(shared: str | Path | None = None) -> list[Path]:
    """Real images with objects in them, for checks that need detections (export verification,
    the profiler's pipeline stages): the shared sample images (``shared/data/images``), else the
    first four coco128 images; ``[]`` when no shared assets are found.

    Looked for in ``shared``, ``$YOLOPT_SHARED``, then a ``shared`` folder next to the project or the
    current directory.
    """
    import os

    roots = [Path(shared)] if shared else []
    roots += [Path(os.environ["YOLOPT_SHARED"])] if os.environ.get("YOLOPT_SHARED") else []
    here = Path(__file__).resolve()
    roots += [p / "shared" for p in here.parents[:5]] + [Path.cwd() / "shared", Path.cwd().parent / "shared"]
    for root in roots:
        folder = root / "data" / "images"
        if folder.is_dir():
            imgs = sorted(q for q in folder.rglob("*") if q.is_file() and is_image(q))
            if imgs:
                return imgs
        coco = root / "data" / "coco128" / "images" / "train2017"
        if coco.is_dir():
            imgs = sorted(q for q in coco.rglob("*") if q.is_file() and is_image(q))[:4]
            if imgs:
                return imgs
    return []
