"""End-to-end pipeline stages on real images, NMS cost vs candidates, and the scaling sweep."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from ..data.images import list_images, read_image
from ..data.letterbox import letterbox, to_tensor
from ..errors import YoloptError
from ..ops.nms import non_max_suppression
from ..detect import scale_to_original

STAGE_KEYS = ("decode", "preprocess", "inference", "nms", "postprocess")
DEPLOY_CONF = 0.25
EVAL_CONF = 0.001
NMS_CONFS = (0.5, 0.25, 0.1, 0.05, 0.01, 0.001)


def default_sources(shared: Path | None = None) -> list[Path]:
    """The bundled sample images (shared/data/images), else a few coco128 images."""
    import os

    roots = [Path(os.environ["YOLOPT_SHARED"])] if os.environ.get("YOLOPT_SHARED") else []
    here = Path(__file__).resolve()
    roots += [shared] if shared else []
    roots += [p / "shared" for p in here.parents[:5]] + [Path.cwd() / "shared", Path.cwd().parent / "shared"]
    for root in roots:
        if root and (root / "data" / "images").is_dir():
            imgs = list_images(root / "data" / "images")
            if imgs:
                return imgs
        coco = root / "data" / "coco128" / "images" / "train2017" if root else None
        if coco and coco.is_dir():
            return list_images(coco)[:4]
    raise YoloptError("no sample images found; pass --source IMAGES")


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1e3


def pipeline_stages(runner, sources, imgsz: int, repeats: int = 5, warmup: int = 1, iou: float = 0.45,
                    max_det: int = 300) -> dict:
    """Median ms per stage per image at conf 0.25 (deployment) and 0.001 (evaluation).

    Each image is run ``warmup + repeats`` times through decode -> letterbox+normalise ->
    inference -> NMS -> box scaling; the inference output is reused for both thresholds and for
    the NMS-vs-candidates curve (NMS at several thresholds, candidates = boxes above conf).
    """
    paths = list_images(sources)
    if not paths:
        raise YoloptError("no images to profile the pipeline on")
    samples = {c: {k: [] for k in STAGE_KEYS} for c in ("deploy", "eval")}
    nms_curve: dict[float, dict] = {c: {"candidates": [], "ms": [], "kept": []} for c in NMS_CONFS}
    detections = {"deploy": [], "eval": []}
    used = []
    for path in paths:
        for r in range(warmup + repeats):
            rec = r >= warmup
            t0 = time.perf_counter()
            im = read_image(path)
            t1 = time.perf_counter()
            if im is None:
                break
            padded, _, _ = letterbox(im, imgsz, auto=False)
            x = to_tensor(padded)[None].numpy()
            t2 = time.perf_counter()
            pred = runner(x).float()
            t3 = time.perf_counter()
            for key, conf in (("deploy", DEPLOY_CONF), ("eval", EVAL_CONF)):
                t4 = time.perf_counter()
                det = non_max_suppression(pred, conf, iou, max_det=max_det)[0]
                t5 = time.perf_counter()
                det = scale_to_original(det.clone(), padded.shape[:2], im.shape[:2])
                t6 = time.perf_counter()
                if rec:
                    s = samples[key]
                    s["decode"].append(_ms(t0, t1))
                    s["preprocess"].append(_ms(t1, t2))
                    s["inference"].append(_ms(t2, t3))
                    s["nms"].append(_ms(t4, t5))
                    s["postprocess"].append(_ms(t5, t6))
                    if r == warmup:
                        detections[key].append(int(det.shape[0]))
            if rec:
                for conf in NMS_CONFS:
                    cand = int((pred[0, :, 4] > conf).sum())
                    ta = time.perf_counter()
                    kept = non_max_suppression(pred, conf, iou, max_det=max_det)[0]
                    tb = time.perf_counter()
                    c = nms_curve[conf]
                    c["candidates"].append(cand)
                    c["ms"].append(_ms(ta, tb))
                    c["kept"].append(int(kept.shape[0]))
        else:
            used.append(str(path))
    if not used:
        raise YoloptError("none of the --source images could be decoded")

    def summarise(s):
        med = {k: statistics.median(v) for k, v in s.items()}
        total = sum(med.values())
        return {"stages_ms": med, "total_ms": total, "shares": {k: v / total for k, v in med.items()}}

    out = {"images": used, "imgsz": imgsz, "repeats": repeats, "backend": getattr(runner, "backend", "?"),
           "deploy": {"conf": DEPLOY_CONF, **summarise(samples["deploy"]), "detections": detections["deploy"]},
           "eval": {"conf": EVAL_CONF, **summarise(samples["eval"]), "detections": detections["eval"]}}
    out["nms_vs_candidates"] = [
        {"conf": c, "candidates": int(statistics.median(v["candidates"])), "kept": int(statistics.median(v["kept"])),
         "nms_ms": statistics.median(v["ms"])} for c, v in nms_curve.items()
    ]
    return out


def scaling_sweep(make_runner, sizes=(320, 416, 512, 640), batches=(1, 2, 4, 8, 16), repeats: int = 3,
                  warmup: int = 1, budget_s: float | None = None) -> list[dict]:
    """Latency (median ms per batch) and throughput (images/s) for each size x batch.

    ``make_runner(batch, imgsz)`` returns a runner for that shape. With ``budget_s``, larger
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
                runner = make_runner(b, s)
                x = np.random.default_rng(0).random((b, 3, s, s), dtype=np.float32)
                ts = []
                for r in range(warmup + repeats):
                    t0 = time.perf_counter()
                    runner(x)
                    if r >= warmup:
                        ts.append(_ms(t0, time.perf_counter()))
            except YoloptError:
                raise
            except Exception as e:  # noqa: BLE001 - e.g. a fixed-shape ONNX model
                rows.append({"imgsz": s, "batch": b, "error": str(e).splitlines()[0][:200]})
                continue
            ms = statistics.median(ts)
            rows.append({"imgsz": s, "batch": b, "latency_ms": ms, "ms_per_image": ms / b,
                         "throughput_ips": b / (ms / 1e3)})
    return rows

