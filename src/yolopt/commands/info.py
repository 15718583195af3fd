"""yolopt info: what a model file contains."""

from __future__ import annotations

import json

from ..models.checkpoint import load_model


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a model file (architecture, classes, params)",
                       description="Load a model safely and print its architecture summary as JSON.")
    p.add_argument("weights", help="model weights (.pt or .safetensors)")
    p.set_defaults(func=run)


def run(args) -> int:
    m = load_model(args.weights)
    layers = [{"index": mod.i, "from": mod.f, "type": mod.type,
               "params": sum(p.numel() for p in mod.parameters())} for mod in m.model]
    info = {
        "weights": args.weights,
        "nc": m.nc,
        "names": m.names,
        "stride": [int(s) for s in m.stride],
        "params": m.num_params(),
        "params_fused": sum(p.numel() for p in load_model(args.weights).fuse().parameters()),
        "depth_multiple": m.yaml.get("depth_multiple"),
        "width_multiple": m.yaml.get("width_multiple"),
        "anchors": m.yaml.get("anchors"),
        "provenance": m.provenance,
        "layers": layers,
    }
    print(json.dumps(info, indent=1))
    return 0
