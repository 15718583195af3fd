"""The seeds' own method, network slimming, beside `yolopt compress` at the same FLOPs target and epoch budget.

    PYTHONPATH=src python benchmarks/slim_vs_recipe.py runs/compress/hardhat [--sparsity 1e-3] \
        [--sparse-share 0.3] [--out benchmarks/results/slim_vs_recipe_hardhat.json]

Reads the finished compress run (its base model, data, size, FLOPs target, selection split and the total
number of fine-tuning epochs it used), then runs slimming with the same total epochs on the same fine-tuning
images (the run's ``split/train.yaml``, validation on its selection split):

1. ``train --sparsity S`` from the base for ``sparse-share`` of the epochs (BN-L1 sparsity, upstream's recipe);
2. ``prune --method slim --target-flops F`` of the sparse model, then a distilled fine-tune (teacher: the base)
   for the rest of the epochs;

and scores both results on ``val`` (once) with the same evaluator, plus FLOPs and ONNX Runtime latency
(fused FP32, interleaved rounds). Every step resumes after a kill (the same command again). Writes a JSON
with the machine block.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a finished yolopt compress run folder")
    ap.add_argument("--sparsity", type=float, default=1e-3)
    ap.add_argument("--sparse-share", type=float, default=0.3)
    ap.add_argument("--work", help="scratch folder (default <run>/slim)")
    ap.add_argument("--out", default="benchmarks/results/slim_vs_recipe.json")
    ap.add_argument("--seconds-from", help="an earlier output JSON whose step times to keep when the work folder "
                    "has no seconds.json (the steps themselves are finished and skipped)")
    args = ap.parse_args()

    import yolopt
    from yolopt.bench.measure import interleaved
    from yolopt.compress import PruneWorkflowSpec, model_flops, run_prune
    from yolopt.compress.sparsity import BNSparsity
    from yolopt.engine import train
    from yolopt.evaluate import EvalSpec, evaluate
    from yolopt.evaluate.coco import paired_bootstrap
    from yolopt.export import ExportSpec, export
    from yolopt.machine import machine_info

    run = Path(args.run)
    rep = json.loads((run / "report.json").read_text())
    spec, imgsz = rep["spec"], rep["imgsz"]
    epochs = sum(s["epochs"] for s in rep["stages"])
    n_sparse = max(1, round(args.sparse_share * epochs))
    work = Path(args.work) if args.work else run / "slim"
    train_yaml = run / "split" / "train.yaml"
    base_path = spec["model"]
    t0 = time.time()
    times_file = work / "seconds.json"  # each step's wall time, kept when a finished step is skipped on a re-run
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    if not times and args.seconds_from and Path(args.seconds_from).exists():
        times = json.loads(Path(args.seconds_from).read_text()).get("seconds", {})

    sparse_dir = work / "sparse"
    if not (sparse_dir / "best.safetensors").exists() or _unfinished(sparse_dir):
        if (sparse_dir / "last.safetensors").exists():
            train(resume=sparse_dir, callbacks=[BNSparsity(args.sparsity)], workers=2, device="cpu")
        else:
            train(str(train_yaml), weights=base_path, epochs=n_sparse, imgsz=imgsz, batch=16, workers=2,
                  device="cpu", cos_lr=True, close_mosaic=0, out=str(sparse_dir), exist_ok=True,
                  callbacks=[BNSparsity(args.sparsity)], val_every=max(1, n_sparse // 4))
    if "sparse" not in times:
        times["sparse"] = round(time.time() - t0)
        _write(times_file, times)
    t1 = time.time()
    slim_out = work / "slim.safetensors"
    if not slim_out.exists():
        run_prune(PruneWorkflowSpec(model=str(sparse_dir / "last.safetensors"), target_flops=spec["target_flops"],
                                    method="slim", round_to=int(spec.get("round_to") or 8),
                                    fill=bool(spec.get("fill", True)), data=str(train_yaml),
                                    finetune=epochs - n_sparse, distill=True,
                                    teacher=base_path, imgsz=imgsz, latency=False, force=True, out=slim_out,
                                    workers=2, device="cpu", val_every=max(1, (epochs - n_sparse) // 8)))
    if "prune_finetune" not in times:
        times["prune_finetune"] = round(time.time() - t1)
        _write(times_file, times)

    models = {"base": base_path, "recipe": str(run / "final.safetensors"), "slim": str(slim_out)}
    rows, matches = {}, {}
    for name, path in models.items():
        m = yolopt.load(path)
        r = evaluate(m, spec["data"], EvalSpec(imgsz=imgsz, mode="rect", progress=False))
        rows[name] = {"path": path, "gflops": model_flops(m, imgsz), "val_map50_95": r.map50_95,
                      "val_map50": r.map50}
        matches[name] = r.matches
        export(m, ExportSpec(format="onnx", imgsz=imgsz, out=work / "onnx" / f"{name}.onnx", verify=False))
    lat = interleaved({k: work / "onnx" / f"{k}.onnx" for k in models}, imgsz, threads=2, rounds=7, iters=20)
    for k in models:
        rows[k]["ort_ms"] = lat[k]["p50_ms"]
        rows[k]["latency_ratio"] = lat[k]["p50_ms"] / lat["base"]["p50_ms"]
        rows[k]["flops_ratio"] = rows[k]["gflops"] / rows["base"]["gflops"]
    # paired bootstrap over val images (200 resamples): the spread of each difference, not of each mAP
    diffs = {}
    for a, b in (("recipe", "base"), ("slim", "base"), ("recipe", "slim")):
        for metric in ("map50_95", "map50"):
            d = paired_bootstrap(matches[a], matches[b], metric, n=200, seed=0)
            diffs[f"{a}-{b}"] = {**diffs.get(f"{a}-{b}", {}), metric: {
                "diff": rows[a][f"val_{metric}"] - rows[b][f"val_{metric}"], "se": float(d.std())}}
    sp = json.loads((sparse_dir / "sparsity.json").read_text())["history"][-1]
    out = {"run": str(run), "epochs": epochs, "sparse_epochs": n_sparse, "sparsity": args.sparsity,
           "sparse_end": {k: sp[k] for k in ("gamma_median", "safe_prune_ratio", "threshold")},
           "seconds": times, "models": rows, "val_differences": diffs,
           "command": " ".join(sys.argv), "machine": machine_info()}
    _write(Path(args.out), out)
    for k, r in rows.items():
        print(f"{k:7s} {r['flops_ratio']:.3f}x FLOPs  {r['latency_ratio']:.3f}x ORT  val mAP50-95 "
              f"{r['val_map50_95']:.4f}  mAP50 {r['val_map50']:.4f}")
    for k, d in diffs.items():
        print(f"{k:12s} val mAP50-95 {d['map50_95']['diff']:+.4f} (SE {d['map50_95']['se']:.4f})  "
              f"mAP50 {d['map50']['diff']:+.4f} (SE {d['map50']['se']:.4f})")
    return 0


def _write(path: Path, obj) -> None:
    """Write JSON atomically (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _unfinished(run_dir: Path) -> bool:
    from yolopt.engine.checkpoint import read_train_checkpoint

    last = run_dir / "last.safetensors"
    if not last.exists():
        return True
    _, _, st = read_train_checkpoint(last)
    return int(st["epoch"]) + 1 < int(st["config"]["epochs"])


if __name__ == "__main__":
    raise SystemExit(main())
