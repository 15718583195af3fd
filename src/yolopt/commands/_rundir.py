"""Run folders (``--project runs/predict --name exp``): a new folder per run, never an earlier run's."""

from __future__ import annotations

import itertools
from pathlib import Path

from ..errors import YoloptError
from ._options import check_output


def add_run_dir_args(p, project: str) -> None:
    p.add_argument("--project", metavar="DIR",
                   help=f"parent folder of the run folders (default {project})")
    p.add_argument("--name", metavar="NAME",
                   help="run folder name (default exp): PROJECT/NAME, or NAME2, NAME3... when it exists")
    p.add_argument("--exist-ok", action="store_true", help="reuse PROJECT/NAME when it exists instead of a new one")


def new_run_dir(project: str | Path, name: str, exist_ok: bool = False) -> Path:
    """Create and return ``project/name``; when it exists, ``name2``, ``name3``... (the first free one),
    or the existing folder itself with ``exist_ok``. Creating it claims the name, so two runs started at
    the same time get different folders."""
    if not name or "/" in name or name in (".", ".."):
        raise YoloptError(f"--name {name!r}: give a plain folder name (put parent folders in --project)")
    project = Path(project)
    check_output(project, "--project", folder=True)
    project.mkdir(parents=True, exist_ok=True)
    if exist_ok:
        target = project / name
        if target.exists() and not target.is_dir():
            raise YoloptError(f"--name {target}: exists and is not a folder")
        target.mkdir(exist_ok=True)
        return target
    for k in itertools.count(1):
        target = project / (name if k == 1 else f"{name}{k}")
        try:
            target.mkdir()
            return target
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def remove_if_empty(folder: Path | None) -> None:
    """Undo :func:`new_run_dir` for a run that failed before writing anything."""
    if folder is None:
        return
    try:
        folder.rmdir()
    except OSError:
        pass
