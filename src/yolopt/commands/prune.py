"""yolopt prune: structured channel pruning (+ fine-tuning, distillation), or unstructured for comparison."""

from __future__ import annotations

from ._common import add_match_classes_arg
from ._options import check_output, imgsz_arg, nonneg_int_arg, open_fraction_arg, positive_float_arg, positive_int_arg

STRUCTURED = ["slim", "l1", "lamp", "taylor", "group"]


def register(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="prune channels (physically: smaller, faster), fine-tune / distil, report before and after",
        description="Structured pruning on Torch-Pruning's dependency graph: residual adds, Concat, C3/SPPF and the "
        "Detect inputs stay consistent, Detect outputs are never pruned, channel counts are rounded (--round-to). "
        "Prints and reports params, FLOPs, measured latency and mAP (with --data) before pruning, after pruning "
        "and after fine-tuning; saves a yolopt .safetensors that loads, validates, profiles and exports like any "
        "model. --method magnitude is unstructured pruning, kept for comparison: it shrinks nothing.",
    )
    p.add_argument("model", help="weights to prune: an Ultralytics .pt or a yolopt .safetensors (not an export)")
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--ratio", type=open_fraction_arg, help="fraction of channels removed per group, in (0, 1)")
    tgt.add_argument("--target-flops", type=open_fraction_arg, metavar="F",
                     help="keep this fraction of the FLOPs (0.5 = half); the ratio is searched")
    tgt.add_argument("--target-latency-ms", type=positive_float_arg, metavar="MS",
                     help="reach this p50 latency on --backend at --imgsz (batch 1), measured with bench.measure")
    p.add_argument("--method", choices=[*STRUCTURED, "magnitude"], default="group",
                   help="channel importance: slim (BN |gamma|, after yolopt train --sparsity), l1 (filter L1), lamp, "
                        "taylor (needs --data), group (group L2, default); magnitude = unstructured (--sparsity)")
    p.add_argument("--sparsity", type=open_fraction_arg, help="--method magnitude: fraction of conv weights set to 0")
    p.add_argument("--global", dest="global_", action="store_true", help="rank channels over the whole model")
    p.add_argument("--round-to", type=positive_int_arg, default=8, help="channel counts kept are multiples of this "
                   "(default 8; 1 = exact ratio). For AVX-512 CPUs give 16: ONNX Runtime's fast NCHWc convs need multiples of 16 "
                   "there (of 8 on AVX2)")
    p.add_argument("--ignore", default="", metavar="LAYERS",
                   help="comma-separated layers left untouched: indices (0,9) or module names (model.9.cv2)")
    p.add_argument("--layer-ratio", dest="layer_ratios", action="append", default=[], metavar="CONV=R",
                   type=_layer_ratio_arg,
                   help="prune the channel group of this conv at its own ratio R (repeatable), e.g. "
                        "model.6.m.0.cv1.conv=0.5; without --ratio / --target-* only these groups are pruned. "
                        "benchmarks/prune_sensitivity.py ranks the groups by what they cost per FLOP saved")
    p.add_argument("--steps", type=positive_int_arg, default=1,
                   help="iterative schedule: reach the ratio in N steps, fine-tuning --finetune/N epochs after each")
    p.add_argument("--data", help="dataset yaml (mAP before/after, calibration images, fine-tuning), or a folder of "
                   "images without labels to fine-tune on by distillation (mAP then needs --val-data)")
    p.add_argument("--unlabeled", action="append", default=[], metavar="IMAGES",
                   help="extra images without labels (folder or glob; repeatable) for fine-tuning with --distill: "
                        "the teacher supplies their targets")
    p.add_argument("--val-data", metavar="DATA.yaml", help="measure mAP on this dataset's val split instead of --data")
    p.add_argument("--val-every", type=positive_int_arg, default=1,
                   help="validate every N fine-tuning epochs (and always the last; default 1)")
    p.add_argument("--reconstruct", type=nonneg_int_arg, nargs="?", const=32, default=0, metavar="N",
                   help="after each pruning step, refit every conv by least squares so that it reproduces the "
                        "unpruned model's output on N images of --data / --unlabeled (no labels needed; default "
                        "N 32): a much better start for fine-tuning than plain removal")
    p.add_argument("--finetune", type=nonneg_int_arg, default=0, metavar="EPOCHS", help="fine-tune for EPOCHS on --data")
    p.add_argument("--distill", action="store_true", help="fine-tune with output distillation from the teacher")
    p.add_argument("--teacher", help="teacher weights for --distill (default: the unpruned model)")
    p.add_argument("--feature-distill", action="store_true", help="also imitate the teacher's neck features (1x1 adapters)")
    p.add_argument("--backend", choices=["onnxruntime", "openvino", "torch"], default="onnxruntime",
                   help="where latency is measured (default onnxruntime)")
    p.add_argument("--imgsz", type=imgsz_arg, default=640, help="size for FLOPs, latency, mAP, fine-tuning (default 640)")
    p.add_argument("--threads", type=positive_int_arg, help="threads for the latency measurement")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurements")
    p.add_argument("--val-images", type=positive_int_arg, help="evaluate mAP on the first N val images only")
    add_match_classes_arg(p)
    p.add_argument("--batch", type=positive_int_arg, default=16, help="fine-tuning batch (default 16)")
    p.add_argument("--workers", type=nonneg_int_arg, default=2, help="fine-tuning data workers (default 2)")
    p.add_argument("--device", default="auto", help="fine-tuning device (default auto)")
    p.add_argument("--lr0", type=float, help="fine-tuning learning rate (default: the hyp value)")
    p.add_argument("--safe-threshold", type=float, default=0.01,
                   help="|gamma| under which a BN channel counts as safe to prune (default 0.01)")
    p.add_argument("--force", action="store_true",
                   help="prune far past the safe ratio without fine-tuning (refused otherwise)")
    p.add_argument("--out", help="pruned model (.safetensors); the report goes next to it as .json and .md "
                   "(default runs/prune/<name>_pruned.safetensors)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars while fine-tuning")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..compress.workflow import PruneWorkflowSpec, run_prune

    spec = PruneWorkflowSpec(
        model=args.model, ratio=args.ratio, target_flops=args.target_flops, target_latency_ms=args.target_latency_ms,
        method=args.method, sparsity=args.sparsity, global_=args.global_, round_to=args.round_to,
        ignore=tuple(x for x in args.ignore.split(",") if x.strip()), layer_ratios=tuple(args.layer_ratios),
        steps=args.steps, data=args.data, unlabeled=tuple(args.unlabeled), val_data=args.val_data,
        val_every=args.val_every, reconstruct=args.reconstruct, finetune=args.finetune, distill=args.distill,
        teacher=args.teacher, feature_distill=args.feature_distill, backend=args.backend, imgsz=args.imgsz,
        threads=args.threads, latency=not args.no_latency, val_images=args.val_images, match_classes=args.match_classes, batch=args.batch,
        workers=args.workers, device=args.device, lr0=args.lr0, safe_threshold=args.safe_threshold, force=args.force,
        out=args.out, progress=not args.no_progress)
    spec.check()
    check_output(spec.out_path(), "--out")
    rep = run_prune(spec)
    _print_summary(rep, spec)
    return 0


