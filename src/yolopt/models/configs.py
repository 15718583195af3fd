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


def _p5() -> tuple[list, list]:
    backbone = [
        [-1, 1, "Conv", [64, 6, 2, 2]],  # 0  P1/2
        [-1, 1, "Conv", [128, 3, 2]],  # 1  P2/4
        [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]],  # 3  P3/8
        [-1, 6, "C3", [256]],
        [-1, 1, "Conv", [512, 3, 2]],  # 5  P4/16
        [-1, 9, "C3", [512]],
        [-1, 1, "Conv", [1024, 3, 2]],  # 7  P5/32
        [-1, 3, "C3", [1024]],
        [-1, 1, "SPPF", [1024, 5]],  # 9
    ]
    head = [
        [-1, 1, "Conv", [512, 1, 1]],
        [-1, 1, "nn.Upsample", _UP],
        [[-1, 6], 1, "Concat", [1]],
        [-1, 3, "C3", [512, False]],  # 13
        [-1, 1, "Conv", [256, 1, 1]],
        [-1, 1, "nn.Upsample", _UP],
        [[-1, 4], 1, "Concat", [1]],
        [-1, 3, "C3", [256, False]],  # 17 (P3/8 out)
        [-1, 1, "Conv", [256, 3, 2]],
        [[-1, 14], 1, "Concat", [1]],
        [-1, 3, "C3", [512, False]],  # 20 (P4/16 out)
        [-1, 1, "Conv", [512, 3, 2]],
        [[-1, 10], 1, "Concat", [1]],
        [-1, 3, "C3", [1024, False]],  # 23 (P5/32 out)
        [[17, 20, 23], 1, "Detect", ["nc", "anchors"]],
    ]
    return backbone, head


def _p6() -> tuple[list, list]:
    backbone = [
        [-1, 1, "Conv", [64, 6, 2, 2]],  # 0  P1/2
        [-1, 1, "Conv", [128, 3, 2]],  # 1  P2/4
        [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]],  # 3  P3/8
        [-1, 6, "C3", [256]],
        [-1, 1, "Conv", [512, 3, 2]],  # 5  P4/16
        [-1, 9, "C3", [512]],
        [-1, 1, "Conv", [768, 3, 2]],  # 7  P5/32
        [-1, 3, "C3", [768]],
        [-1, 1, "Conv", [1024, 3, 2]],  # 9  P6/64
        [-1, 3, "C3", [1024]],
        [-1, 1, "SPPF", [1024, 5]],  # 11
    ]
    head = [
        [-1, 1, "Conv", [768, 1, 1]],
        [-1, 1, "nn.Upsample", _UP],
        [[-1, 8], 1, "Concat", [1]],
        [-1, 3, "C3", [768, False]],  # 15
        [-1, 1, "Conv", [512, 1, 1]],
        [-1, 1, "nn.Upsample", _UP],
        [[-1, 6], 1, "Concat", [1]],
        [-1, 3, "C3", [512, False]],  # 19
        [-1, 1, "Conv", [256, 1, 1]],
        [-1, 1, "nn.Upsample", _UP],
        [[-1, 4], 1, "Concat", [1]],
        [-1, 3, "C3", [256, False]],  # 23 (P3/8 out)
        [-1, 1, "Conv", [256, 3, 2]],
        [[-1, 20], 1, "Concat", [1]],
        [-1, 3, "C3", [512, False]],  # 26 (P4/16 out)
        [-1, 1, "Conv", [512, 3, 2]],
        [[-1, 16], 1, "Concat", [1]],
        [-1, 3, "C3", [768, False]],  # 29 (P5/32 out)
        [-1, 1, "Conv", [768, 3, 2]],
        [[-1, 12], 1, "Concat", [1]],
        [-1, 3, "C3", [1024, False]],  # 32 (P6/64 out)
        [[23, 26, 29, 32], 1, "Detect", ["nc", "anchors"]],
    ]
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
