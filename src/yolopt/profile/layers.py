"""Per-layer analysis of a PyTorch YOLOv5 model: shapes, params, FLOPs, bytes, latency.

FLOPs come from ``torch.utils.flop_counter`` (a multiply-add counts as 2 FLOPs, as upstream's
GFLOPs). Latency is measured with forward pre-/post-hooks and ``perf_counter`` inside real
forward passes; hooked passes are interleaved with plain (hook-free) passes of the whole model
so that machine noise hits both alike, and medians are reported.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

STAGES = ("backbone", "neck", "head")


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _nbytes(obj) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(obj))


def _shape(obj):
    ts = list(_tensors(obj))
    if len(ts) == 1:
        return list(ts[0].shape)
    return [list(t.shape) for t in ts]


def layer_stage(model, layer) -> str:
    """backbone / neck / head for a top-level layer of a DetectionModel."""
    if layer is model.model[-1] or getattr(layer, "type", "") == "Detect":
        return "head"
    nb = len(model.yaml.get("backbone", [])) if hasattr(model, "yaml") else 0
    return "backbone" if layer.i < nb else "neck"


def sub_modules(layer: nn.Module) -> list[tuple[str, nn.Module]]:
    """The direct children of a top-level layer that are called in forward (ModuleLists expanded)."""
    out = []
    for name, child in layer.named_children():
        if isinstance(child, nn.Identity):
            continue
        if isinstance(child, nn.ModuleList):
            out.extend((f"{name}.{k}", c) for k, c in child.named_children())
        else:
            out.append((name, child))
    return out


class _OpBytes(TorchDispatchMode):
    """Bytes read + written by every aten op, as eager PyTorch executes them (views excluded)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.name.startswith("aten::") and not _is_view(func):
            self.bytes += _nbytes(list(args) + list((kwargs or {}).values())) + _nbytes(out)
        return out


def _is_view(func) -> bool:
    name = func._schema.name.split("::")[-1]
    return name in _VIEW_OPS or any(a.alias_info is not None and not a.alias_info.is_write
                                    for a in func._schema.returns)


_VIEW_OPS = {"view", "_unsafe_view", "expand", "permute", "split", "split_with_sizes", "slice", "select", "t",
             "transpose", "unsqueeze", "squeeze", "alias", "detach", "as_strided", "unbind", "chunk"}


def _flops(module: nn.Module, args) -> tuple[int, dict, int]:
    with FlopCounterMode(display=False) as fc, _OpBytes() as ob:
        module(*args)
    by_op = defaultdict(int)
    for _mod, ops in fc.get_flop_counts().items():
        if _mod == "Global":
            for op, n in ops.items():
                by_op[str(op).split(".")[-1]] += int(n)
    return int(fc.get_total_flops()), dict(by_op), ob.bytes


@torch.inference_mode()
def analyse_layers(model, x: torch.Tensor, children: bool = True) -> list[dict]:
    """Static per-layer facts (no timing): shape, params, FLOPs, bytes read/written."""
    layers = list(model.model)
    captured: dict[nn.Module, tuple] = {}
    outputs: dict[nn.Module, object] = {}
    handles = []
    tracked = []
    for layer in layers:
        tracked.append(layer)
        if children:
            tracked.extend(c for _, c in sub_modules(layer))

    def pre(mod, args):
        captured[mod] = args

    def post(mod, args, out):
        outputs[mod] = out

    for m in tracked:
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()

    rows = []
    for layer in layers:
        args = captured[layer]
        flops, by_op, op_bytes = _flops(layer, args)
        row = {
            "index": int(layer.i),
            "name": f"model.{layer.i}",
            "type": str(getattr(layer, "type", type(layer).__name__)),
            "from": layer.f,
            "stage": layer_stage(model, layer),
            "output_shape": _shape(outputs[layer]),
            "params": sum(p.numel() for p in layer.parameters()),
            "flops": flops,
            "flops_by_op": by_op,
            "input_bytes": _nbytes(args),
            "activation_bytes": _nbytes(outputs[layer]),
            "param_bytes": sum(p.numel() * p.element_size() for p in layer.parameters()),
            "op_bytes": op_bytes,
        }
        if children:
            kids = []
            for cname, child in sub_modules(layer):
                if child not in captured:  # not called in this forward
                    continue
                cflops, _, _ = _flops(child, captured[child])
                kids.append({
                    "name": f"{row['name']}.{cname}",
                    "type": type(child).__name__,
                    "output_shape": _shape(outputs[child]),
                    "params": sum(p.numel() for p in child.parameters()),
                    "flops": cflops,
                    "activation_bytes": _nbytes(outputs[child]),
                })
            row["children"] = kids
        rows.append(row)
    return rows


def central_mean(per_pass: list[dict], totals: list[float]) -> dict:
    """Per-key mean over the passes whose total lies in the interquartile range of all totals.

    Plain per-layer medians do not add up on a busy machine (each layer's median picks its own
    quiet moment, so their sum undershoots the median pass). Averaging every layer over the same
    set of typical passes keeps the numbers additive and as robust to outliers as a median.
    """
    n = len(totals)
    order = sorted(range(n), key=lambda k: totals[k])
    lo, hi = n // 4, n - n // 4
    keep = order[lo:hi] or order
    keys = {k for d in per_pass for k in d}
    return {k: sum(per_pass[p].get(k, 0.0) for p in keep) / len(keep) for k in keys}


