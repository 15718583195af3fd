"""A selection split carved from a dataset's ``train`` images: deterministic, stratified by class.

Compression recipes choose checkpoints, stages and widenings on it, so that ``val`` is scored once, at
the end, on images no choice has seen. The split depends only on the file names, their labels, the
fraction and the seed (not on the machine or the file order):

    >>> sp = carve_selection("hardhat.yaml", "runs/compress/x/split", fraction=0.1)
    >>> sp.train_yaml   # train: the remaining 90%, val: the selection images
    >>> sp.select_yaml  # val: the selection images (for evaluate)

Stratification: an image's stratum is the rarest class it contains (images without labels form their own
stratum); each stratum gives ``round(fraction * n)`` images (at least one when it has two or more), the ones
whose ``sha256(seed, file name)`` is smallest.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import DatasetError
from ..fileio import atomic_write
from .dataset import image_files, label_path, load_data_config, read_labels


@dataclass(frozen=True)
class SelectionSplit:
    """The files of a carved split. ``train_yaml``: train on ``train.txt``, validate on ``select.txt``;
    ``select_yaml``: the selection images as its ``val`` split; ``val_yaml``: the original dataset (its
    ``val`` is the held-back test); counts per stratum in ``strata`` (class name or ``background``)."""

    folder: Path
    train_yaml: Path
    select_yaml: Path
    val_yaml: Path
    n_train: int
    n_select: int
    fraction: float
    seed: int
    strata: dict

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "train": self.n_train, "select": self.n_select,
                "fraction": self.fraction, "seed": self.seed, "strata": dict(self.strata),
                "train_list": str(self.folder / "train.txt"), "select_list": str(self.folder / "select.txt")}


def _key(seed: int, path: Path) -> str:
    return hashlib.sha256(f"{seed}:{path.name}".encode()).hexdigest()


def split_files(files: list[Path], classes: list[set[int]], fraction: float, seed: int = 0
                ) -> tuple[list[Path], list[Path], Counter]:
    """``(train, select, per-stratum selection counts)`` for ``files`` whose labels hold ``classes``
    (a set of class ids per file). Both lists keep the input order."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"selection fraction {fraction}: must be between 0 and 1", fields=("select_fraction",))
    freq = Counter(c for cs in classes for c in cs)
    strata: dict[int, list[int]] = {}
    for i, cs in enumerate(classes):
        s = min(cs, key=lambda c: (freq[c], c)) if cs else -1  # the rarest class in the image
        strata.setdefault(s, []).append(i)
    chosen, counts = set(), Counter()
    for s, idx in sorted(strata.items()):
        k = round(fraction * len(idx))
        if k == 0 and len(idx) >= 2:
            k = 1
        k = min(k, len(idx) - 1) if len(idx) > 1 else 0
        pick = sorted(idx, key=lambda i: _key(seed, files[i]))[:k]
        chosen.update(pick)
        counts[s] = len(pick)
    train = [f for i, f in enumerate(files) if i not in chosen]
    select = [f for i, f in enumerate(files) if i in chosen]
    return train, select, counts


def carve_selection(data_yaml: str | Path, folder: str | Path, fraction: float = 0.1, seed: int = 0
                    ) -> SelectionSplit:
    """Carve ``fraction`` of ``data_yaml``'s train images into a selection split; write the lists and the two
    yamls into ``folder`` (atomically; an existing split with the same inputs is rewritten identically)."""
    cfg = load_data_config(data_yaml)
    if "train" not in cfg.splits:
        raise DatasetError(f"{cfg.yaml_path}: no `train` split to carve a selection split from", fields=("data",))
    files = sorted(image_files(cfg, "train"), key=lambda p: str(p))
    classes = []
    for f in files:
        lp = label_path(f)
        labels = read_labels(lp, cfg.nc) if lp.is_file() else None
        classes.append(set() if labels is None else {int(c) for c in labels[:, 0]})
    train, select, counts = split_files(files, classes, fraction, seed)
    if not select or not train:
        raise DatasetError(f"{cfg.yaml_path}: {len(files)} train images are too few to carve a {fraction:.0%} "
                           f"selection split", fields=("data", "select_fraction"))
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    for name, lst in (("train.txt", train), ("select.txt", select)):
        text = "".join(f"{p}\n" for p in lst)
        atomic_write(folder / name, lambda tmp, t=text: Path(tmp).write_text(t))
    names = {i: n for i, n in enumerate(cfg.names)}
    docs = {"train.yaml": {"path": str(folder), "train": "train.txt", "val": "select.txt", "names": names},
            "select.yaml": {"path": str(folder), "val": "select.txt", "names": names}}
    for name, doc in docs.items():
        text = (f"# selection split of {cfg.yaml_path} ({fraction:g} of train, seed {seed}); written by yolopt\n"
                + yaml.safe_dump(doc, sort_keys=False))
        atomic_write(folder / name, lambda tmp, t=text: Path(tmp).write_text(t))
    strata = {(cfg.names[s] if s >= 0 else "background"): n for s, n in sorted(counts.items())}
    return SelectionSplit(folder, folder / "train.yaml", folder / "select.yaml", Path(cfg.yaml_path).resolve(),
                          len(train), len(select), fraction, seed, strata)
