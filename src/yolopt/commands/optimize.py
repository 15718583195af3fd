"""yolopt optimize: try variants within a time budget, measure each end to end, recommend, report, bundle."""

from __future__ import annotations

import sys

from ._options import check_output, fraction_arg, nonneg_int_arg, positive_float_arg, positive_int_arg


def _sizes(text: str) -> list[int]:
    import argparse

    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give sizes like 640,512,416") from None


def register(sub) -> None:
    from ..pipeline import SCENARIOS, TARGET_CHOICES

    p = sub.add_parser(
        "optimize", help="try pruning, INT8, input sizes and pipeline settings; measure each end to end; recommend one",
        description="Measure the model as it is (mAP on the val split, end-to-end latency and throughput on the "
        "target runtime: decode -> letterbox -> model -> NMS at --conf), then try candidates cheapest first within "
        "--time-budget: two pipelines on the cores, rect input for the data's aspect ratio, smaller input sizes, "
        "INT8 (and mixed precision when plain INT8 loses too much), pruning with distilled fine-tuning. Every "
        "variant is measured the same way. The recommendation follows --scenario: realtime = the most images/s "
        "within the mAP budget (default 1 point), accuracy = the smallest drop (default <= 0.2 point) with any "
        "speed-up, edge = 1 thread, the smallest artifact that meets --max-latency-ms. Writes OUT/report.html, "
        "report.md, results.json (Pareto plot, every variant, profile before/after, the machine) and OUT/deploy/ "
        "(the artifact, a standalone infer.py, a Triton model repository). Finished work is cached in OUT: rerunning "
        "the same command (or --resume) after a crash or Ctrl-C continues where it stopped.")
    p.add_argument("model", help="an Ultralytics .pt or a yolopt .safetensors")
    p.add_argument("--data", required=True, help="dataset yaml (val split: mAP and the benchmark images)")
    p.add_argument("--scenario", choices=SCENARIOS, default="realtime", help="what to optimize for (default realtime)")
    p.add_argument("--target", choices=TARGET_CHOICES,
                   help="deployment runtime (default onnxruntime, and INT8 is also tried on OpenVINO when it is "
                        "installed; a --target given pins every variant to that runtime). auto: time the FP32 model "
                        "on every installed CPU runtime first (interleaved) and build the variants on the fastest")
    p.add_argument("--max-latency-ms", type=positive_float_arg, help="end-to-end p50 latency limit per image")
    p.add_argument("--max-map-drop", type=fraction_arg, metavar="D",
                   help="accuracy budget as a fraction (0.01 = 1 mAP point); default: realtime/edge 0.01, accuracy 0.002")
    p.add_argument("--max-size-mb", type=positive_float_arg, help="artifact size limit")
    p.add_argument("--max-memory-mb", type=positive_float_arg,
                   help="peak resident memory limit of the deployed pipeline (runtime session, buffers, decode), "
                        "as the end-to-end benchmark measures it in its own process")
    p.add_argument("--metric", choices=["map50_95", "map50"], default="map50_95",
                   help="the mAP the drop is measured on (default map50_95)")
    p.add_argument("--map-noise", type=float, default=1.0, metavar="K",
                   help="hold each variant to its mAP drop plus K standard errors of that drop (a paired bootstrap "
                        "over the val images: how much of a drop the choice of val images could explain), so a drop "
                        "just under the budget on a small val set is not taken as safe (default 1; 0: the measured "
                        "drop alone)")
    p.add_argument("--threads", type=positive_int_arg, help="CPU threads of the pipeline (default: the cores this process may use; edge: 1)")
    p.add_argument("--imgsz", type=_sizes, default=[],
                   help="input sizes to try, the first is the baseline's (default: the model's size and three smaller, "
                   "640 -> 640,576,512,416; 416 -> 416,384,320,256)")
    p.add_argument("--time-budget", default="1h", help="compute time for the whole search, e.g. 90s, 15m, 1h (default 1h)")
    p.add_argument("--val-images", type=positive_int_arg, help="measure mAP on the first N val images (default all)")
    p.add_argument("--conf", type=float, default=0.25, help="deployment confidence threshold (default 0.25)")
    p.add_argument("--bench-seconds", type=positive_float_arg, default=4.0, metavar="S",
                   help="timed seconds of each end-to-end measurement (default 4)")
    p.add_argument("--finetune", type=positive_int_arg, metavar="EPOCHS",
                   help="fine-tuning epochs of the pruning candidate (default 4)")
    p.add_argument("--unlabeled", nargs="+", default=[], metavar="IMAGES",
                   help="extra images without labels for the distilled fine-tune")
    p.add_argument("--no-prune", action="store_true", help="do not try pruning")
    p.add_argument("--no-quantize", action="store_true", help="do not try INT8")
    p.add_argument("--no-raw-head", action="store_true", help="ONNX Runtime INT8 builds keep the box decode in the "
                   "graph (default: a raw head, decoded outside for the cells above --conf only; export --raw-head)")
    p.add_argument("--qat-epochs", type=nonneg_int_arg, default=2, metavar="EPOCHS",
                   help="where post-training INT8 misses the mAP budget, try INT8 after EPOCHS of quantization-aware "
                        "training with the float model as teacher (default 2; 0: no QAT). Skipped, like pruning, "
                        "when the val images are train images")
    p.add_argument("--out", default="runs/optimize", help="output folder (default runs/optimize)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (rerunning the same command does the same)")
    p.add_argument("--json", action="store_true", help="print results.json instead of the summary")
    p.add_argument("--no-progress", action="store_true", help="no progress messages")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from ..pipeline import OptimizeError, OptimizeSpec, optimize, parse_duration

    check_output(args.out, "--out", folder=True)
    if args.resume and not (Path(args.out) / "state.json").exists():
        raise OptimizeError(f"--resume: {args.out} holds no optimize run to continue")
    spec = OptimizeSpec(model=args.model, data=args.data, scenario=args.scenario,
                        target=args.target or "onnxruntime", pin_target=args.target is not None,
                        max_latency_ms=args.max_latency_ms, max_map_drop=args.max_map_drop, max_size_mb=args.max_size_mb,
                        max_memory_mb=args.max_memory_mb,
                        metric=args.metric, threads=args.threads, imgsz=args.imgsz,
                        time_budget_s=parse_duration(args.time_budget), out=args.out, resume=args.resume, conf=args.conf,
                        val_images=args.val_images, bench_seconds=args.bench_seconds, finetune_epochs=args.finetune, unlabeled=list(args.unlabeled),
                        prune=not args.no_prune, quantize=not args.no_quantize,
                        raw_head=not args.no_raw_head, qat_epochs=args.qat_epochs,
                        progress=not args.no_progress, map_noise=args.map_noise)
    res = optimize(spec)
    if args.json:
        print(json.dumps(res.to_dict(), indent=1, default=str))
    else:
        print_summary(res)
    rec = res.recommendation
    if not rec.met:
        print(f"yolopt optimize: no variant meets the budget ({rec.why}); closest: {rec.closest} "
              f"(see {res.files['md']})", file=sys.stderr)
        return 1
    return 0


