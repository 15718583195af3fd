"""Writing files safely: every output yolopt produces goes through :func:`atomic_write`."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("yolopt")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | Path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then rename the temp file over ``path`` (same folder).

    A crash or kill at any moment leaves either the old file or the new one, never a mix. The
    result gets the mode a plain ``open()`` would give it (``mkstemp`` makes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _plain(o):
    """numpy scalars and arrays -> Python numbers and lists (integers stay integers)."""
    if hasattr(o, "tolist"):
        return o.tolist()
    return float(o)


def write_json(path: str | Path, payload, quiet: bool = False) -> Path:
    """``payload`` as indented JSON at ``path``, atomically (numpy values become plain numbers)."""
    text = json.dumps(payload, indent=1, default=_plain)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
    if not quiet:
        log.info("wrote %s", path)
    return Path(path)


class FolderLock:
    """Holds ``FOLDER/.yolopt.lock`` exclusively (``fcntl.flock``) while one run writes into the folder.

    A second run into the same folder is refused at once, in one line naming the process that holds it. The
    kernel drops the lock when its holder exits, however it exits (``kill -9`` included), so a stale lock file
    never blocks a resume. ``what`` names the run in messages (``optimize``, ``train`` ...).
    """

    NAME = ".yolopt.lock"

    def __init__(self, folder: str | Path, what: str = "run"):
        self.folder, self.what, self._fd = Path(folder), what, None

    def __enter__(self) -> "FolderLock":
        import fcntl
        import sys

        from .errors import YoloptError

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise YoloptError(f"{self.folder}: another {self.what} is writing into this folder ({holder}); wait for "
                              f"it to finish or use another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv[:3])[:200]}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (removing it would race a waiting run)
            self._fd = None
