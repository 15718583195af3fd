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


class CheckpointError(YoloptError):
    """A weights file that cannot be read or is not supported."""


class DatasetError(YoloptError):
    """A dataset yaml, image folder or label file that is wrong."""


class ExportError(YoloptError):
    """An export that cannot be done (format, options, missing tool) or failed verification."""


class RuntimeBackendError(YoloptError):
    """An artifact that cannot be loaded or run (unreadable file, wrong input, missing runtime)."""
