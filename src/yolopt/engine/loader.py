"""Training data: label checks (cached), the augmenting dataset, a resumable sampler, collate.

A sample is addressed by ``(index, epoch, mosaic)``; its random stream is seeded from
``(seed, epoch, index)``, so what a batch contains does not depend on the number of
worker processes or on whether the run was resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.dataset import (
    check_label_files,
    image_files,
    image_size,
    label_path,
    load_data_config,
    read_labels,
)
from ..data.images import read_image
from ..data.letterbox import letterbox, resize_long_side
from ..errors import DatasetError
from ..fileio import atomic_write
from ..machine import usable_cpus
from .augment import augment_hsv, mosaic4, random_affine, xywhn_to_xyxy, xyxy_to_xywhn

log = logging.getLogger("yolopt")
CACHE_VERSION = 2  # 2: images decoded in full by the pre-scan


@dataclass
class SplitIndex:
    files: list[Path]
    labels: list[np.ndarray]  # (n, 5) class cx cy w h
    shapes: np.ndarray  # (N, 2) h, w
    labeled: np.ndarray | None = None  # (N,) bool; None = every image is labelled

    def is_labeled(self, i: int) -> bool:
        return True if self.labeled is None else bool(self.labeled[i])

    def __add__(self, other: "SplitIndex") -> "SplitIndex":
        def flags(ix):
            return np.ones(len(ix.files), bool) if ix.labeled is None else ix.labeled

        return SplitIndex(self.files + other.files, self.labels + other.labels,
                          np.concatenate([self.shapes, other.shapes]).reshape(-1, 2),
                          np.concatenate([flags(self), flags(other)]))


def _fingerprint(files: list[Path], nc: int) -> str:
    h = hashlib.sha256(f"{CACHE_VERSION}:{nc}".encode())
    for f in files:
        lp = label_path(f)
        for p in (f, lp):
            try:
                st = p.stat()
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                h.update(f"{p}:-;".encode())
    return h.hexdigest()


def _readable(files: list[Path]) -> tuple[list[Path], list[tuple[int, int]]]:
    """The files that decode as images and their (h, w); the others are skipped with a warning, as ``evaluate``
    skips them. Every image is decoded in full once (the result is cached with the labels): a truncated JPEG
    has a valid header, and would otherwise stop training when a batch reaches it."""
    keep, shapes = [], []
    for f in files:
        shp = image_size(f)
        if shp is not None and read_image(f) is None:
            shp = None
        if shp is None:
            log.warning("%s: corrupt or unreadable image, skipped", f)
            continue
        keep.append(f)
        shapes.append(shp)
    return keep, shapes


def index_split(data_yaml: str | Path, split: str, nc: int | None = None, strict: bool = False
                ) -> tuple[SplitIndex, list[str]]:
    """Check every label file of a split once; results are cached next to the labels.

    The cache (``<labels folder>.yolopt.cache``, JSON) is reused while no image or label file
    changed (size + mtime fingerprint). Returns (index, class names).
    """
    cfg = load_data_config(data_yaml)
    if nc is not None and nc != cfg.nc:
        raise DatasetError(f"{cfg.yaml_path}: dataset has {cfg.nc} classes but the model has {nc}")
    files = image_files(cfg, split)
    check_label_files(cfg, split, files, strict)
    fp = _fingerprint(files, cfg.nc)
    cache = label_path(files[0]).parent.with_suffix(".yolopt.cache")
    try:
        cached = json.loads(cache.read_text())
        if cached.get("fingerprint") == fp:
            idx = SplitIndex([Path(p) for p in cached["files"]],
                             [np.array(lab, np.float32).reshape(-1, 5) for lab in cached["labels"]],
                             np.array(cached["shapes"], dtype=np.int64).reshape(-1, 2))
            return idx, cfg.names
    except (OSError, ValueError, KeyError):
        pass
    keep, shapes = _readable(files)
    labels = [read_labels(label_path(f), cfg.nc) for f in keep]  # raises DatasetError naming file:line
    if not keep:
        raise DatasetError(f"{cfg.yaml_path}: no readable images in the `{split}` split")
    if not any(len(lab) for lab in labels):
        log.warning("%s: no labels found in the `%s` split; training will only learn background", cfg.yaml_path, split)
    idx = SplitIndex(keep, labels, np.array(shapes, dtype=np.int64).reshape(-1, 2))
    payload = {"version": CACHE_VERSION, "fingerprint": fp, "files": [str(p) for p in keep],
               "labels": [lab.round(6).tolist() for lab in labels], "shapes": idx.shapes.tolist()}
    try:
        atomic_write(cache, lambda tmp: Path(tmp).write_text(json.dumps(payload)))
    except OSError:
        log.debug("label cache not written (read-only dataset folder): %s", cache)
    return idx, cfg.names


def index_unlabeled(sources) -> SplitIndex:
    """Images without labels (folders, files, glob patterns or .txt lists) for distillation: the
    teacher's outputs are their targets. Unreadable images are skipped with a warning."""
    from ..data.dataset import read_image_list
    from ..data.images import list_images
    from ..errors import YoloptError

    files: list[Path] = []
    for src in sources:
        try:
            txt = Path(src).suffix.lower() == ".txt" and Path(src).is_file()
            files.extend(read_image_list(Path(src)) if txt else list_images(src))
        except YoloptError as e:
            raise DatasetError(str(e)) from None
    keep, shapes = _readable(files)
    if not keep:
        raise DatasetError(f"{', '.join(map(str, sources))}: no readable images")
    return SplitIndex(keep, [np.zeros((0, 5), np.float32) for _ in keep], np.array(shapes, np.int64).reshape(-1, 2),
                      np.zeros(len(keep), bool))


