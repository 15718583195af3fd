"""Option types and checks shared by every command: the same rules everywhere, one line on failure.

argparse calls the ``*_arg`` types while parsing; a bad value becomes
``yolopt CMD: error: argument --imgsz: must be >= 32 ... (see yolopt CMD --help)`` and exit status 2.
:func:`check_output` runs before any work, so a bad ``--json`` / ``--out`` path never wastes a run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import YoloptError

IMGSZ_MIN, IMGSZ_MAX = 32, 4096  # 4096^2 x 3 floats = 200 MB per image: past that it is a typo


def _number(text: str, cast=float):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if cast is int else 'a number'}") from None


def _int(text: str) -> int:
    return _number(text, int)


def imgsz_arg(text: str) -> int:
    """An image size in pixels: an integer in [32, 4096]."""
    v = _int(text)
    if not IMGSZ_MIN <= v <= IMGSZ_MAX:
        raise argparse.ArgumentTypeError(f"{v}: image size must be between {IMGSZ_MIN} and {IMGSZ_MAX} pixels")
    return v


def _float(text: str) -> float:
    return _number(text, float)


def fraction_arg(text: str) -> float:
    """A threshold in [0, 1] (confidence, IoU)."""
    v = _float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{v:g}: must be between 0 and 1")
    return v


def open_fraction_arg(text: str) -> float:
    """A fraction strictly inside (0, 1) (a prune ratio, a FLOPs target)."""
    v = _float(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{v:g}: must be between 0 and 1 (exclusive)")
    return v


def positive_float_arg(text: str) -> float:
    """A number > 0 (a latency target in ms)."""
    v = _float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{v:g}: must be > 0")
    return v


def positive_int_arg(text: str) -> int:
    """An integer >= 1 (batch, max-det, workers, streams, iterations)."""
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v}: must be at least 1")
    return v


def nonneg_int_arg(text: str) -> int:
    """An integer >= 0 (warm-up calls, frozen layers)."""
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v}: must be 0 or more")
    return v


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report bad options as one line (no usage block) with exit status 2."""
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")
    return parser


def check_output(path: str | Path | None, option: str, folder: bool = False) -> Path | None:
    """Fail now, before any work, if ``path`` (a file, or a ``folder``) cannot be written.

    Nothing is created: the nearest existing parent must be a writable folder, and no part of the
    path may be an existing file standing where a folder is needed.
    """
    if path in (None, "", "-"):
        return None
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise YoloptError(f"{option} {p}: exists and is not a folder")
    if not folder and p.is_dir():
        raise YoloptError(f"{option} {p}: is a folder, expected a file path")
    parent = p if folder else p.parent
    probe = parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise YoloptError(f"{option} {p}: {probe} is a file, so nothing can be written below it")
    if not os.access(probe, os.W_OK | os.X_OK) or _pseudo_fs(probe):
        raise YoloptError(f"{option} {p}: {probe} is not writable")
    if not folder and p.exists() and not os.access(p, os.W_OK):
        raise YoloptError(f"{option} {p}: the file exists and is not writable")
    return p


def _pseudo_fs(p: Path) -> bool:
    """/proc and /sys accept access() checks as root but refuse new files."""
    try:
        parts = p.resolve().parts
    except OSError:
        return False
    return len(parts) > 1 and parts[1] in ("proc", "sys")