def _layer_ratio_arg(text: str) -> tuple[str, float]:
    import argparse

    name, sep, r = text.rpartition("=")
    try:
        value = float(r)
    except ValueError:
        value = None
    if not sep or not name.strip() or value is None or not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected CONV=R with R in (0, 1), e.g. model.6.m.0.cv1.conv=0.5")
    return name.strip(), value


def _print_summary(rep, spec) -> None:
    from rich.table import Table

    from ._common import console

    out = spec.out_path()
    ratio = (rep.ratio or 0) if rep.structured else spec.sparsity
    t = Table(title=f"{rep.model}: {rep.method} pruning, ratio {ratio:.3f}")
    for col in ("", "before", "after pruning", "after fine-tuning"):
        t.add_column(col, justify="right")

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for label, key, fmt in (("params", "params", ",d"), ("GFLOPs", "gflops", ".3f"),
                            (f"latency p50 ms ({rep.backend})", "latency_ms", ".2f"),
                            ("mAP50-95", "map50_95", ".4f"), ("mAP50", "map50", ".4f")):
        v = getattr(rep.summary, key)
        t.add_row(label, f(v.before, fmt), f(v.pruned, fmt), f(v.finetuned, fmt))
    c = console()
    c.print(t)
    c.print(f"saved {out} (report: {out.with_suffix('.json')}, {out.with_suffix('.md')})")
