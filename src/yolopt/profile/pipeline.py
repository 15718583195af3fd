"""End-to-end pipeline stages on real images, NMS cost vs candidates, and the scaling sweep."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

from ..bench import BenchSpec, measure, time_calls
from ..data.images import list_images, read_image, sample_images
from ..data.preprocess import preprocess
from ..errors import YoloptError
from ..ops.nms import PREDICT_NMS, NMSOptions
from ..ops.postprocess import select

DEPLOY_CONF = 0.25
EVAL_CONF = 0.001
NMS_CONFS = (0.5, 0.25, 0.1, 0.05, 0.01, 0.001)


def default_sources(shared: Path | None = None) -> list[Path]:
    """The bundled sample images (shared/data/images), else a few coco128 images."""
    imgs = sample_images(shared)
    if not imgs:
        raise YoloptError("no sample images found: give source images", fields=("source",))
    return imgs


def pipeline_stages(backend, sources, imgsz: int, repeats: int = 5, warmup: int = 1,
                    nms: NMSOptions = PREDICT_NMS) -> dict:
    """Median ms per stage per image at conf 0.25 (deployment) and 0.001 (evaluation).

    ``nms``: IoU, max_det, classes and agnostic of every NMS here (its ``conf`` is replaced by those).
    Both come from :func:`yolopt.bench.measure` end to end (decode -> letterbox -> inference -> NMS
    -> box scaling, batch 1, each image ``warmup + repeats`` times). The NMS-vs-candidates curve
    times NMS alone at several thresholds on each image's inference output.
    """
    paths = [p for p in list_images(sources) if read_image(p) is not None]
    if not paths:
        raise YoloptError("none of the source images could be decoded", fields=("source",))
    n = len(paths)
    out = {"images": [str(p) for p in paths], "imgsz": imgsz, "repeats": repeats, "backend": backend.name,
           "precision": backend.precision}
    for key, conf in (("deploy", DEPLOY_CONF), ("eval", EVAL_CONF)):
        rec = measure(backend, imgsz, BenchSpec(warmup=warmup * n, iters=repeats * n, source=paths, conf=conf,
                                                iou=nms.iou))
        med = rec.stages_ms
        total = sum(med.values())
        out[key] = {"conf": conf, "stages_ms": med, "total_ms": total,
                    "shares": {k: v / total for k, v in med.items()},
                    "detections": rec.extra.get("detections_per_image", [])}
    curve: dict[float, dict] = {c: {"candidates": [], "ms": [], "kept": []} for c in NMS_CONFS}
    for path in paths:
        x, _ = preprocess([read_image(path)], imgsz, mode="square")
        pred = backend(x).float()
        for conf in NMS_CONFS:
            at = replace(nms, conf=conf)
            ms = time_calls(lambda o=at: select(pred, o), warmup=0, iters=repeats)
            c = curve[conf]
            c["candidates"].append(int((pred[0, :, 4] > conf).sum()))
            c["ms"].append(statistics.median(ms))
            c["kept"].append(len(select(pred, at)[0]))
    out["nms_vs_candidates"] = [
        {"conf": c, "candidates": int(statistics.median(v["candidates"])), "kept": int(statistics.median(v["kept"])),
         "nms_ms": statistics.median(v["ms"])} for c, v in curve.items()
    ]
    return out


def scaling_sweep(make_backend, sizes=(320, 416, 512, 640), batches=(1, 2, 4, 8, 16), repeats: int = 3,
                  warmup: int = 1, budget_s: float | None = None) -> list[dict]:
    """Latency (median ms per batch) and throughput (images/s) for each size x batch, via ``bench.measure``.

    ``make_backend(batch, imgsz)`` returns a runtime backend for that shape. With ``budget_s``, larger
    configurations are skipped (recorded with ``skipped: true``) once the budget is spent.
    """
    rows = []
    start = time.perf_counter()
    for s in sizes:
        for b in batches:
            if budget_s is not None and time.perf_counter() - start > budget_s:
                rows.append({"imgsz": s, "batch": b, "skipped": True})
                continue
            try:
                ms = measure(make_backend(b, s), s, BenchSpec(batch=b, warmup=warmup, iters=repeats)).latency_ms["p50"]
            except Exception as e:  # noqa: BLE001 - e.g. a fixed-shape model refuses another size
                rows.append({"imgsz": s, "batch": b, "error": str(e).splitlines()[0][:200]})
                continue
            rows.append({"imgsz": s, "batch": b, "latency_ms": ms, "ms_per_image": ms / b,
                         "throughput_ips": b / (ms / 1e3)})
    return rows
