"""yolopt demo: the main job on the bundled defaults (`make demo`)."""

from __future__ import annotations

from pathlib import Path

from ..pipeline.demo import COMPRESS, OPTIMIZE, SHIPPED_BASE, SYNTH, find_shared  # noqa: F401 (tests import them here)
from ._common import console as make_console
from ._options import nonneg_int_arg


def register(sub) -> None:
    p = sub.add_parser("demo", help="predict + val on the shared samples, then `optimize` a model trained on "
                       "yolopt's synthetic set (about 10 min)",
                       description="1) Predict on the sample images and validate on coco128 with the official "
                       "yolov5n.pt from ../shared (or $YOLOPT_SHARED), when present. 2) Optimize, with or without "
                       "../shared: generate yolopt's synthetic set, take the yolov5n yolopt trained on it (shipped; "
                       "--retrain trains it here) and run `yolopt optimize --scenario realtime` on it with a "
                       f"{OPTIMIZE['time_budget']} budget: it prints the recommendation and writes OUT/optimize/"
                       "report.html and OUT/optimize/deploy/. --only compress instead runs `yolopt compress` on the same "
                       "model: half its FLOPs, the lossless recipe's distilled stages, mAP on val and latency against "
                       "the base (OUT/compress/run/report.md, .json, .png).")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--only", choices=["predict", "optimize", "compress"], help="run one part only")
    p.add_argument("--workers", type=nonneg_int_arg, default=2, help="data loading processes while training (default 2)")
    p.add_argument("--time-budget", default=OPTIMIZE["time_budget"],
                   help=f"compute time of the optimize part, e.g. 90s, 15m (default {OPTIMIZE['time_budget']})")
    p.add_argument("--retrain", action="store_true",
                   help="train the synthetic base model (~10 min) instead of using the one shipped with yolopt")
    p.set_defaults(func=run)


def run(args) -> int:
    console = make_console()
    out = Path(args.out)
    if args.only in (None, "predict"):
        _predict_demo(out, console)
    if args.only in (None, "optimize"):
        return optimize_demo(out, console, workers=args.workers, retrain=args.retrain, time_budget=args.time_budget)
    if args.only == "compress":
        compress_demo(out / "compress", console, workers=args.workers, retrain=args.retrain)
    return 0


def _synthetic_base(out: Path, console, workers: int, retrain: bool) -> tuple[Path, Path]:
    """The synthetic data yaml (generated under OUT/synth) and the base model trained on it."""
    from ..pipeline import demo as lib

    if not (out / "synth" / "data.yaml").exists():
        console.rule("synthetic data")
    data, _ = lib.synthetic_data(out)
    base, to_train = lib.base_model(out, retrain)
    if base == SHIPPED_BASE:
        console.print(f"base model: {base.name}, a yolov5n yolopt trained on this synthetic set "
                      f"({lib.BASE_TRAIN['epochs']} epochs at {SYNTH['imgsz']} px; --retrain to train it here)")
    elif to_train:
        console.rule(f"train a yolov5n on the synthetic set ({lib.BASE_TRAIN['epochs']} epochs at {SYNTH['imgsz']} px)")
        lib.train_base(data, out, workers)
    return data, base


def optimize_demo(out: Path, console, workers: int = 2, retrain: bool = False, time_budget: str | None = None) -> int:
    """Synthetic set + its model -> ``yolopt optimize --scenario realtime`` with a short budget -> report."""
    from ..pipeline import OptimizeSpec, optimize, parse_duration
    from .optimize import print_summary

    data, base = _synthetic_base(out / "compress", console, workers, retrain)
    budget = time_budget or OPTIMIZE["time_budget"]
    console.rule(f"yolopt optimize --scenario {OPTIMIZE['scenario']} --time-budget {budget}")
    spec = OptimizeSpec(model=str(base), data=str(data), scenario=OPTIMIZE["scenario"],
                        time_budget_s=parse_duration(budget), finetune_epochs=OPTIMIZE["finetune"],
                        out=str(out / "optimize"))
    res = optimize(spec)
    print_summary(res)
    return 0


def compress_demo(out: Path, console, workers: int = 2, retrain: bool = False):
    """Synthetic set -> base model (shipped, or trained and cached in OUT/base) -> compressed to half the FLOPs
    by the lossless recipe (:func:`yolopt.pipeline.demo.compress_demo`) -> printed summary."""
    from ..pipeline import demo as lib

    data, base = _synthetic_base(out, console, workers, retrain)
    console.rule(f"yolopt compress --target-flops {COMPRESS['target_flops']} --epochs-budget {COMPRESS['epochs_budget']} "
                 f"--round-to {COMPRESS['round_to']}")
    rep = lib.compress_demo(base, data, out, workers)
    f = rep.final
    console.print(f"FLOPs {f.gflops_base:.3f} -> {f.gflops:.3f} G ({f.flops_ratio:.3f}x): val mAP50 "
                  f"{f.val_base.map50:.4f} -> {f.val.map50:.4f} ({f.val.map50 - f.val_base.map50:+.4f}), mAP50-95 "
                  f"{f.val_base.map50_95:.4f} -> {f.val.map50_95:.4f} after {sum(s.epochs for s in rep.stages)} "
                  f"distilled epochs ({', '.join(s.name for s in rep.stages)}; stopped: {rep.stop})")
    for rt, v in f.latency.items():
        console.print(f"{rt} FP32 latency {v['base_ms']:.2f} -> {v['ms']:.2f} ms ({v['ratio']:.3f}x)")
    console.print(f"report: {out / 'run' / 'report.md'}")
    return rep


def _predict_demo(out: Path, console) -> None:
    from ..detect import predict, write_outputs
    from ..evaluate import evaluate
    from ..models.checkpoint import load_model

    shared = find_shared()
    if shared is None:
        console.print("[yellow]yolopt demo: no shared assets found[/] (looked for ../shared/weights/yolov5n.pt; "
                      "set YOLOPT_SHARED=/path/to/shared): skipping predict + val on coco128.")
        return
    weights = shared / "weights" / "yolov5n.pt"
    model = load_model(weights).fuse()
    console.rule(f"predict with {weights.name}")
    results = predict(model, shared / "data" / "images")
    write_outputs(results, out / "predict", out / "predict.json")
    for r in results:
        console.print(f"{Path(r.image).name}: {len(r)} detections "
                      f"({', '.join(sorted({r.names[k] for k in r.cls}))})")
    console.rule("val on coco128")
    res = evaluate(model, shared / "data" / "coco128" / "coco128.yaml")
    from ..fileio import write_json

    write_json(out / "val.json", res.to_dict())
    console.print(f"coco128: mAP50-95 {res.map50_95:.4f}  mAP50 {res.map50:.4f}  "
                  f"(upstream YOLOv5 reference 0.3622 / 0.5632)")
    s = res.speed_ms
    console.print(f"per image: pre-process {s['preprocess']:.1f} ms, inference {s['inference']:.1f} ms, "
                  f"NMS {s['nms']:.1f} ms")
    console.print(f"outputs in {out}/")