def print_summary(res) -> None:
    """The run's table and recommendation (``res``: :class:`~yolopt.pipeline.records.OptimizeResults`)."""
    from ._common import console as make_console

    from rich.table import Table

    con = make_console()
    t = Table(title=f"yolopt optimize: {res.scenario} on {res.target}, {res.threads} thread(s)")
    for c in ("variant", "status", "mAP50-95", "mAP50", "drop ± SE (pt)", "img/s", "speed-up", "p50 ms", "MB"):
        t.add_column(c, justify="left" if c in ("variant", "status") else "right")
    rec = res.recommendation.variant

    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    for r in res.variants:
        name = f"[bold green]{r.name}[/]" if r.name == rec else r.name
        t.add_row(name, r.status if r.status == "done" else f"{r.status}: {r.reason or ''}"[:60],
                  f(r.map50_95, ".4f"), f(r.map50, ".4f"),
                  "—" if r.drop is None else f"{r.drop * 100:+.2f}"
                  + (f" ± {r.drop_se * 100:.2f}" if r.drop_se else ""),
                  f(r.fps, ".1f"), "—" if r.speedup is None else f"{r.speedup:.2f}x",
                  f((r.latency_ms or {}).get("p50"), ".1f"), f(r.size_mb, ".1f"))
    con.print(t)
    con.print(f"[bold]recommendation ({res.scenario}):[/] {res.recommendation.summary}")
    if res.confirm is not None:
        c = res.confirm
        con.print(f"confirmed in interleaved rounds: {c.speedup:.2f}x the baseline's end-to-end throughput"
                  + (f", {c.speedup_vs_pipeline:.2f}x the FP32 model at its best pipeline setting ({c.pipeline})"
                     if c.pipeline else ""))
    con.print(f"report: {(res.files or {}).get('html')}  (also report.md, results.json)")
    if res.deploy:
        con.print(f"deploy bundle: {res.deploy}")
    con.print(f"compute time: {res.time_spent_s / 60:.1f} min of {res.budget.time_budget_s / 60:.0f} min")
