"""The ``yolopt`` command. Each sub-command lives in ``yolopt.commands.<name>``.

Errors in user input (``YoloptError``) print one line on stderr and exit with status 1;
warnings print as ``yolopt: warning: ...``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from . import __version__
from .commands._options import one_line_errors
from .errors import YoloptError

# Sub-commands, in the order `yolopt --help` lists them. Each module defines
# `register(subparsers)` which adds its parser and sets `func=run`.
COMMANDS = ["predict", "val", "info", "profile", "export", "bench", "train", "prune", "compress", "quantize", "optimize", "data", "demo"]


class _OneLineFormatter(logging.Formatter):
    def format(self, record):
        level = "warning" if record.levelno == logging.WARNING else record.levelname.lower()
        if record.levelno == logging.INFO:
            return record.getMessage()
        return f"yolopt: {level}: {record.getMessage()}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (not the stream current at set-up, which a test
    harness or a redirect may have closed since)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass

    def emit(self, record):
        """Above a live progress bar, through tqdm's own write (a plain write would land inside the bar's line)."""
        tqdm = sys.modules.get("tqdm")
        if tqdm is not None and getattr(tqdm.tqdm, "_instances", None):
            try:
                tqdm.tqdm.write(self.format(record), file=sys.stderr)
                return
            except Exception:  # noqa: BLE001 - fall back to a plain write
                pass
        super().emit(record)


def setup_logging(verbose: bool = False) -> None:
    log = logging.getLogger("yolopt")
    if not log.handlers:
        h = _StderrHandler()
        h.setFormatter(_OneLineFormatter())
        log.addHandler(h)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yolopt",
        description="Measure, compress and deploy YOLOv5 detectors. Run `yolopt COMMAND --help` for details.",
    )
    p.add_argument("--version", action="version", version=f"yolopt {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"yolopt.commands.{name}").register(sub)
    for sp in sub.choices.values():  # bad options: one line and exit 2, for every command
        one_line_errors(sp)
    return p


def flags_for(parser: argparse.ArgumentParser, command: str | None, fields: tuple[str, ...]) -> list[str]:
    """The command-line flags of ``command`` that set these spec ``fields`` (argparse ``dest`` names), in order;
    a field the command has no flag for is left out."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    cmd = sub.choices.get(command) if sub is not None and command else None
    if cmd is None:
        return []
    by_dest = {a.dest: a.option_strings[0] for a in cmd._actions if a.option_strings}
    by_dest.update({a.dest: a.dest.upper() for a in cmd._actions if not a.option_strings})  # positionals
    return [by_dest[f] for f in fields if f in by_dest]


def error_line(e: YoloptError, parser: argparse.ArgumentParser, command: str | None) -> str:
    """``yolopt: error: MESSAGE``, with the flags behind the error's fields appended (library errors name
    spec fields; the user typed flags)."""
    flags = flags_for(parser, command, getattr(e, "fields", ()))
    return f"yolopt: error: {e}" + (f" ({', '.join(flags)})" if flags else "")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(getattr(args, "verbose", False))
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below
        return rc
    except YoloptError as e:
        print(error_line(e, parser, getattr(args, "command", None)), file=sys.stderr)
        return 1
    except BrokenPipeError:  # `yolopt ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a file system refusal (permissions, full disk) with the file it concerns
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"yolopt: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("yolopt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
