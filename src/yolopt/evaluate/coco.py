"""COCO mAP (pycocotools), its per-image matches for a paired bootstrap, and precision / recall at the
best-F1 confidence."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np


@dataclass
class ImageMatches:
    """What pycocotools matched, image by image (area "all", at most 100 detections per image and class):
    enough to recompute the mAP of any re-weighting of the images (:func:`bootstrap_map`).

    ``det_*``: one row per detection, in pycocotools' order (class, then image, then score descending);
    ``det_tp`` / ``det_ign``: [N, 10] bool per IoU threshold 0.50:0.05:0.95 (matched / matched an ignored
    label). ``gt_*``: one row per label. ``*_img`` index ``image_ids`` (sorted COCO image ids).
    """

    image_ids: np.ndarray
    det_img: np.ndarray
    det_cls: np.ndarray
    det_score: np.ndarray
    det_tp: np.ndarray
    det_ign: np.ndarray
    gt_img: np.ndarray
    gt_cls: np.ndarray
    gt_ign: np.ndarray

    def save(self, path) -> None:
        """Write as ``.npz`` (atomically, :func:`yolopt.fileio.atomic_write`)."""
        from ..fileio import atomic_write

        def write(tmp):
            with open(tmp, "wb") as f:  # a file object: savez would append ".npz" to a bare name
                np.savez_compressed(f, **{k: getattr(self, k) for k in self.__dataclass_fields__})

        atomic_write(path, write)

    @classmethod
    def load(cls, path) -> "ImageMatches":
        with np.load(path) as z:
            return cls(**{k: z[k] for k in cls.__dataclass_fields__})


@dataclass
class CocoResult:
    map50_95: float
    map50: float
    per_class_ap: dict[int, tuple[float, float]]  # class -> (AP50-95, AP50), classes with labels only
    matches: ImageMatches | None = None  # per-image matches, with coco_map(..., keep_matches=True)


def coco_map(gt_images: list[dict], gt_boxes: list[dict], detections: list[dict], nc: int,
             keep_matches: bool = False) -> CocoResult:
    """COCO bbox mAP with pycocotools.

    ``gt_images``: ``{"id", "width", "height"}``; ``gt_boxes``: ``{"image_id", "category_id",
    "bbox": [x, y, w, h]}`` in pixels; ``detections``: COCO results (same plus ``score``).
    ``keep_matches``: also return pycocotools' per-image matches (:class:`ImageMatches`).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns = []
    for k, b in enumerate(gt_boxes, 1):  # ids start at 1: pycocotools treats id 0 as "unmatched"
        w, h = b["bbox"][2], b["bbox"][3]
        anns.append({**b, "id": k, "area": float(w * h), "iscrowd": 0})
    dataset = {
        "images": gt_images,
        "annotations": anns,
        "categories": [{"id": c, "name": str(c)} for c in range(nc)],
    }
    if not anns:
        return CocoResult(0.0, 0.0, {})
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        if not detections:
            return CocoResult(0.0, 0.0, {}, _no_detections(gt_images, gt_boxes) if keep_matches else None)
        dt = gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [iou, recall, class, area, maxdet]
    per_class = {}
    for ki, cat in enumerate(ev.params.catIds):
        p = precision[:, :, ki, 0, -1]
        if (p > -1).any():
            p50 = p[0][p[0] > -1]
            per_class[cat] = (float(p[p > -1].mean()), float(p50.mean()) if p50.size else 0.0)
    return CocoResult(float(ev.stats[0]), float(ev.stats[1]), per_class, _matches(ev) if keep_matches else None)


def _matches(ev) -> ImageMatches:
    """:class:`ImageMatches` from an evaluated ``COCOeval`` (area range "all", the largest maxDets)."""
    p = ev.params
    n_img, n_area, max_det = len(p.imgIds), len(p.areaRng), p.maxDets[-1]
    d_img, d_cls, d_score, d_tp, d_ign, g_img, g_cls, g_ign = [], [], [], [], [], [], [], []
    for k, cat in enumerate(p.catIds):
        for i in range(n_img):
            e = ev.evalImgs[k * n_area * n_img + i]  # area index 0 = "all"
            if e is None:
                continue
            score = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
            d_img.append(np.full(len(score), i))
            d_cls.append(np.full(len(score), cat))
            d_score.append(score)
            d_tp.append(np.asarray(e["dtMatches"])[:, :max_det].T > 0)
            d_ign.append(np.asarray(e["dtIgnore"])[:, :max_det].T.astype(bool))
            gi = np.asarray(e["gtIgnore"]).astype(bool)
            g_img.append(np.full(len(gi), i))
            g_cls.append(np.full(len(gi), cat))
            g_ign.append(gi)
    n_t = len(p.iouThrs)

    def cat(parts, dtype, shape=(0,)):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

    return ImageMatches(np.asarray(p.imgIds, dtype=np.int64), cat(d_img, np.int32), cat(d_cls, np.int32),
                        cat(d_score, np.float64), cat(d_tp, bool, (0, n_t)), cat(d_ign, bool, (0, n_t)),
                        cat(g_img, np.int32), cat(g_cls, np.int32), cat(g_ign, bool))


def _no_detections(gt_images: list[dict], gt_boxes: list[dict]) -> ImageMatches:
    ids = sorted(im["id"] for im in gt_images)
    pos = {v: i for i, v in enumerate(ids)}
    gi = np.array([pos[b["image_id"]] for b in gt_boxes], dtype=np.int32)
    gc = np.array([b["category_id"] for b in gt_boxes], dtype=np.int32)
    e = np.zeros(0, np.int32)
    return ImageMatches(np.asarray(ids, dtype=np.int64), e, e, np.zeros(0), np.zeros((0, 10), bool),
                        np.zeros((0, 10), bool), gi, gc, np.zeros(len(gi), bool))


