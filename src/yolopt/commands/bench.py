"""yolopt bench: latency, FPS and multi-stream throughput of any model file."""

from __future__ import annotations

import logging

from ..errors import YoloptError
from ..fileio import write_json
from ._common import add_precision_arg
from ._options import check_output, imgsz_arg, nonneg_int_arg, positive_int_arg

log = logging.getLogger("yolopt")


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure latency (p50/p90/p99), FPS and parallel throughput",
        description="Benchmark a .pt/.safetensors/.onnx/.xml/.torchscript/.engine model: model-only on a fixed "
        "random input, or --end2end on real images (decode + letterbox + inference + NMS). Reports latency "
        "percentiles, FPS, throughput with N parallel streams (end to end: one process per stream, as a deploy "
        "bundle's workers; model-only: sessions in threads), peak RSS and size.",
    )
    p.add_argument("weights", help="model file")
    p.add_argument("--imgsz", type=imgsz_arg, default=640, help="input size (default 640; fixed artifacts use their own)")
    p.add_argument("--batch", default="1", help="batch size(s), comma separated, e.g. 1,8 (default 1)")
    p.add_argument("--threads", type=positive_int_arg, help="intra-op threads per session (default: the runtime's choice)")
    p.add_argument("--streams", type=positive_int_arg, default=1, help="parallel streams for the throughput figure (default 1)")
    p.add_argument("--warmup", type=nonneg_int_arg, default=10, help="warm-up calls (default 10)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iters", type=positive_int_arg, default=100, help="timed calls (default 100)")
    g.add_argument("--duration", type=float, help="time for this many seconds instead of --iters")
    p.add_argument("--end2end", action="store_true", help="include decode + letterbox + NMS on --source images or video")
    p.add_argument("--source", nargs="+", help="images or videos for --end2end (files, folders, globs; a video is "
                   "decoded frame by frame, decode time included, for a real frame rate); implies --end2end")
    p.add_argument("--no-fuse", action="store_true", help="PyTorch weights: keep BatchNorm (eager, unfused)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda:0 / 0 for PyTorch weights")
    add_precision_arg(p)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (a list when several batches)")
    p.set_defaults(func=run)


def _batches(spec: str) -> list[int]:
    try:
        out = [int(v) for v in str(spec).split(",") if v.strip()]
    except ValueError:
        raise YoloptError(f"--batch {spec}: expected integers separated by commas, e.g. 1,8") from None
    if not out or min(out) < 1:
        raise YoloptError(f"--batch {spec}: batch sizes must be >= 1")
    return out


def run(args) -> int:
    from rich.table import Table

    from ..bench import BenchSpec, measure
    from ..machine import describe
    from ..runtime import open as open_backend
    from ..runtime import torch_threads
    from ._common import console

    check_output(args.json, "--json")
    batches = _batches(args.batch)
    if args.end2end and not args.source:
        raise YoloptError("--end2end needs --source IMAGES or --source VIDEO")
    if args.source:
        from ..data.sources import FrameCycle

        FrameCycle(args.source).close()  # a missing file, a video that cannot be decoded: one line, before any work
        args.end2end = True
    if args.streams < 1:
        raise YoloptError(f"--streams {args.streams}: must be >= 1")
    model = open_backend(args.weights, device=args.device, threads=args.threads, precision=args.precision,
                         fuse=not args.no_fuse)
    imgsz = model.resolve_imgsz(args.imgsz)
    if model.batch is not None and any(b != model.batch for b in batches):
        log.warning("%s has a fixed batch of %d; other batch sizes run as chunks of %d", args.weights, model.batch,
                    model.batch)
    records = []
    with torch_threads(args.threads):  # --end2end pre/post-processing runs in torch too
        for b in batches:
            spec = BenchSpec(batch=b, warmup=args.warmup, iters=None if args.duration else args.iters,
                             duration=args.duration, streams=args.streams, source=args.source if args.end2end else None)
            records.append(measure(model, imgsz, spec, model_name=args.weights))
    t = Table(title=f"{args.weights} ({model.name}, {model.precision}) {'end-to-end' if args.end2end else 'model only'}"
              f" on {describe()}")
    for col in ("batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "FPS", f"thru x{args.streams} FPS", "peak RSS MB",
                "size MB"):
        t.add_column(col, justify="right")
    for r in records:
        L = r.latency_ms
        t.add_row(str(r.batch), f"{L['p50']:.2f}", f"{L['p90']:.2f}", f"{L['p99']:.2f}", f"{L['mean']:.2f}",
                  f"{r.fps:.1f}", f"{r.throughput_fps:.1f}", f"{r.peak_rss_mb:.0f}", f"{r.size_mb:.2f}")
    console().print(t)
    for v in (records[0].extra.get("videos", []) if args.end2end else []):
        src = f"{v['fps']:g} fps" if v["fps"] else "unknown fps"
        n = f"{v['frames']} frames" if v["frames"] else "frames"
        for r in records:
            rt = f" = {r.fps / v['fps']:.2f}x real time" if v["fps"] else ""
            log.info("%s: %s %dx%d at %s; end to end (decode included) %.1f FPS at batch %d%s", v["source"], n,
                     v["width"], v["height"], src, r.fps, r.batch, rt)
    if args.json:
        payload = [r.to_dict() for r in records]
        write_json(args.json, payload[0] if len(payload) == 1 else payload)
    return 0
