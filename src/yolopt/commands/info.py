"""yolopt info: what a model file contains."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a model file (architecture, classes, params, precision)",
                       description="Load a model safely and print what it is, as a table (--json: everything, as "
                       "JSON): for PyTorch weights the architecture summary; for exported artifacts the runtime, input "
                       "shape, precision and metadata. `precision` is what it computes in (fp32 unless the artifact "
                       "says otherwise).")
    p.add_argument("weights", help="model: .pt / .safetensors, or an exported .onnx / .xml / .torchscript / .engine")
    p.add_argument("--json", action="store_true", help="print every field as JSON (per-layer rows included)")
    p.set_defaults(func=run)


def _torch_info(path: str) -> dict:
    import copy

    from ..models.checkpoint import load_model

    m = load_model(path)
    layers = [{"index": mod.i, "from": mod.f, "type": mod.type,
               "params": sum(p.numel() for p in mod.parameters())} for mod in m.model]
    fused = copy.deepcopy(m).fuse()
    return {
        "weights": path,
        "format": "torch",
        "precision": "fp32",  # yolopt loads every checkpoint as float32 (official ones are stored in fp16)
        "nc": m.nc,
        "names": m.names,
        "stride": [int(s) for s in m.stride],
        "params": m.num_params(),
        "params_fused": fused.num_params(),
        "depth_multiple": m.yaml.get("depth_multiple"),
        "width_multiple": m.yaml.get("width_multiple"),
        "anchors": m.yaml.get("anchors"),
        "provenance": m.provenance,
        "layers": layers,
    }


def run(args) -> int:
    from ..runtime import backend_for
    from ..runtime import open as open_backend

    if backend_for(args.weights) == "torch":
        info = _torch_info(args.weights)
    else:
        b = open_backend(args.weights, device="cpu" if backend_for(args.weights) != "tensorrt" else None)
        info = {"weights": args.weights, **b.describe(), "names": b.names, "stride": [int(s) for s in b.stride],
                "input_shape": list(b.input_shape), "nms": b.nms, "yolopt_version": getattr(b, "version", None),
                "size_mb": round(sum(f.stat().st_size for f in _files(Path(args.weights))) / 1e6, 3)}
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        _print_table(info)
    return 0


def _print_table(info: dict) -> None:
    from rich.table import Table

    from ._common import console

    t = Table(title=str(info["weights"]), show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in info.items():
        if k in ("weights", "layers") or v is None or v == {}:
            continue
        if k == "names":
            v = f"{len(v)}: " + ", ".join(map(str, v[:8])) + (", ..." if len(v) > 8 else "")
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, default=str)
        t.add_row(k, str(v))
    if info.get("layers"):
        t.add_row("layers", f"{len(info['layers'])} (--json lists them)")
    console().print(t)


def _files(p: Path) -> list[Path]:
    if p.is_dir():
        p = sorted(p.glob("*.xml"))[0]
    return [f for f in (p, p.with_suffix(".bin")) if f.exists()] if p.suffix == ".xml" else [p]
