"""yolopt prune: structured channel pruning (+ fine-tuning, distillation), or unstructured for comparison."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..errors import YoloptError
from ._options import (
    check_output,
    imgsz_arg,
    nonneg_int_arg,
    open_fraction_arg,
    positive_float_arg,
    positive_int_arg,
)

log = logging.getLogger("yolopt")

ARTIFACT_SUFFIXES = {".onnx", ".xml", ".bin", ".torchscript", ".engine", ".ts", ".tflite", ".pb", ".mlmodel"}
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
                   "(default 8; 1 = exact ratio)")
    p.add_argument("--ignore", default="", metavar="LAYERS",
                   help="comma-separated layers left untouched: indices (0,9) or module names (model.9.cv2)")
    p.add_argument("--layer-ratio", action="append", default=[], metavar="CONV=R", type=_layer_ratio_arg,
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


def _check_model_path(path: Path) -> None:
    if path.is_dir() or path.suffix.lower() in ARTIFACT_SUFFIXES:
        raise YoloptError(f"{path}: an exported artifact cannot be pruned (its graph is fixed); prune the .pt or "
                          f".safetensors it was exported from, then export the pruned model")


def _map_data(args) -> str | None:
    """The labelled dataset mAP is measured on: --val-data, else --data when it is a yaml."""
    from ..data.dataset import is_image_source

    if args.val_data:
        return args.val_data
    return args.data if args.data and not is_image_source(args.data) else None


def _evaluate(model, args) -> dict | None:
    data = _map_data(args)
    if not data:
        return None
    from ..evaluate import evaluate

    t0 = time.perf_counter()
    r = evaluate(model, data, imgsz=args.imgsz, max_images=args.val_images, progress=False)
    log.info("  mAP50-95 %.4f, mAP50 %.4f (%d images, %.0f s)", r.map50_95, r.map50, r.images, time.perf_counter() - t0)
    return {"map50_95": r.map50_95, "map50": r.map50, "images": r.images, "mode": r.mode}


def _latency(model, args) -> dict | None:
    if args.no_latency:
        return None
    from ..compress.prune import measure_latency

    rec = measure_latency(model, args.imgsz, args.backend, args.threads)
    log.info("  latency p50 %.2f ms (%s, %s threads)", rec["latency_ms"]["p50"], args.backend,
             rec["threads"] or "runtime-default")
    return rec


def _finetune(model, args, epochs: int, out: Path, teacher):
    import yolopt

    from ..engine import train

    callbacks = []
    if args.distill:
        from ..engine.distill import OutputDistillation

        callbacks.append(OutputDistillation(features=args.feature_distill))
    hyp = None
    if args.lr0 is not None:
        from ..engine.trainer import load_hyp

        hyp = {**load_hyp(None), "lr0": args.lr0}
    log.info("fine-tuning %d epoch(s) on %s%s%s -> %s", epochs, args.data,
             f" + {', '.join(args.unlabeled)} (unlabelled)" if args.unlabeled else "",
             " with distillation" if args.distill else "", out)
    res = train(args.data, model=model, epochs=epochs, imgsz=args.imgsz, batch=args.batch, workers=args.workers,
                device=args.device, out=str(out), exist_ok=True, teacher=teacher if args.distill else None,
                callbacks=callbacks, hyp=hyp, progress=not args.no_progress, unlabeled=list(args.unlabeled),
                val_data=args.val_data, val_every=args.val_every)
    tuned = yolopt.load(res.best or res.last)  # the EMA weights
    model.load_state_dict(tuned.state_dict())
    return model.cpu().float().eval()


def run(args) -> int:
    import copy

    import yolopt

    from ..compress.prune import PruneSpec, model_flops
    from ..compress.report import calibration_batch, write_report
    from ..machine import machine_info

    src = Path(args.model)
    _check_model_path(src)
    out = Path(args.out) if args.out else Path("runs/prune") / f"{src.stem}_pruned.safetensors"
    if out.suffix != ".safetensors":
        raise YoloptError(f"--out {out}: the pruned model is written as a yolopt .safetensors file")
    check_output(out, "--out")
    if args.finetune and not args.data:
        raise YoloptError("--finetune needs --data DATA.yaml (the images to fine-tune on)")
    if (args.distill or args.teacher or args.feature_distill) and not args.finetune:
        raise YoloptError("--distill / --teacher apply while fine-tuning: add --finetune EPOCHS --data DATA.yaml")
    if args.unlabeled and not args.finetune:
        raise YoloptError("--unlabeled images are for fine-tuning: add --finetune EPOCHS --distill")
    if args.feature_distill:
        args.distill = True
    if args.teacher:
        args.distill = True
    from ..data.dataset import is_image_source

    if args.data and (args.unlabeled or is_image_source(args.data)) and args.finetune and not args.distill:
        raise YoloptError("images without labels (--data folder / --unlabeled) are learnt from the teacher: add "
                          "--distill")
    if args.method == "magnitude":
        if args.sparsity is None:
            raise YoloptError("--method magnitude needs --sparsity S (fraction of conv weights set to 0)")
    elif args.sparsity is not None:
        raise YoloptError("--sparsity is for --method magnitude; structured pruning takes --ratio / --target-flops / "
                          "--target-latency-ms (BN sparsity training is yolopt train --sparsity)")
    model = yolopt.load(src)
    if model.is_fused:
        raise YoloptError(f"{src}: the model is stored fused (Conv+BN folded); prune the unfused weights")
    t_start = time.perf_counter()
    rep: dict = {"model": str(src), "method": args.method, "imgsz": args.imgsz, "backend": args.backend,
                 "threads": args.threads, "data": args.data, "unlabeled": list(args.unlabeled),
                 "map_data": _map_data(args), "warnings": [], "machine": machine_info()}
    if args.method == "magnitude":
        return _run_unstructured(model, args, out, rep)

    spec = PruneSpec(ratio=args.ratio, target_flops=args.target_flops, target_latency_ms=args.target_latency_ms,
                     method=args.method, global_=args.global_, round_to=args.round_to,
                     ignore=tuple(x for x in args.ignore.split(",") if x.strip()), steps=args.steps, imgsz=args.imgsz,
                     layer_ratios=tuple(args.layer_ratio),
                     backend=args.backend, threads=args.threads).check()
    teacher = None
    if args.distill:
        from ..engine.distill import check_teacher

        teacher = yolopt.load(args.teacher) if args.teacher else copy.deepcopy(model)
        check_teacher(model, teacher)
    if spec.method == "taylor" and not _map_data(args):
        raise YoloptError("--method taylor needs --data DATA.yaml (a labelled calibration batch)")
    calib_src = _map_data(args) if spec.method == "taylor" else (args.data or args.val_data)
    calib = calibration_batch(calib_src, min(args.imgsz, 640)) if calib_src else None

    if spec.ratio is not None:  # before any measurement: a refusal costs nothing
        _check_safe(model, spec.ratio, args, rep, spec)
    log.info("before pruning: %s", src)
    before = {"params": model.num_params(), "gflops": model_flops(model, args.imgsz)}
    log.info("  %s params, %.2f GFLOPs at %d", f"{before['params']:,}", before["gflops"], args.imgsz)
    lat_before = _latency(model, args)
    map_before = _evaluate(model, args)

    from ..compress.prune import (
        ChannelPruner,
        channel_table,
        layer_channels,
        search_ratio_flops,
        search_ratio_latency,
    )

    search: list = []
    if spec.target_flops is not None:
        log.info("searching the ratio for %.0f%% of the FLOPs ...", 100 * spec.target_flops)
        ratio = search_ratio_flops(model, spec, calib, record=search)
    elif spec.target_latency_ms is not None:
        log.info("searching the ratio for %.2f ms on %s (each candidate measured) ...", spec.target_latency_ms,
                 spec.backend)
        ratio = search_ratio_latency(model, spec, calib, record=search)
    else:
        ratio = spec.ratio if spec.ratio is not None else 0.0  # --layer-ratio only
    _check_safe(model, max([ratio, *(r for _, r in spec.layer_ratios)]), args, rep, spec)
    rep["search"] = search

    pruned = copy.deepcopy(model).eval()
    chans0 = layer_channels(model)
    pruner = ChannelPruner(pruned, spec, ratio=ratio, calib=calib)
    recon_images = _reconstruct_images(args) if args.reconstruct else None
    per_step = max(1, args.finetune // spec.steps) if args.finetune else 0
    steps_log = []
    for k in range(spec.steps):
        ref = copy.deepcopy(pruned) if recon_images is not None else None
        prev = {n: v.clone() for n, v in pruner.kept_outputs.items()} if ref is not None else None
        pruner.step()
        row = {"step": k + 1, "params": pruned.num_params()}
        log.info("pruning step %d/%d: %s params", k + 1, spec.steps, f"{row['params']:,}")
        if ref is not None:
            from ..compress.reconstruct import reconstruct

            import torch

            kept = {n: torch.searchsorted(prev.get(n, torch.arange(chans0[n][1])), v)  # relative to ref
                    for n, v in pruner.kept_outputs.items()}
            st = reconstruct(pruned, ref, recon_images, progress=not args.no_progress, kept=kept)
            row["reconstruct"] = {"images": len(recon_images), "seconds": round(st.seconds, 1),
                                  "err_before": st.mean_error("err_before"), "err_after": st.mean_error("err_after")}
            log.info("  reconstructed %d convs on %d images (%.0f s): mean output error %.4f -> %.4f",
                     len(st.layers), len(recon_images), st.seconds, row["reconstruct"]["err_before"],
                     row["reconstruct"]["err_after"])
        row["map"] = _evaluate(pruned, args)
        if per_step:
            epochs = per_step if k < spec.steps - 1 else max(1, args.finetune - per_step * (spec.steps - 1))
            pruned = _finetune(pruned, args, epochs, out.with_name(f"{out.stem}_finetune") / f"step{k + 1}", teacher)
            row["map_finetuned"] = _evaluate(pruned, args)
        steps_log.append(row)
    rep["steps_log"] = steps_log
    after = {"params": pruned.num_params(), "gflops": model_flops(pruned, args.imgsz)}
    lat_after = _latency(pruned, args)
    map_pruned = steps_log[-1]["map"]  # right after the last pruning step, before its fine-tuning
    map_final = steps_log[-1].get("map_finetuned")
    if map_before and map_pruned and map_pruned["map50_95"] < 0.5 * map_before["map50_95"]:
        msg = (f"mAP50-95 fell from {map_before['map50_95']:.4f} to {map_pruned['map50_95']:.4f} right after pruning"
               + ("" if args.finetune else "; fine-tune it (--finetune N --data D, --distill) before using it"))
        log.warning("!" * 20 + " " + msg)
        rep["warnings"].append(msg)

    pruned.provenance = {**(getattr(model, "provenance", None) or {}),
                         "pruned": {"from": str(src), "method": spec.method, "ratio": round(ratio, 4),
                                    "global": spec.global_, "round_to": spec.round_to, "steps": spec.steps,
                                    "finetune_epochs": args.finetune, "distill": bool(args.distill)}}
    yolopt.save(pruned, out, imgsz=args.imgsz)

    def trio(key, b, p_, f):
        return {"before": b, "pruned": p_, "finetuned": f}

    lb = lat_before["latency_ms"]["p50"] if lat_before else None
    la = lat_after["latency_ms"]["p50"] if lat_after else None
    rep["summary"] = {
        "params": trio("params", before["params"], after["params"], after["params"] if args.finetune else None),
        "gflops": trio("gflops", before["gflops"], after["gflops"], after["gflops"] if args.finetune else None),
        "latency_ms": trio("latency", lb, la, la if args.finetune else None),
        "map50_95": trio("map", map_before and map_before["map50_95"], map_pruned and map_pruned["map50_95"],
                         map_final and map_final["map50_95"]),
        "map50": trio("map", map_before and map_before["map50"], map_pruned and map_pruned["map50"],
                      map_final and map_final["map50"]),
    }
    rep["latency"] = {"before": lat_before, "after": lat_after}
    rep["layers"] = channel_table(chans0, layer_channels(pruned))
    rep["out"] = str(out)
    rep["seconds"] = round(time.perf_counter() - t_start, 1)
    write_report(rep, out.with_suffix(".json"), out.with_suffix(".md"))
    _print_summary(rep, out)
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


def _reconstruct_images(args):
    """``args.reconstruct`` letterboxed images (uint8, imgsz square, at most 640) from --data (its train split,
    or the folder) and --unlabeled, spread evenly over the files."""
    import numpy as np

    from ..data.dataset import image_files, is_image_source, load_data_config
    from ..data.images import list_images, read_image
    from ..data.preprocess import preprocess

    files = []
    for src in [args.data, *args.unlabeled]:
        if not src:
            continue
        files += list_images(src) if is_image_source(src) else image_files(load_data_config(src), "train")
    if not files:
        raise YoloptError("--reconstruct needs images: give --data (yaml or folder) or --unlabeled")
    pick = np.linspace(0, len(files) - 1, min(args.reconstruct, len(files))).round().astype(int)
    ims = [im for im in (read_image(files[i]) for i in pick) if im is not None]
    if not ims:
        raise YoloptError(f"--reconstruct: none of the {len(pick)} images picked from {args.data} could be read")
    return preprocess(ims, min(args.imgsz, 640), pixels=True)[0]


def _check_safe(model, ratio: float, args, rep: dict, spec) -> None:
    """Compare the ratio with the model's safe prune ratio: refuse far past it without fine-tuning
    (unless --force), warn loudly otherwise."""
    from ..compress.sparsity import safe_prune_ratio

    safe = safe_prune_ratio(model, args.safe_threshold)
    rep.update(ratio=ratio, safe_prune_ratio=safe, safe_threshold=args.safe_threshold,
               **{"global": spec.global_, "round_to": spec.round_to, "steps": spec.steps, "ignore": list(spec.ignore)})
    if ratio <= max(2 * safe, safe + 0.1) or any("far past" in w for w in rep["warnings"]):
        return
    msg = (f"channel ratio {ratio:.2f} is far past the safe prune ratio {safe:.2f} of this model (fraction of BN "
           f"channels with |gamma| < {args.safe_threshold:g}); expect a large mAP drop before fine-tuning. "
           f"Sparsity-train first (yolopt train --sparsity 1e-4) and/or fine-tune (--finetune N --data D --distill)")
    if not args.finetune and not args.force:
        raise YoloptError(msg.replace("expect a large", "refusing to prune without fine-tuning (a large")
                          .replace("before fine-tuning.", "is expected; --force to do it anyway)."))
    log.warning("!" * 20 + " " + msg)
    rep["warnings"].append(msg)


def _print_summary(rep: dict, out: Path) -> None:
    from rich.table import Table

    from ._common import console

    s = rep["summary"]
    t = Table(title=f"{rep['model']}: {rep['method']} pruning, ratio {rep.get('ratio') or 0:.3f}")
    for col in ("", "before", "after pruning", "after fine-tuning"):
        t.add_column(col, justify="right")

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    for label, key, spec in (("params", "params", ",d"), ("GFLOPs", "gflops", ".3f"),
                             (f"latency p50 ms ({rep['backend']})", "latency_ms", ".2f"),
                             ("mAP50-95", "map50_95", ".4f"), ("mAP50", "map50", ".4f")):
        v = s[key]
        t.add_row(label, f(v["before"], spec), f(v["pruned"], spec), f(v["finetuned"], spec))
    c = console()
    c.print(t)
    c.print(f"saved {out} (report: {out.with_suffix('.json')}, {out.with_suffix('.md')})")


def _run_unstructured(model, args, out: Path, rep: dict) -> int:
    import yolopt

    from ..compress.prune import model_flops
    from ..compress.report import write_report
    from ..compress.unstructured import magnitude_prune

    if args.ratio or args.target_flops or args.target_latency_ms or args.finetune or args.steps > 1:
        raise YoloptError("--method magnitude takes only --sparsity (no --ratio/--target-*/--finetune/--steps)")
    log.info("before pruning: %s", args.model)
    lat_before = _latency(model, args)
    map_before = _evaluate(model, args)
    res = magnitude_prune(model, args.sparsity)
    log.info("zeroed %.1f%% of the conv weights (they stay in dense tensors)", 100 * res.sparsity)
    lat_after = _latency(res.model, args)
    map_after = _evaluate(res.model, args)
    fl = model_flops(model, args.imgsz)
    yolopt.save(res.model, out, imgsz=args.imgsz)
    lb = lat_before["latency_ms"]["p50"] if lat_before else None
    la = lat_after["latency_ms"]["p50"] if lat_after else None
    rep.update(res.to_dict())
    rep["summary"] = {
        "params": {"before": res.params, "pruned": res.model.num_params(), "finetuned": None},
        "gflops": {"before": fl, "pruned": model_flops(res.model, args.imgsz), "finetuned": None},
        "latency_ms": {"before": lb, "pruned": la, "finetuned": None},
        "map50_95": {"before": map_before and map_before["map50_95"], "pruned": map_after and map_after["map50_95"],
                     "finetuned": None},
        "map50": {"before": map_before and map_before["map50"], "pruned": map_after and map_after["map50"],
                  "finetuned": None},
    }
    rep["latency"] = {"before": lat_before, "after": lat_after}
    rep["note"] = ("Unstructured pruning shrinks nothing: the zeros stay in dense tensors, so the parameter count, "
                   "file size and FLOPs are unchanged and dense runtimes (PyTorch, ONNX Runtime, OpenVINO on CPU) "
                   "run it no faster. Use a structured --method for a smaller, faster model.")
    rep["out"] = str(out)
    write_report(rep, out.with_suffix(".json"), out.with_suffix(".md"))
    log.warning(rep["note"])
    _print_summary({**rep, "ratio": args.sparsity}, out)
    return 0
