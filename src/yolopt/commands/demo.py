"""yolopt demo: the main job on the bundled defaults (`make demo`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..detect import predict, write_outputs
from ..evaluate import evaluate
from ..models.checkpoint import load_model
from ._common import console as make_console

log = logging.getLogger("yolopt")


def find_shared() -> Path | None:
    """The shared assets folder: $YOLOPT_SHARED, else ../shared next to the project or cwd."""
    env = os.environ.get("YOLOPT_SHARED")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [Path.cwd() / ".." / "shared", here.parents[3] / ".." / "shared"]
    for c in candidates:
        if (c / "weights" / "yolov5n.pt").is_file():
            return c.resolve()
    return None


# The compression demo: a model yolopt trains on its own synthetic set, pruned to half its FLOPs and
# fine-tuned with distillation. Small enough to run in minutes on 2 CPU cores (and as a test).
SYNTH = {"images": 400, "classes": 2, "imgsz": 128, "seed": 0}
BASE_TRAIN = {"cfg": "yolov5n", "epochs": 30, "imgsz": 128, "batch": 16, "nbs": 16, "optimizer": "AdamW",
              "hyp": {"lr0": 0.002}, "close_mosaic": 5, "val_every": 30, "seed": 0}
PRUNE = ["--target-flops", "0.5", "--finetune", "6", "--distill", "--lr0", "0.0005", "--imgsz", "128"]


def register(sub) -> None:
    p = sub.add_parser("demo", help="predict + val on the shared samples, then prune a model to half its FLOPs",
                       description="1) Predict on the sample images and validate on coco128 with the official "
                       "yolov5n.pt from ../shared (or $YOLOPT_SHARED), when present. 2) Compression, with or without "
                       "../shared: generate yolopt's synthetic set, train a yolov5n on it (cached), prune it to half "
                       "its FLOPs, fine-tune with distillation, and report mAP, FLOPs and latency before and after "
                       "(OUT/compress/report.json).")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--only", choices=["predict", "compress"], help="run one part only")
    p.add_argument("--workers", type=int, default=2, help="data loading processes while training (default 2)")
    p.set_defaults(func=run)


def run(args) -> int:
    console = make_console()
    out = Path(args.out)
    if args.only != "compress":
        _predict_demo(out, console)
    if args.only != "predict":
        compress_demo(out / "compress", console, workers=args.workers)
    return 0


def compress_demo(out: Path, console, workers: int = 2) -> dict:
    """Synthetic set -> trained base (cached in OUT/base) -> ``yolopt prune`` to half the FLOPs with
    a distilled fine-tune -> OUT/report.json (the prune report) and a printed summary."""
    import argparse
    import shutil

    from ..data.synth import generate
    from ..engine import train
    from . import prune as prune_cmd

    data = out / "synth" / "data.yaml"
    if not data.exists():
        console.rule("synthetic data")
        generate(out / "synth", **SYNTH)
    base = out / "base" / "best.safetensors"
    if not base.exists():
        console.rule(f"train a yolov5n on the synthetic set ({BASE_TRAIN['epochs']} epochs at {SYNTH['imgsz']} px)")
        shutil.rmtree(out / "base", ignore_errors=True)  # an unfinished earlier demo run
        train(data, out=str(out / "base"), workers=workers, device="cpu", progress=True, **BASE_TRAIN)
    console.rule("prune to half the FLOPs, fine-tune with distillation")
    pruned = out / "pruned.safetensors"
    for f in (pruned, pruned.with_suffix(".json"), pruned.with_suffix(".md")):
        f.unlink(missing_ok=True)  # the demo's own earlier result
    shutil.rmtree(out / "pruned_finetune", ignore_errors=True)
    ap = argparse.ArgumentParser(prog="yolopt")
    prune_cmd.register(ap.add_subparsers())
    pargs = ap.parse_args(["prune", str(base), "--data", str(data), *PRUNE, "--out", str(pruned),
                           "--workers", str(workers), "--device", "cpu"])
    pargs.func(pargs)
    import json

    rep = json.loads(pruned.with_suffix(".json").read_text())
    s = rep["summary"]
    drop = s["map50"]["before"] - s["map50"]["finetuned"]
    console.print(f"FLOPs {s['gflops']['before']:.3f} -> {s['gflops']['finetuned']:.3f} G: mAP50 "
                  f"{s['map50']['before']:.4f} -> {s['map50']['finetuned']:.4f} ({-drop:+.4f}) after "
                  f"{PRUNE[PRUNE.index('--finetune') + 1]} fine-tuning epochs with distillation")
    return rep


def _predict_demo(out: Path, console) -> None:
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
