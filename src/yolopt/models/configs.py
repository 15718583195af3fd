"""Built-in YOLOv5 architectures (v6.0+), in upstream's yaml schema.

``yolov5{n,s,m,l,x}`` have three detection levels (P3-P5, strides 8/16/32); the ``...6``
variants add a fourth (P6, stride 64) for 1280-pixel inputs. Sizes differ only in their
depth and width multiples.
"""

from __future__ import annotations

from pathlib import Path

import yaml

SCALES = {  # name: (depth_multiple, width_multiple)
    "n": (0.33, 0.25),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
    "l": (1.00, 1.00),
    "x": (1.33, 1.25),
}

_P5_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
_P6_ANCHORS = [
    [19, 27, 44, 40, 38, 94],
    [96, 68, 86, 152, 180, 137],
    [140, 301, 303, 264, 238, 542],
    [436, 615, 739, 380, 925, 792],
]
_UP = ["None", 2, "nearest"]


def _stem() -> list:
    """Backbone rows shared by P5 and P6 models, down to stride 16 (layers 0-6)."""
    return [
        [-1, 1, "Conv", [64, 6, 2, 2]],  # 0  P1/2
        [-1, 1, "Conv", [128, 3, 2]],  # 1  P2/4
        [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]],  # 3  P3/8
        [-1, 6, "C3", [256]],
        [-1, 1, "Conv", [512, 3, 2]],  # 5  P4/16
        [-1, 9, "C3", [512]],
    ]


def _top_down(widths: list[int], lateral: list[int]) -> list:
    """FPN rows: for each width, 1x1 Conv, upsample, concat with a backbone layer, C3."""
    rows = []
    for c, src in zip(widths, lateral):
        rows += [
            [-1, 1, "Conv", [c, 1, 1]],
            [-1, 1, "nn.Upsample", _UP],
            [[-1, src], 1, "Concat", [1]],
            [-1, 3, "C3", [c, False]],
        ]
    return rows


def _bottom_up(widths: list[int], lateral: list[int]) -> list:
    """PAN rows: for each width, stride-2 Conv, concat with a top-down layer, C3."""
    rows = []
    for c_down, c_out, src in zip(widths[:-1], widths[1:], lateral):
        rows += [
            [-1, 1, "Conv", [c_down, 3, 2]],
            [[-1, src], 1, "Concat", [1]],
            [-1, 3, "C3", [c_out, False]],
        ]
    return rows


def _p5() -> tuple[list, list]:
    backbone = _stem() + [
        [-1, 1, "Conv", [1024, 3, 2]],  # 7  P5/32
        [-1, 3, "C3", [1024]],
        [-1, 1, "SPPF", [1024, 5]],  # 9
    ]
    # top-down 10-17 (C3 at 13, 17 = P3 out); bottom-up 18-23 (P4 out 20, P5 out 23)
    head = _top_down([512, 256], [6, 4]) + _bottom_up([256, 512, 1024], [14, 10])
    head.append([[17, 20, 23], 1, "Detect", ["nc", "anchors"]])
    return backbone, head


def _p6() -> tuple[list, list]:
    backbone = _stem() + [
        [-1, 1, "Conv", [768, 3, 2]],  # 7  P5/32
        [-1, 3, "C3", [768]],
        [-1, 1, "Conv", [1024, 3, 2]],  # 9  P6/64
        [-1, 3, "C3", [1024]],
        [-1, 1, "SPPF", [1024, 5]],  # 11
    ]
    # top-down 12-23 (P3 out 23); bottom-up 24-32 (P4 26, P5 29, P6 32)
    head = _top_down([768, 512, 256], [8, 6, 4]) + _bottom_up([256, 512, 768, 1024], [20, 16, 12])
    head.append([[23, 26, 29, 32], 1, "Detect", ["nc", "anchors"]])
    return backbone, head


def builtin_names() -> list[str]:
    return [f"yolov5{s}{p}" for p in ("", "6") for s in SCALES]


def builtin_config(name: str, nc: int = 80) -> dict:
    """The yaml dict of a built-in model, e.g. ``yolov5n`` or ``yolov5s6``."""
    key = Path(name).stem.removeprefix("yolov5")
    p6 = key.endswith("6")
    scale = key[:-1] if p6 else key
    if scale not in SCALES:
        raise KeyError(f"unknown model config {name!r}; built-in configs: {', '.join(builtin_names())}")
    backbone, head = _p6() if p6 else _p5()
    gd, gw = SCALES[scale]
    return {
        "nc": nc,
        "depth_multiple": gd,
        "width_multiple": gw,
        "anchors": _P6_ANCHORS if p6 else _P5_ANCHORS,
        "backbone": backbone,
        "head": head,
    }


def load_config(spec: str | Path | dict) -> dict:
    """A config from a dict, a built-in name (``yolov5s``, ``yolov5s.yaml``) or a yaml file."""
    if isinstance(spec, dict):
        return spec
    path = Path(spec)
    if path.is_file():
        with open(path) as f:
            cfg = yaml.safe_load(f)
        if not isinstance(cfg, dict) or not {"backbone", "head", "anchors", "nc"} <= cfg.keys():
            raise ValueError(f"{path}: not a YOLOv5 model yaml (needs nc, anchors, backbone, head)")
        return cfg
    return builtin_config(str(spec))