_REC_THRS = np.linspace(0.0, 1.00, 101)  # pycocotools' recall thresholds


def bootstrap_map(m: ImageMatches, weights: np.ndarray, metric: str = "map50_95", chunk: int = 25) -> np.ndarray:
    """The COCO mAP of the val set with each image counted ``weights[b, i]`` times, for every row ``b``.

    ``weights``: [B, n_images] (non-negative; a bootstrap resample's counts, or all ones for the set as it is,
    which reproduces pycocotools' mAP). ``metric``: ``map50_95`` or ``map50``. Returns [B]. Follows
    ``COCOeval.accumulate``: per class, detections sorted by score, cumulative TP / FP, the precision envelope
    read at 101 recall points; classes with no (weighted) label are left out of the mean.
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n_b = weights.shape[0]
    t_sel = slice(0, 1) if metric == "map50" else slice(None)
    total, count = np.zeros(n_b), np.zeros(n_b)
    for c in np.unique(m.gt_cls):
        g = (m.gt_cls == c) & ~m.gt_ign
        npig = np.bincount(m.gt_img[g], minlength=weights.shape[1]) @ weights.T  # [B]
        valid = npig > 0
        d = np.flatnonzero(m.det_cls == c)
        d = d[np.argsort(-m.det_score[d], kind="mergesort")]
        tp = m.det_tp[d][:, t_sel]
        n_t = tp.shape[1]
        count += valid * n_t * len(_REC_THRS)
        if not len(d):
            continue
        ign = m.det_ign[d][:, t_sel]
        tp_ok = (tp & ~ign).T.astype(np.float64)  # [T, D]
        fp_ok = (~tp & ~ign).T.astype(np.float64)
        for b0 in range(0, n_b, chunk):
            w = weights[b0:b0 + chunk][:, m.det_img[d]]  # [b, D]
            tps = np.cumsum(w[:, None, :] * tp_ok[None], axis=-1)  # [b, T, D]
            fps = np.cumsum(w[:, None, :] * fp_ok[None], axis=-1)
            n = np.maximum(npig[b0:b0 + chunk], 1e-12)[:, None, None]
            rc = tps / n
            pr = tps / (fps + tps + np.spacing(1))
            pr = np.maximum.accumulate(pr[..., ::-1], axis=-1)[..., ::-1]  # precision envelope
            rows_rc, rows_pr = rc.reshape(-1, rc.shape[-1]), pr.reshape(-1, pr.shape[-1])
            q = np.zeros((len(rows_rc), len(_REC_THRS)))
            for r, (rcr, prr) in enumerate(zip(rows_rc, rows_pr)):
                idx = np.searchsorted(rcr, _REC_THRS, side="left")
                ok = idx < len(rcr)
                q[r, ok] = prr[idx[ok]]
            s = q.reshape(len(w), n_t, -1).sum(axis=(1, 2))
            total[b0:b0 + chunk] += np.where(valid[b0:b0 + chunk], s, 0.0)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def paired_bootstrap(a: ImageMatches, b: ImageMatches, metric: str = "map50_95", n: int = 200, seed: int = 0
                     ) -> np.ndarray:
    """``n`` bootstrap samples of mAP(a) - mAP(b) over the same resampled images (a paired bootstrap: the
    spread of the difference, not of each mAP). Both must be evaluations of the same images."""
    if not np.array_equal(a.image_ids, b.image_ids):
        raise ValueError("paired_bootstrap: the two evaluations are not of the same images")
    n_img = len(a.image_ids)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_img, size=(n, n_img))
    w = np.zeros((n, n_img))
    np.add.at(w, (np.repeat(np.arange(n), n_img), idx.ravel()), 1.0)
    return bootstrap_map(a, w, metric) - bootstrap_map(b, w, metric)


def precision_recall(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray
) -> tuple[float, float]:
    """Mean precision and recall over classes at the confidence that maximises mean F1.

    ``tp``: bool per prediction (matched to a same-class label at IoU >= 0.5).
    """
    _, p, r = precision_recall_per_class(tp, conf, pred_cls, target_cls)
    return (float(p.mean()), float(r.mean())) if len(p) else (0.0, 0.0)


def precision_recall_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision and recall at one operating point: the confidence that maximises the mean F1
    over classes (upstream's rule), so their means are the overall P and R.

    Returns ``(classes, precision, recall)``: the classes that have labels (int), and their P and R.
    """
    classes = np.unique(np.asarray(target_cls).astype(np.int64))
    if not len(classes):
        return classes, np.zeros(0), np.zeros(0)
    pred_cls = np.asarray(pred_cls).astype(np.int64)
    target_cls = np.asarray(target_cls).astype(np.int64)
    grid = np.linspace(0, 1, 1000)
    p_curves, r_curves = np.zeros((len(classes), grid.size)), np.zeros((len(classes), grid.size))
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        n_gt = int((target_cls == c).sum())
        if not sel.any():
            continue
        tpc = np.cumsum(tp[sel])
        fpc = np.cumsum(~tp[sel])
        recall = tpc / (n_gt + 1e-16)
        precision = tpc / (tpc + fpc)
        # curves as a function of confidence (conf decreasing, hence the negation for interp)
        r_curves[ci] = np.interp(-grid, -conf[sel], recall, left=0)
        p_curves[ci] = np.interp(-grid, -conf[sel], precision, left=1)
    f1 = 2 * p_curves * r_curves / (p_curves + r_curves + 1e-16)
    i = int(f1.mean(0).argmax())
    return classes, p_curves[:, i], r_curves[:, i]
