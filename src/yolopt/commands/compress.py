"""yolopt compress: the lossless recipe in one command (prune, distilled fine-tuning in stages, widening)."""

from __future__ import annotations

from ._options import imgsz_arg, nonneg_int_arg, open_fraction_arg, positive_int_arg


def register(sub) -> None:
    p = sub.add_parser(
        "compress",
        help="prune to a FLOPs target and fine-tune it back to the base's accuracy (one command, resumable)",
        description="Prune MODEL to --target-flops (group importance, channel counts rounded to --round-to), then fine-tune it with "
        "distillation from MODEL in stages: recover (cosine lr from 0.01, mosaic to the end), widen (the output "
        "levels that lost the most AP50 get channels back, within the target) and polish (lower lr, stronger scale "
        "augmentation) while the score still rises and the budget lasts. Every choice is made on a selection "
        "split carved from train (--select-fraction); val is scored once, at the end, against the base with its "
        "paired-bootstrap SE. The run is one folder (--out): run the same command again after a kill and it "
        "continues from the last finished epoch. Writes final.safetensors and report.json/.md/.png there.",
    )
    p.add_argument("model", help="the base model: an Ultralytics .pt or a yolopt .safetensors (not an export)")
    p.add_argument("--data", required=True, help="dataset yaml with train and val splits")
    p.add_argument("--target-flops", type=open_fraction_arg, default=0.5, metavar="F",
                   help="keep at most this fraction of the base's FLOPs (default 0.5)")
    p.add_argument("--max-map-drop", type=float, default=0.01, metavar="D",
                   help="the accuracy the result may lose against the base on the selection split (default 0.01)")
    p.add_argument("--metric", choices=["map50", "map50_95", "both"], default="both",
                   help="which mAP the drop limit applies to (default both)")
    p.add_argument("--epochs-budget", type=positive_int_arg, metavar="N", help="fine-tuning epochs in all")
    p.add_argument("--time-budget", metavar="T", help="compute time for the whole run, e.g. 90m, 3h (default 3h "
                   "when no --epochs-budget); the epochs are planned from a timing probe when the run starts")
    p.add_argument("--unlabeled", action="append", default=[], metavar="IMAGES",
                   help="extra images without labels (folder or glob; repeatable): the base supplies their targets")
    p.add_argument("--select-fraction", type=open_fraction_arg, default=0.1, metavar="F",
                   help="fraction of train carved into the selection split (default 0.1; stratified by class)")
    p.add_argument("--select-on", choices=["split", "val"], default="split",
                   help="choose on the selection split (default) or on val (the report then warns: biased)")
    p.add_argument("--imgsz", type=imgsz_arg, help="training and evaluation size (default: the model's own, else 640)")
    p.add_argument("--round-to", type=positive_int_arg, default=16, metavar="N",
                   help="channel counts kept are multiples of N (default 16: ONNX Runtime's fast NCHWc convolutions "
                        "need multiples of 16 on AVX-512 CPUs and of 8 on AVX2 ones; at 8 a pruned model gains far "
                        "less latency than FLOPs on AVX-512)")
    p.add_argument("--no-fill", action="store_true",
                   help="prune at the uniform ratio that meets --target-flops, even when rounding lands it well "
                        "under the target (default: one more group is pruned a step further instead, so the model "
                        "keeps just under the target's FLOPs)")
    p.add_argument("--no-widen", action="store_true", help="never give channels back to a level")
    p.add_argument("--max-latency-ratio", type=open_fraction_arg, metavar="R",
                   help="widen only as far as the ONNX Runtime FP32 latency (batch 1, measured) stays under R x the "
                        "base's (default: the FLOPs target alone decides)")
    p.add_argument("--batch", type=positive_int_arg, default=16, help="fine-tuning batch (default 16)")
    p.add_argument("--workers", type=nonneg_int_arg, default=2, help="data workers (default 2)")
    p.add_argument("--device", default="cpu", help="fine-tuning device (default cpu)")
    p.add_argument("--threads", type=positive_int_arg, help="threads for the final latency measurement (default 2)")
    p.add_argument("--no-latency", action="store_true", help="skip the final latency measurement")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training (default 0)")
    p.add_argument("--out", help="run folder (default runs/compress/<model name>)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..compress.recipe import CompressSpec, run_compress
    from ..pipeline.spec import parse_duration

    spec = CompressSpec(
        model=args.model, data=args.data, target_flops=args.target_flops, max_map_drop=args.max_map_drop,
        metric=args.metric, epochs_budget=args.epochs_budget,
        time_budget_s=parse_duration(args.time_budget) if args.time_budget else None,
        unlabeled=tuple(args.unlabeled), select_fraction=args.select_fraction, select_on=args.select_on,
        imgsz=args.imgsz, batch=args.batch, workers=args.workers, device=args.device, round_to=args.round_to, fill=not args.no_fill,
        widen=not args.no_widen,
        seed=args.seed, threads=args.threads, max_latency_ratio=args.max_latency_ratio, latency=not args.no_latency, out=args.out,
        progress=not args.no_progress)
    rep = run_compress(spec)
    if args.json:
        import json

        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    _print(rep, spec)
    return 0


def _print(rep, spec) -> None:
    from rich.table import Table

    from ._common import console

    fin = rep.final
    t = Table(title=f"{rep.spec['model']} compressed: stopped ({rep.stop}), {rep.seconds / 60:.0f} min")
    for col in ("", "base", "compressed", "difference"):
        t.add_column(col, justify="right")
    t.add_row("GFLOPs", f"{fin.gflops_base:.3f}", f"{fin.gflops:.3f}", f"{fin.flops_ratio:.3f}x")
    for name, b, r in (("selection", fin.select_base, fin.select), ("val", fin.val_base, fin.val)):
        for m, label in (("map50_95", "mAP50-95"), ("map50", "mAP50")):
            se = fin.val_diff_se.get(m) if name == "val" else None
            d = getattr(r, m) - getattr(b, m)
            t.add_row(f"{name} {label}", f"{getattr(b, m):.4f}", f"{getattr(r, m):.4f}",
                      f"{d:+.4f}" + (f" (SE {se:.4f})" if se is not None else ""))
    for rt, v in fin.latency.items():
        t.add_row(f"{rt} latency ms", f"{v['base_ms']:.2f}", f"{v['ms']:.2f}", f"{v['ratio']:.3f}x")
    c = console()
    c.print(t)
    for w in rep.warnings:
        c.print(f"[yellow]warning:[/yellow] {w}")
    folder = spec.folder()
    c.print(f"saved {rep.out} (report: {folder / 'report.md'}, .json, .png)")
