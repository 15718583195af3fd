"""Per-group pruning sensitivity: what each channel group costs per FLOP it saves, and a non-uniform
``--layer-ratio`` plan for a FLOPs target built from that ranking.

    PYTHONPATH=src python benchmarks/prune_sensitivity.py ../shared/weights/yolov5n.pt \
        --fit ../shared/data/hardhat/images/train --held ../shared/data/hardhat/images/val \
        --ratio 0.5 --target-flops 0.745 [--imgsz 320] [--out benchmarks/results/prune_sensitivity_yolov5n.json]

For every channel group of the model (Torch-Pruning's dependency graph, Detect outputs excluded), one
at a time: prune that group alone at ``--ratio`` (round-to 8), refit the convs that read it by least
squares on ``--fit-images`` unlabelled images (``compress.reconstruct``), and measure how far the
outputs move from the unpruned model's on ``--held-images`` other images:

* ``gap_obj``: mean squared difference of the objectness probabilities over every anchor;
* ``gap_cls``: mean over the anchors where the unpruned model is confident (objectness > 0.25) of the
  squared difference of the class confidences (objectness x class probability), summed over classes;
* the same two without the refit (``plain_*``), and the fraction of the FLOPs (at 640) the group saves.

Groups are ranked by ``gap_cls / flops_saved``. The plan gives every group its own ratio, inversely
proportional to that cost: if a group's output gap grows with the square of its ratio and its FLOPs saved
linearly, minimising the summed gap at a FLOPs budget gives ``r_g = c * flops_saved_g / gap_cls_g`` (capped at
``--cap``); ``c`` is bisected until the whole model is at ``--target-flops`` (FLOPs of the combined plan
measured, not added up). It is printed as ``yolopt prune --layer-ratio`` arguments (then use
``--reconstruct``: without the refit such a plan loses everything, see docs/compress.md). No labels are used, and no image of the scoring set. The rows are
cached in the output JSON as they are measured: a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _images(folder: str, n: int, imgsz: int):
    from yolopt.data.images import list_images, read_image
    from yolopt.data.preprocess import preprocess

    files = list_images(folder)
    files = files[:: max(1, len(files) // n)][:n]
    return preprocess([read_image(f) for f in files], imgsz, pixels=True)[0]


def output_gap(model, ref_raw, x) -> tuple[float, float]:
    """(objectness gap, class-confidence gap) of ``model`` on ``x`` against the reference raw outputs."""
    import torch

    with torch.no_grad():
        raw, _ = model.forward_features(x)
    g_obj = g_cls = 0.0
    for a, b in zip(raw, ref_raw):
        so, to = a[..., 4].sigmoid(), b[..., 4].sigmoid()
        g_obj += float(((so - to) ** 2).mean())
        mask = to > 0.25
        if mask.any():
            ca = a[mask][:, 5:].sigmoid() * so[mask][:, None]
            cb = b[mask][:, 5:].sigmoid() * to[mask][:, None]
            g_cls += float(((ca - cb) ** 2).sum(1).mean())
    return g_obj / len(raw), g_cls / len(raw)


def _pruned(base, layer_ratios):
    from yolopt.compress import PruneSpec
    from yolopt.compress.prune import ChannelPruner

    m = copy.deepcopy(base)
    pr = ChannelPruner(m, PruneSpec(layer_ratios=tuple(layer_ratios), round_to=8), ratio=0.0)
    pr.step()
    return m, pr.kept_outputs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--fit", required=True, help="folder of unlabelled images for the least-squares refit")
    ap.add_argument("--held", required=True, help="folder of other images the output gap is measured on")
    ap.add_argument("--fit-images", type=int, default=16)
    ap.add_argument("--held-images", type=int, default=16)
    ap.add_argument("--ratio", type=float, default=0.5, help="ratio each group is pruned at (default 0.5)")
    ap.add_argument("--target-flops", type=float, default=0.745)
    ap.add_argument("--cap", type=float, default=0.6, help="largest ratio the plan gives a group (default 0.6)")
    ap.add_argument("--imgsz", type=int, default=320, help="size of the gap measurement (FLOPs always at 640)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/prune_sensitivity_yolov5n.json"))
    args = ap.parse_args()

    import torch
    from torch import nn

    import yolopt
    from yolopt.compress import PruneSpec, model_flops, reconstruct
    from yolopt.compress.prune import ChannelPruner
    from yolopt.fileio import write_json
    from yolopt.machine import machine_info

    torch.set_num_threads(args.threads)
    base = yolopt.load(args.model).float().eval()
    fit = _images(args.fit, args.fit_images, args.imgsz)
    held = _images(args.held, args.held_images, args.imgsz).float() / 255
    with torch.no_grad():
        ref, _ = base.forward_features(held)
    f0 = model_flops(base, 640)
    out = Path(args.out)
    settings = {k: getattr(args, k) for k in ("model", "fit", "held", "fit_images", "held_images", "ratio", "imgsz")}
    cached = json.loads(out.read_text()) if out.is_file() else {}
    rows = cached.get("rows", []) if cached.get("settings") == settings else []
    done = {r["root"] for r in rows}

    probe = ChannelPruner(copy.deepcopy(base), PruneSpec(ratio=0.1), ratio=0.1)
    names = {m: n for n, m in probe.model.named_modules()}
    roots = [names[g[0].dep.target.module] for g in probe.pruner.DG.get_all_groups(
        ignored_layers=probe.pruner.ignored_layers, root_module_types=[nn.Conv2d])]
    print(f"{len(roots)} groups, {len(done)} cached", flush=True)
    t_all = time.perf_counter()
    for root in roots:
        if root in done:
            continue
        t0 = time.perf_counter()
        m, kept = _pruned(base, [(root, args.ratio)])
        if m.num_params() == base.num_params():
            continue  # too small to lose a multiple of 8
        plain = output_gap(m, ref, held)
        readers = {n for n, mod in m.named_modules()
                   if isinstance(mod, nn.Conv2d) and mod.in_channels != base.get_submodule(n).in_channels}
        reconstruct(m, base, fit, progress=False, layers=readers, kept=kept)
        gap = output_gap(m, ref, held)
        rows.append({"root": root, "flops_saved": round((f0 - model_flops(m, 640)) / f0, 6), "gap_obj": gap[0],
                     "gap_cls": gap[1], "plain_obj": plain[0], "plain_cls": plain[1], "refit": sorted(readers),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{root:24s} saves {rows[-1]['flops_saved']:.4f}  gap_cls {gap[1]:.5f} (plain {plain[1]:.5f})",
              flush=True)
        write_json(out, {"settings": settings, "rows": rows}, quiet=True)

    rank = sorted(rows, key=lambda r: r["gap_cls"] / max(r["flops_saved"], 1e-9))

    def plan_for(c: float) -> list:
        ratios = [(r["root"], round(min(args.cap, c * r["flops_saved"] / max(r["gap_cls"], 1e-9)), 3)) for r in rank]
        return [(n, r) for n, r in ratios if r >= 0.02]

    lo, hi = 0.0, 1.0
    if model_flops(_pruned(base, plan_for(hi))[0], 640) / f0 > args.target_flops:
        raise SystemExit(f"--target-flops {args.target_flops}: not reachable with --cap {args.cap}")
    for _ in range(12):
        c = (lo + hi) / 2
        if model_flops(_pruned(base, plan_for(c))[0], 640) / f0 <= args.target_flops:
            hi = c
        else:
            lo = c
    plan = plan_for(hi)
    flops = model_flops(_pruned(base, plan)[0], 640) / f0
    result = {"settings": settings, "rows": rows, "ranking": [r["root"] for r in rank],
              "plan": {"target_flops": args.target_flops, "flops": round(flops, 4), "cap": args.cap,
                       "layer_ratios": plan},
              "seconds": round(time.perf_counter() - t_all, 1), "machine": machine_info()}
    write_json(out, result)
    print(f"plan: {len(plan)} groups, ratios {min(r for _, r in plan):.3f}-{max(r for _, r in plan):.3f} -> "
          f"{flops:.4f} of the FLOPs")
    print("yolopt prune MODEL " + " ".join(f"--layer-ratio {n}={r}" for n, r in plan))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
