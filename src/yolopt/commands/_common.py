"""Options shared by CLI sub-commands."""

from __future__ import annotations

import logging

from ..choices import PRECISIONS
from ._options import imgsz_arg, positive_int_arg

log = logging.getLogger("yolopt")


def add_common_model_args(p) -> None:
    p.add_argument("--imgsz", type=imgsz_arg, help="inference size in pixels, rounded up to the model stride (default: "
                   "an exported model's own size from its metadata, else 640)")
    p.add_argument("--workers", type=positive_int_arg, default=1,
                   help="parallel inference streams (separate sessions in threads; default 1)")
    p.add_argument("--threads", type=positive_int_arg, help="intra-op threads per session (default: the runtime's choice)")
    p.add_argument("--device", default="auto", help="cpu, cuda:0 / 0, or auto (CUDA when available; default)")
    add_precision_arg(p)


def add_match_classes_arg(p) -> None:
    """``--match-classes``, for every command that measures mAP."""
    p.add_argument("--match-classes", action="store_true",
                   help="evaluate only the classes the model and the dataset share by name (e.g. a helmet+vest model "
                   "on a helmet dataset); needed when their class counts differ")


def add_precision_arg(p) -> None:
    p.add_argument("--precision", choices=PRECISIONS, metavar="{" + ",".join(PRECISIONS) + "}",
                   help="compute precision (default: the artifact's own, fp32 for PyTorch and FP32 artifacts on "
                   "every CPU). bf16/fp16 run only when asked for, on a runtime and CPU that have them")


def console(**kwargs):
    """A rich Console for command output: the terminal's width, or wide enough (160) when piped to a
    file, where rich would otherwise cut tables at 80 columns."""
    import sys

    from rich.console import Console

    if not sys.stdout.isatty() and "width" not in kwargs:
        kwargs["width"] = 160
    return Console(**kwargs)