@torch.inference_mode()
def time_layers(model, x: torch.Tensor, repeats: int = 30, warmup: int = 5, children: bool = True) -> dict:
    """Latency per top-level layer (and per child module) vs the whole model.

    Each repeat runs, in a shuffled order, (a) the whole model with no hooks, (b) a pass with
    pre/post hooks on the top-level layers, and, with ``children``, (c) a pass with hooks on their
    direct children.
    ``whole_ms`` is the median of (a); ``layers_ms`` the per-layer time averaged over the
    typical (interquartile) passes of (b) - see :func:`central_mean`; ``layers_ms_median`` the
    plain per-layer medians.
    """
    layers = list(model.model)
    names = {id(m): f"model.{m.i}" for m in layers}
    kids = []
    if children:
        for m in layers:
            kids.extend((f"model.{m.i}.{n}", c) for n, c in sub_modules(m))
    kid_names = {id(c): n for n, c in kids}

    starts: dict[int, float] = {}
    whole: list[float] = []
    passes: list[dict] = []
    pass_totals: list[float] = []
    kid_passes: list[dict] = []
    kid_totals: list[float] = []

    def hooked_pass(mods, name_of) -> tuple[dict, float]:
        rec: dict[str, float] = defaultdict(float)

        def pre(mod, args):
            starts[id(mod)] = time.perf_counter()

        def post(mod, args, out):
            rec[name_of[id(mod)]] += (time.perf_counter() - starts[id(mod)]) * 1e3

        hs = [m.register_forward_pre_hook(pre) for m in mods] + [m.register_forward_hook(post) for m in mods]
        try:
            t0 = time.perf_counter()
            model(x)
            t1 = time.perf_counter()
        finally:
            for h in hs:
                h.remove()
        return dict(rec), (t1 - t0) * 1e3

    def plain_pass():
        t0 = time.perf_counter()
        model(x)
        return (time.perf_counter() - t0) * 1e3

    rng = random.Random(0)
    for r in range(warmup + repeats):
        # the three passes run in a shuffled order so no pass type always follows another
        todo = ["plain", "layers", "children"] if kids else ["plain", "layers"]
        rng.shuffle(todo)
        res = {}
        for kind in todo:
            if kind == "plain":
                res[kind] = plain_pass()
            elif kind == "layers":
                res[kind] = hooked_pass(layers, names)
            else:
                res[kind] = hooked_pass([c for _, c in kids], kid_names)
        if r < warmup:
            continue
        rec, tot = res["layers"]
        if kids:
            krec, ktot = res["children"]
        whole.append(res["plain"])
        passes.append(rec)
        pass_totals.append(tot)
        if kids:
            kid_passes.append(krec)
            kid_totals.append(ktot)

    order = [f"model.{m.i}" for m in layers]
    # Select typical repeats by the mean of the (adjacent in time) hook-free and hooked passes, so the
    # layer times and the whole-model time come from the same moments of a noisy machine.
    pair = [(w + t) / 2 for w, t in zip(whole, pass_totals)]
    central = central_mean([{**p, "__whole__": w} for p, w in zip(passes, whole)], pair)
    return {
        "whole_ms": statistics.median(whole),
        "whole_ms_central": central.pop("__whole__"),
        "whole_ms_all": whole,
        "hooked_pass_ms": statistics.median(pass_totals),
        "layers_ms": {n: central.get(n, 0.0) for n in order},
        "layers_ms_median": {n: statistics.median([p.get(n, 0.0) for p in passes]) for n in order},
        "children_ms": central_mean(kid_passes, kid_totals) if kids else {},
        "repeats": repeats,
        "warmup": warmup,
    }


def group_totals(rows: list[dict], key: str) -> dict:
    """Sum params / FLOPs / latency by ``key`` (``stage`` or ``type``)."""
    out: dict[str, dict] = {}
    total = sum(r.get("latency_ms") or 0 for r in rows) or 1.0
    for r in rows:
        g = out.setdefault(r[key], {"layers": 0, "params": 0, "flops": 0, "activation_bytes": 0, "latency_ms": 0.0})
        g["layers"] += 1
        g["params"] += r["params"]
        g["flops"] += r["flops"]
        g["activation_bytes"] += r["activation_bytes"]
        g["latency_ms"] += r.get("latency_ms") or 0.0
    for g in out.values():
        g["share"] = g["latency_ms"] / total
    if key == "stage":
        out = {k: out[k] for k in STAGES if k in out} | {k: v for k, v in out.items() if k not in STAGES}
    else:
        out = dict(sorted(out.items(), key=lambda kv: -kv[1]["latency_ms"]))
    return out


def attach_latency(rows: list[dict], timing: dict) -> None:
    """Fill latency_ms, share, cumulative_share (in layer order) into the rows, in place."""
    total = sum(timing["layers_ms"].get(r["name"], 0.0) for r in rows) or 1.0
    cum = 0.0
    for r in rows:
        ms = timing["layers_ms"].get(r["name"], 0.0)
        cum += ms
        r["latency_ms"] = ms
        r["share"] = ms / total
        r["cumulative_share"] = cum / total
        for c in r.get("children", []):
            c["latency_ms"] = timing["children_ms"].get(c["name"])
