"""Calibration images for post-training quantization.

The images go through exactly the inference pre-processing (:func:`yolopt.data.preprocess.preprocess`,
square letterbox at the artifact's fixed size), so the ranges the calibrator sees are the ranges the
deployed model sees.

    >>> calib = CalibrationSet.from_data("coco128.yaml", imgsz=640)   # or .from_images("imgs/")
    >>> for x in calib.batches():   # (1, 3, 640, 640) float32 in [0, 1]
    ...     ...
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import YoloptError

MIN_SIDE = 8  # smaller images are not photographs of anything a detector is calibrated for
CALIB_IMAGES = 256  # the default calibration set: a fixed random subset of this many images
# ``yolopt optimize`` quantizes several variants inside one time budget, and calibration time grows with the
# image count: it calibrates on half the default (128: coco128's whole train split, the size behind the
# coco128 rows of docs/quantize.md).
OPTIMIZE_CALIB_IMAGES = CALIB_IMAGES // 2


class CalibrationError(YoloptError):
    """Calibration images that cannot be used (none, not images, unreadable, too small)."""


@dataclass
class CalibrationSet:
    """``paths``: the images, in the order they are used. ``imgsz``: the (h, w) network input."""

    paths: list[Path]
    imgsz: tuple[int, int]
    source: str = ""

    @classmethod
    def from_images(cls, images, imgsz, n: int | None = CALIB_IMAGES, seed: int = 0) -> "CalibrationSet":
        """Images from files, folders or glob patterns. A file that is not an image is an error (a
        calibration set silently missing files is worse than none); ``n`` picks a fixed random subset."""
        from ..data.images import IMAGE_SUFFIXES, list_images

        srcs = images if isinstance(images, (list, tuple)) else [images]
        for s in srcs:
            p = Path(str(s))
            if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES and p.suffix.lower() != ".txt":
                raise CalibrationError(f"{p}: not an image file, cannot calibrate on it "
                                       f"(supported: {', '.join(sorted(IMAGE_SUFFIXES))})")
        paths: list[Path] = []
        for s in srcs:
            p = Path(str(s))
            if p.is_file() and p.suffix.lower() == ".txt":
                from ..data.dataset import read_image_list

                paths += read_image_list(p)
            else:
                try:
                    paths += list_images(s)
                except YoloptError as e:
                    raise CalibrationError(str(e)) from None
        return cls._pick(paths, imgsz, n, seed, ", ".join(str(s) for s in srcs))

    @classmethod
    def from_data(cls, data, imgsz, n: int | None = CALIB_IMAGES, split: str = "train", seed: int = 0) -> "CalibrationSet":
        """Images of a dataset yaml's ``split`` (the train split by default: calibrate on training data,
        measure on val)."""
        from ..data.dataset import image_files, load_data_config

        cfg = load_data_config(data)
        try:
            paths = image_files(cfg, split)
        except YoloptError as e:
            raise CalibrationError(str(e)) from None
        return cls._pick(paths, imgsz, n, seed, f"{data} ({split})")

    @classmethod
    def _pick(cls, paths, imgsz, n, seed, source) -> "CalibrationSet":
        if isinstance(imgsz, int):
            imgsz = (imgsz, imgsz)
        if not paths:
            raise CalibrationError(f"{source}: no calibration images")
        if n is not None:
            if n < 1:
                raise CalibrationError(f"calibration needs at least 1 image (got {n})", fields=("calib",))
            if len(paths) > n:
                paths = sorted(random.Random(seed).sample(list(paths), n))
        return cls(list(paths), (int(imgsz[0]), int(imgsz[1])), source)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, path: Path) -> np.ndarray:
        from ..data.images import read_image  # cv2: imported on first use, so importing this module stays light

        im = read_image(path)
        if im is None:
            raise CalibrationError(f"{path}: cannot be decoded as an image")
        if min(im.shape[:2]) < MIN_SIDE:
            raise CalibrationError(f"{path}: {im.shape[1]}x{im.shape[0]} px is too small to calibrate on "
                                   f"(at least {MIN_SIDE} px a side)")
        return im

    def check(self) -> None:
        """Decode every image once, so a bad file fails before minutes of calibration."""
        for p in self.paths:
            self.read(p)

    def batches(self, limit: int | None = None) -> Iterator[np.ndarray]:
        """``(1, 3, h, w)`` float32 RGB in [0, 1], square-letterboxed like inference."""
        from ..data.preprocess import preprocess

        for p in self.paths[:limit]:
            x, _ = preprocess([self.read(p)], self.imgsz, mode="square")
            yield x.numpy()

    def arrays(self, limit: int | None = None) -> list[np.ndarray]:
        return list(self.batches(limit))
