"""YOLO-format datasets: the data yaml, image lists, label files and their checks.

A data yaml has ``path`` (relative to the yaml's folder when relative), ``train`` / ``val``
(a folder, a .txt list of images, or a list of either) and ``names`` (a list or an
``{id: name}`` dict). The label of ``.../images/x.jpg`` is ``.../labels/x.txt``, one row
``class cx cy w h`` per object, coordinates normalised to [0, 1].
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..errors import DatasetError
from .images import IMAGE_SUFFIXES, is_image

log = logging.getLogger("yolopt")

COORD_TOL = 1e-6


@dataclass
class DataConfig:
    yaml_path: Path
    root: Path
    names: list[str]
    splits: dict[str, list[Path]] = field(default_factory=dict)  # split -> sources

    @property
    def nc(self) -> int:
        return len(self.names)


def _names_from(raw, path: Path) -> list[str]:
    if isinstance(raw, dict):
        try:
            ids = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: `names` keys must be class ids (integers)") from None
        if ids != list(range(len(ids))):
            raise DatasetError(f"{path}: `names` ids must be 0..{len(ids) - 1} without gaps")
        return [str(raw[k] if k in raw else raw[str(k)]) for k in ids]
    if isinstance(raw, list) and raw:
        return [str(n) for n in raw]
    raise DatasetError(f"{path}: `names` must be a non-empty list or an {{id: name}} mapping")


def load_data_config(path: str | Path) -> DataConfig:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: data yaml not found")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a YAML data file (binary content; give the dataset's .yaml)") from None
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the data yaml ({e.strerror})") from None
    if not isinstance(cfg, dict):
        raise DatasetError(f"{path}: not a YAML data file (expected a mapping with path / train / val / names)")
    if "names" not in cfg:
        raise DatasetError(f"{path}: data yaml has no `names` (class names)")
    names = _names_from(cfg["names"], path)
    if "nc" in cfg and int(cfg["nc"]) != len(names):
        raise DatasetError(f"{path}: nc is {cfg['nc']} but `names` lists {len(names)} classes")
    root = Path(cfg.get("path") or ".")
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    splits = {}
    for split in ("train", "val", "test"):
        src = cfg.get(split)
        if src:
            srcs = src if isinstance(src, list) else [src]
            splits[split] = [Path(s) if Path(s).is_absolute() else root / s for s in srcs]
    return DataConfig(path, root, names, splits)


def image_files(cfg: DataConfig, split: str) -> list[Path]:
    """Image paths of a split, from folders and/or .txt lists."""
    if split not in cfg.splits:
        raise DatasetError(f"{cfg.yaml_path}: no `{split}` split in the data yaml")
    files: list[Path] = []
    for src in cfg.splits[split]:
        if src.is_dir():
            found = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DatasetError(f"{src}: image folder is empty")
            files.extend(found)
        elif src.is_file() and src.suffix == ".txt":
            files.extend(read_image_list(src))
        else:
            raise DatasetError(f"{src}: `{split}` images not found (expected a folder or a .txt list)")
    if not files:
        raise DatasetError(f"{cfg.yaml_path}: `{split}` split has no images")
    return files


def is_image_source(spec: str | Path) -> bool:
    """True for a folder, an image file, a glob or a .txt list of images (images without labels),
    False for a data yaml."""
    p = Path(spec)
    return p.is_dir() or is_image(p) or p.suffix.lower() == ".txt" or any(ch in str(spec) for ch in "*?[")


def read_image_list(path: Path) -> list[Path]:
    """Image paths from a .txt list, one per line; relative paths are relative to the list's folder."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the image list ({e.strerror})") from None
    out = []
    for line in lines:
        line = line.strip()
        if line:
            p = Path(line)
            out.append(p if p.is_absolute() else (path.parent / p).resolve())
    return out


def label_path(image: Path) -> Path:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (the last ``/images/`` is replaced)."""
    s = str(image)
    sep = os.sep
    key = f"{sep}images{sep}"
    i = s.rfind(key)
    if i >= 0:
        s = s[:i] + f"{sep}labels{sep}" + s[i + len(key) :]
    return Path(s).with_suffix(".txt")


_REPORTED: set = set()  # (yaml, split, counts) already warned about in this process (evaluate runs in loops)


def check_label_files(cfg: DataConfig, split: str, files: list[Path], strict: bool = False) -> tuple[int, int]:
    """Images of a split without a label file (they count as background) and label files without an image
    (ignored), as one summary line like upstream's, or a ``DatasetError`` with ``strict``.

    Returns ``(images without a label file, label files without an image)``. An empty label file is an
    explicit background and is not reported.
    """
    labels = {label_path(f) for f in files}
    missing = [f for f in files if not label_path(f).is_file()]
    # a .txt list names a subset of a folder (a selection split, a sample): the rest are not orphans
    listed = any(src.suffix == ".txt" for src in cfg.splits.get(split, []))
    folders = set() if listed else {p.parent for p in labels}
    orphans = sorted(t for d in folders if d.is_dir() for t in d.glob("*.txt") if t not in labels)
    if not missing and not orphans:
        return 0, 0
    parts = [f"{len(files)} images"]
    if missing:
        parts.append(f"{len(missing)} without a label file, counted as background (e.g. {missing[0].name})")
    if orphans:
        parts.append(f"{len(orphans)} label files without an image, ignored (e.g. {orphans[0]})")
    msg = f"{cfg.yaml_path} `{split}`: " + ", ".join(parts)
    if strict:
        raise DatasetError(msg + "; refused in strict mode", fields=("strict",))
    key = (str(cfg.yaml_path), split, len(missing), len(orphans))
    if key not in _REPORTED:
        _REPORTED.add(key)
        log.warning(msg)
    return len(missing), len(orphans)


def read_labels(path: Path, nc: int) -> np.ndarray:
    """(n, 5) float32 array [class, cx, cy, w, h]; validated, duplicates removed.

    Polygon rows (class + x y pairs) are converted to their bounding box.
    Raises DatasetError naming the file and line for anything malformed.
    """
    if not path.is_file():
        return np.zeros((0, 5), np.float32)
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            vals = [float(v) for v in parts]
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: non-numeric value in label row {line.strip()!r}") from None
        n = len(vals)
        if n != 5 and not (n >= 7 and n % 2 == 1):
            raise DatasetError(f"{path}:{lineno}: expected 5 columns (class cx cy w h), found {n}")
        cls = vals[0]
        if cls != int(cls) or cls < 0:
            raise DatasetError(f"{path}:{lineno}: class id {parts[0]} is not a non-negative integer")
        if cls >= nc:
            raise DatasetError(f"{path}:{lineno}: class id {int(cls)} out of range for {nc} classes (0..{nc - 1})")
        coords = np.array(vals[1:], dtype=np.float64)
        if (coords < -COORD_TOL).any() or (coords > 1 + COORD_TOL).any():
            raise DatasetError(f"{path}:{lineno}: coordinates outside [0, 1] (labels must be normalised)")
        if n > 5:  # polygon -> box
            xy = coords.reshape(-1, 2)
            x1, y1 = xy.min(0)
            x2, y2 = xy.max(0)
            coords = np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        rows.append([cls, *coords.tolist()])
    if not rows:
        return np.zeros((0, 5), np.float32)
    arr = np.array(rows, dtype=np.float32)
    _, idx = np.unique(arr, axis=0, return_index=True)
    return arr[np.sort(idx)]


def image_size(path: Path) -> tuple[int, int] | None:
    """(h, w) after EXIF orientation, without decoding pixels; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - any decoder failure means a corrupt image
        return None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return h, w
