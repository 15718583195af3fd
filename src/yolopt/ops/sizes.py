"""Input-size rules shared by every command: one place that rounds and checks ``imgsz``."""

from __future__ import annotations

import logging
import math

log = logging.getLogger("yolopt")


def check_imgsz(imgsz: int, stride: int) -> int:
    """Round ``imgsz`` up to a multiple of ``stride`` (with a warning when it changes)."""
    new = int(math.ceil(imgsz / stride) * stride)
    if new != imgsz:
        log.warning("--imgsz %d is not a multiple of the model stride %d; using %d", imgsz, stride, new)
    return new
