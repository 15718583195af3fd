"""User-facing errors.

Anything raised as ``YoloptError`` is a problem with the user's input (a file, a flag); the
CLI prints its message as one line and exits non-zero, without a traceback.
"""


class YoloptError(Exception):
    """A problem with user input, reported as one clear line."""


class CheckpointError(YoloptError):
    """A weights file that cannot be read or is not supported."""


class DatasetError(YoloptError):
    """A dataset yaml, image folder or label file that is wrong."""


class ExportError(YoloptError):
    """An export that cannot be done (format, options, missing tool) or failed verification."""


class RuntimeBackendError(YoloptError):
    """An artifact that cannot be loaded or run (unreadable file, wrong input, missing runtime)."""
