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
