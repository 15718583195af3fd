"""User-facing errors.

Anything raised as ``YoloptError`` is a problem with the user's input (a file, an option); the
CLI prints its message as one line and exits non-zero, without a traceback.

Library code words its messages in library terms: the spec fields it names (``data``, ``calib``,
``max_map_drop``) go in ``fields``. The CLI appends the command-line flags that set those fields
(``--data``, ``--calib``, ...), so the same error reads right from Python and from the shell.
"""

from __future__ import annotations


class YoloptError(Exception):
    """A problem with user input, reported as one clear line.

    ``fields``: names of the spec fields / parameters the problem is about (argparse ``dest`` names);
    the CLI shows the matching flags after the message.
    """

    def __init__(self, message: str = "", *, fields: tuple[str, ...] | list[str] = ()):
        super().__init__(message)
        self.fields = tuple(fields)


class TransientError(YoloptError):
    """A failure whose cause lies outside the input: the disk, a killed worker process, a time-out. Whoever
    caches results (``optimize``) must try again next time instead of remembering it."""


def is_transient(e: BaseException) -> bool:
    """True when ``e`` or an exception it was raised from or while handling (``__cause__`` / ``__context__``, kept
    even under ``raise ... from None``) is a :class:`TransientError`, an ``OSError`` (full disk, permissions, I/O)
    or a time-out; a message that carries an ``[Errno N]`` counts too (an error relayed from a child process)."""
    import subprocess

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (TransientError, OSError, subprocess.TimeoutExpired, TimeoutError)):
            return True
        if "[Errno " in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


class CheckpointError(YoloptError):
    """A weights file that cannot be read or is not supported."""


class DatasetError(YoloptError):
    """A dataset yaml, image folder or label file that is wrong."""


class ExportError(YoloptError):
    """An export that cannot be done (format, options, missing tool) or failed verification."""


class RuntimeBackendError(YoloptError):
    """An artifact that cannot be loaded or run (unreadable file, wrong input, missing runtime)."""
