"""Pruning sweep: mAP against measured latency for two base models, with and without distillation.

    PYTHONPATH=src python benchmarks/prune_sweep.py [--bases hardhat,coco] [--ratios 0.1,0.2,0.3,0.4,0.5]
        [--base-ratios coco=0.1,0.2,0.3] [--epochs 2] [--train-images 400] [--variants distill,plain]
        [--warmup-epochs 0] [--rounds 3] [--iters 20]

Base models:

* ``coco``: the official ``yolov5n.pt``; mAP on coco128 at 640.
  ``distill`` fine-tunes on hardhat *train* images used without their labels (the teacher, the
  unpruned model, supplies the targets; no coco128 image is trained on), ``plain`` on the 128
  labelled coco128 images (the only COCO labels there are, so its coco128 mAP is optimistic).
* ``hardhat``: ``yolov5n.pt`` fine-tuned by yolopt on ../shared/data/hardhat at 416
  (``runs/hardhat/base/best.safetensors``; see docs/compress.md for the exact ``yolopt train``
  command; the sweep does not retrain it). mAP on hardhat val at 416. Both variants fine-tune on
  hardhat train with its labels; ``distill`` adds output distillation from the unpruned model.

For every ratio: group-importance structured pruning (round-to 8), mAP right after pruning, then
``--epochs`` of fine-tuning per variant on ``--train-images`` images (a fixed random subset, so
every cell costs the same), without warm-up by default (``--warmup-epochs``), mAP after. A cell
fine-tuned with other settings (data, epochs, warm-up) is fine-tuned again. Latency: every pruned architecture and the unpruned model
are exported to fused FP32 ONNX and timed with ``bench.measure`` (batch 1, ``--threads``) in
interleaved rounds; ratios to the unpruned model are taken within a round, medians reported.

Everything is cached under ``runs/prune_sweep/`` (pruned models, fine-tuning runs, which resume
after a kill, and per-cell results), so a re-run only does what is missing. Writes
``benchmarks/results/prune_sweep.json`` (with the machine block) and ``prune_sweep.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def bases(shared: Path, cache: Path) -> dict:
    hard = shared / "data" / "hardhat"
    return {
        "hardhat": {"weights": ROOT / "runs" / "hardhat" / "base" / "best.safetensors", "imgsz": 416,
                    "val": hard / "hardhat.yaml", "distill_data": hard / "hardhat.yaml",
                    "plain_data": hard / "hardhat.yaml", "pool": hard / "images" / "train", "labelled": True},
        "coco": {"weights": shared / "weights" / "yolov5n.pt", "imgsz": 640,
                 "val": shared / "data" / "coco128" / "coco128.yaml", "distill_data": None,
                 "plain_data": shared / "data" / "coco128" / "coco128.yaml", "pool": hard / "images" / "train",
                 "labelled": False},
    }


def subset_data(base: dict, name: str, n: int, cache: Path, seed: int = 0) -> str:
    """A fixed random subset of the fine-tuning pool: a data yaml (labelled) or a .txt list (images only)."""
    import numpy as np
    import yaml

    from yolopt.data.images import list_images

    files = list_images(base["pool"])
    pick = sorted(np.random.default_rng(seed).choice(len(files), min(n, len(files)), replace=False).tolist())
    listing = cache / f"{name}_train_{n}.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{files[i]}\n" for i in pick))
    if not base["labelled"]:
        return str(listing)
    src = yaml.safe_load(Path(base["distill_data"]).read_text())
    root = (Path(base["distill_data"]).parent / src.get("path", ".")).resolve()
    cfg = {"path": str(root), "train": str(listing), "val": src["val"], "names": src["names"]}
    out = cache / f"{name}_train_{n}.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(out)


def evaluate_map(model, data, imgsz: int) -> dict:
    from yolopt.evaluate import evaluate

    t0 = time.perf_counter()
    r = evaluate(model, str(data), imgsz=imgsz, progress=False)
    return {"map50_95": round(r.map50_95, 4), "map50": round(r.map50, 4), "images": r.images,
            "seconds": round(time.perf_counter() - t0, 1)}


def finetune(pruned, teacher, data: str, base: dict, variant: str, run: Path, args) -> tuple:
    """Fine-tune a copy of ``pruned`` (resuming a killed run); returns (model, minutes)."""
    import yolopt
    from yolopt.compress import OutputDistillation
    from yolopt.engine import train

    cbs = [OutputDistillation()] if variant == "distill" else []
    kd = teacher if variant == "distill" else None
    common = dict(epochs=args.epochs, imgsz=base["imgsz"], batch=args.batch, workers=args.workers, device="cpu",
                  progress=False, plots=False, val_every=args.epochs, close_mosaic=0,
                  hyp={"warmup_epochs": args.warmup_epochs})
    t0 = time.perf_counter()
    last = run / "last.safetensors"
    state = json.loads((run / "done.json").read_text()) if (run / "done.json").exists() else None
    if state is None:
        if last.exists():
            try:
                train(resume=str(run), callbacks=cbs, teacher=kd, workers=args.workers, progress=False)
            except Exception as e:  # noqa: BLE001 - "already finished" means the last epoch was saved
                if "already finished" not in str(e):
                    raise
        else:
            train(data, model=copy.deepcopy(pruned), teacher=kd, callbacks=cbs, out=str(run), exist_ok=True,
                  val_data=str(base["val"]) if not base["labelled"] else None, **common)
        state = {"minutes": round((time.perf_counter() - t0) / 60, 2)}
        (run / "done.json").write_text(json.dumps(state))
    best = run / "best.safetensors"
    return yolopt.load(best if best.exists() else last), state["minutes"]


def latencies(models: dict, imgsz: int, args) -> dict:
    """Interleaved ORT FP32 p50s; per-round ratios to "unpruned"; medians."""
    from yolopt import bench, runtime
    from yolopt.export import ExportSpec, export

    work = Path(tempfile.mkdtemp(prefix="yolopt-sweep-"))
    backends = {}
    for name, m in models.items():
        spec = ExportSpec("onnx", imgsz=imgsz, out=work / f"{name}.onnx", verify=False)  # timing only
        path = export(copy.deepcopy(m).eval(), spec).path
        backends[name] = runtime.open(path, threads=args.threads)
    names = list(backends)
    p50 = {n: [] for n in names}
    for k in range(args.rounds):
        for n in names if k % 2 == 0 else reversed(names):
            p50[n].append(bench.measure(backends[n], imgsz, bench.BenchSpec(warmup=3, iters=args.iters)).latency_ms["p50"])
        print(f"  latency round {k + 1}/{args.rounds}: " + ", ".join(f"{n} {p50[n][-1]:.1f}" for n in names),
              file=sys.stderr)
    ref = p50["unpruned"]
    return {n: {"p50_ms_median": round(statistics.median(p50[n]), 3), "round_p50_ms": [round(v, 3) for v in p50[n]],
                "rel_to_unpruned": round(statistics.median(a / b for a, b in zip(p50[n], ref)), 4)} for n in names}


def sweep_base(name: str, base: dict, args, cache: Path) -> dict:
    import yolopt
    from yolopt.compress import PruneSpec, model_flops, prune

    if not Path(base["weights"]).exists():
        raise SystemExit(f"{base['weights']}: base model missing (hardhat: run the `yolopt train` command in "
                         f"docs/compress.md first)")
    model = yolopt.load(base["weights"])
    imgsz = base["imgsz"]
    out = {"weights": str(base["weights"]), "imgsz": imgsz, "val": str(base["val"]), "rows": []}
    ref_file = cache / name / "unpruned.json"
    if ref_file.exists():
        out["unpruned"] = json.loads(ref_file.read_text())
    else:
        out["unpruned"] = {"params": model.num_params(), "gflops": round(model_flops(model, imgsz), 3),
                           "map": evaluate_map(model, base["val"], imgsz)}
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(json.dumps(out["unpruned"]))
    print(f"{name}: unpruned mAP50-95 {out['unpruned']['map']['map50_95']:.4f}", file=sys.stderr)
    data = {"distill": base["distill_data"], "plain": base["plain_data"]}
    if args.train_images:
        data["distill"] = subset_data(base, name, args.train_images, cache)
        if base["labelled"]:
            data["plain"] = data["distill"]
    elif data["distill"] is None:
        data["distill"] = str(base["pool"])
    archs = {"unpruned": model}
    for r in args.base_ratios.get(name, args.ratios):
        cell = cache / name / f"r{r:.2f}"
        cell.mkdir(parents=True, exist_ok=True)
        res_file = cell / "result.json"
        row = json.loads(res_file.read_text()) if res_file.exists() else {"ratio": r, "variants": {}}
        pruned_file = cell / "pruned.safetensors"
        if pruned_file.exists():
            pruned = yolopt.load(pruned_file)
        else:
            t0 = time.perf_counter()
            pruned = prune(model, PruneSpec(ratio=r, method="group", round_to=8, imgsz=imgsz)).model
            row["prune_seconds"] = round(time.perf_counter() - t0, 1)
            yolopt.save(pruned, pruned_file, imgsz=imgsz)
        row.update(params=pruned.num_params(), gflops=round(model_flops(pruned, imgsz), 3))
        row["flops_frac"] = round(row["gflops"] / out["unpruned"]["gflops"], 4)
        if "map_pruned" not in row:
            row["map_pruned"] = evaluate_map(pruned, base["val"], imgsz)
        res_file.write_text(json.dumps(row))
        for v in args.variants:
            recipe = {"data": str(data[v]), "epochs": args.epochs, "warmup_epochs": args.warmup_epochs}
            done = row["variants"].get(v)
            if done and all(done.get(k) == x for k, x in recipe.items()):
                continue
            row["variants"].pop(v, None)
            recipe_file = cell / v / "recipe.json"
            if (cell / v).exists() and (not recipe_file.exists() or json.loads(recipe_file.read_text()) != recipe):
                shutil.rmtree(cell / v)  # fine-tuned with other settings: start again
            (cell / v).mkdir(parents=True, exist_ok=True)
            recipe_file.write_text(json.dumps(recipe))
            print(f"{name} ratio {r:.2f}: fine-tuning ({v}) ...", file=sys.stderr)
            tuned, minutes = finetune(pruned, model, data[v], base, v, cell / v, args)
            row["variants"][v] = {"map": evaluate_map(tuned, base["val"], imgsz), "train_minutes": minutes, **recipe}
            res_file.write_text(json.dumps(row))
        print(f"{name} ratio {r:.2f}: FLOPs x{row['flops_frac']:.2f}, mAP50-95 pruned "
              f"{row['map_pruned']['map50_95']:.4f}, " + ", ".join(
                  f"{v} {row['variants'][v]['map']['map50_95']:.4f}" for v in args.variants), file=sys.stderr)
        archs[f"r{r:.2f}"] = pruned
        out["rows"].append(row)
    lat = latencies(archs, imgsz, args)
    out["unpruned"]["latency"] = lat["unpruned"]
    for row in out["rows"]:
        row["latency"] = lat[f"r{row['ratio']:.2f}"]
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["bases"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        b = result["bases"][name]
        rows = b["rows"]
        x = [r["latency"]["rel_to_unpruned"] for r in rows]
        ax.plot([1.0], [b["unpruned"]["map"]["map50_95"]], "k*", ms=12, label="unpruned")
        ax.plot(x, [r["map_pruned"]["map50_95"] for r in rows], "o:", color="grey", label="pruned, no fine-tune")
        for v, style in (("plain", "s--"), ("distill", "o-")):
            if all(v in r["variants"] for r in rows):
                ax.plot(x, [r["variants"][v]["map"]["map50_95"] for r in rows], style,
                        label=f"fine-tuned {result['settings']['epochs']} ep" + (" + distillation" if v == "distill"
                                                                                 else ""))
        for xi, r in zip(x, rows):
            ax.annotate(f"{r['ratio']:.1f}", (xi, r["map_pruned"]["map50_95"]), textcoords="offset points",
                        xytext=(3, -10), fontsize=7, color="grey")
        ax.set_xlabel("ONNX Runtime FP32 latency / unpruned (batch 1, median of interleaved rounds)")
        ax.set_ylabel("mAP50-95")
        ax.set_title(f"{name} ({b['imgsz']} px)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"yolopt prune sweep ({result['machine'].get('cpu') or 'CPU'})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=os.environ.get("YOLOPT_SHARED", str(ROOT.parent / "shared")))
    ap.add_argument("--bases", default="hardhat,coco")
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5")
    ap.add_argument("--base-ratios", action="append", default=[], metavar="BASE=R1,R2",
                    help="other ratios for one base, e.g. coco=0.1,0.2,0.3 (repeatable)")
    ap.add_argument("--variants", default="distill,plain")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per cell")
    ap.add_argument("--train-images", type=int, default=400, help="fine-tuning images per cell (0 = all)")
    ap.add_argument("--warmup-epochs", type=float, default=0.0,
                    help="fine-tuning warm-up (default 0: none; upstream's 3 means at least 100 iterations of "
                         "bias lr from 0.1, the whole of a short fine-tune)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--cache", default=str(ROOT / "runs" / "prune_sweep"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prune_sweep.json"))
    args = ap.parse_args()
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.base_ratios = {b: [float(r) for r in rs.split(",")] for b, rs in (x.split("=", 1) for x in args.base_ratios)}
    args.variants = [v for v in args.variants.split(",") if v]

    import torch

    from yolopt.fileio import atomic_write, write_json
    from yolopt.machine import machine_info

    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    all_bases = bases(Path(args.shared), cache)
    result = {"benchmark": "prune sweep (group importance, round-to 8)",
              "settings": {k: v for k, v in vars(args).items() if k not in ("shared", "cache", "out")},
              "bases": {}, "machine": machine_info()}
    t0 = time.perf_counter()
    for name in args.bases.split(","):
        result["bases"][name] = sweep_base(name, all_bases[name], args, cache)
    result["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    write_json(args.out, result)
    png = Path(args.out).with_suffix(".png")
    atomic_write(png, lambda tmp: plot(result, Path(tmp)))
    for name, b in result["bases"].items():
        u = b["unpruned"]
        print(f"\n{name} ({b['imgsz']}): unpruned mAP50-95 {u['map']['map50_95']:.4f} mAP50 {u['map']['map50']:.4f}, "
              f"{u['latency']['p50_ms_median']:.1f} ms")
        print("ratio  FLOPs  latency  pruned  " + "  ".join(f"{v:>8s}" for v in args.variants))
        for r in b["rows"]:
            print(f"{r['ratio']:.2f}  x{r['flops_frac']:.2f}  x{r['latency']['rel_to_unpruned']:.3f}  "
                  f"{r['map_pruned']['map50_95']:.4f}  " + "  ".join(
                      f"{r['variants'][v]['map']['map50_95']:8.4f}" for v in args.variants if v in r["variants"]))
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