class TrainDataset(Dataset):
    """Augmented training samples: ``(uint8 CHW RGB tensor, (n, 6) [0, cls, cx, cy, w, h], path, labelled)``.

    ``labelled`` is False for images from :func:`index_unlabeled` (their label rows are empty and mean
    "unknown", not "background"); a mosaic only combines images of the same kind.
    """

    def __init__(self, index: SplitIndex, imgsz: int, hyp: dict, seed: int = 0, augment: bool = True):
        self.index, self.imgsz, self.hyp, self.seed, self.augment = index, imgsz, hyp, seed, augment
        lab = np.ones(len(index.files), bool) if index.labeled is None else index.labeled
        self._pools = {True: np.flatnonzero(lab), False: np.flatnonzero(~lab)}

    def __len__(self) -> int:
        return len(self.index.files)

    def _load(self, i: int) -> np.ndarray:
        path = self.index.files[i]
        im = read_image(path)
        if im is None:
            raise DatasetError(f"{path}: image became unreadable during training")
        return resize_long_side(im, self.imgsz, augment=self.augment)

    def __getitem__(self, key):
        i, epoch, mosaic = key if isinstance(key, tuple) else (key, 0, False)
        rng = np.random.default_rng([self.seed, epoch, i, 0x5EED])
        hyp, s = self.hyp, self.imgsz
        if mosaic and self.augment and rng.random() < hyp.get("mosaic", 0.0):
            pool = self._pools[self.index.is_labeled(i)]
            ids = [i, *pool[rng.integers(0, len(pool), 3)].tolist()]
            img, boxes, cls = mosaic4([self._load(k) for k in ids], [self.index.labels[k] for k in ids], s, rng, hyp)
        else:
            img = self._load(i)
            h, w = img.shape[:2]
            img, (r, _), (padw, padh) = letterbox(img, s, auto=False, scaleup=self.augment)
            lab = self.index.labels[i]
            boxes = xywhn_to_xyxy(lab[:, 1:5], w, h, padw, padh) if len(lab) else np.zeros((0, 4), np.float32)
            cls = lab[:, 0].copy()
            if self.augment:
                img, boxes, cls = random_affine(img, boxes, cls, rng, hyp)
        if self.augment:
            augment_hsv(img, rng, hyp.get("hsv_h", 0), hyp.get("hsv_s", 0), hyp.get("hsv_v", 0))
        h, w = img.shape[:2]
        xywh = xyxy_to_xywhn(boxes, w, h) if len(boxes) else np.zeros((0, 4), np.float32)
        if self.augment:
            if rng.random() < hyp.get("flipud", 0.0):
                img = np.flipud(img)
                xywh[:, 1] = 1 - xywh[:, 1]
            if rng.random() < hyp.get("fliplr", 0.0):
                img = np.fliplr(img)
                xywh[:, 0] = 1 - xywh[:, 0]
        out = np.zeros((len(xywh), 6), np.float32)
        out[:, 1] = cls
        out[:, 2:] = xywh
        chw = np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))
        return torch.from_numpy(chw), torch.from_numpy(out), str(self.index.files[i]), self.index.is_labeled(i)


def collate(batch):
    """-> ``(imgs (B, 3, H, W) uint8, targets (n, 6) [image, cls, cx, cy, w, h], paths, labelled (B,) bool)``."""
    imgs, labels, paths, labeled = zip(*batch)
    for k, lab in enumerate(labels):
        lab[:, 0] = k
    return torch.stack(imgs, 0), torch.cat(labels, 0), list(paths), torch.tensor(labeled, dtype=torch.bool)


class EpochSampler(Sampler):
    """Shuffled order that depends only on (seed, epoch); split across DDP ranks."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch, self.mosaic = 0, True
        self.per_rank = -(-n // world)

    def set_epoch(self, epoch: int, mosaic: bool) -> None:
        self.epoch, self.mosaic = epoch, mosaic

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        total = self.per_rank * self.world
        if total > self.n:  # pad so every rank gets the same number of samples
            order = np.concatenate([order, order[: total - self.n]])
        for i in order[self.rank : total : self.world]:
            yield int(i), self.epoch, self.mosaic


def _worker_init(_):
    cv2.setNumThreads(0)


def _worker_context():
    """Start loader workers from a clean server process, not by fork()ing this one.

    fork() copies a process whose other threads (OpenVINO / ONNX Runtime / OpenMP pools, if
    any were started) do not exist in the child, so a lock one of them held stays locked in
    the worker; forkserver avoids that. Workers are persistent, so the start-up (importing
    torch in each worker) is paid once per run, not once per epoch.
    """
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def make_loader(dataset: TrainDataset, batch: int, workers: int, sampler: EpochSampler, pin: bool = False) -> DataLoader:
    workers = min(workers, usable_cpus(), batch)
    # Its own generator: a DataLoader draws its workers' base seed from this generator each time an
    # iterator is made (once per run with persistent workers, so a resumed run would draw it at a
    # different point); from the global torch generator, that draw would make the RNG state a
    # resumed run saves differ from an uninterrupted run's. Samples are seeded by (seed, epoch, index).
    gen = torch.Generator().manual_seed(int(dataset.seed))
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=pin, worker_init_fn=_worker_init, drop_last=False, generator=gen,
                      persistent_workers=workers > 0, multiprocessing_context=_worker_context() if workers else None)
