"""The validation loop: COCO mAP of a detector on a YOLO-format dataset split.

Inference follows upstream YOLOv5's val.py: images are resized so their long side is
``imgsz``, grouped into batches of similar aspect ratio, and letterboxed to a per-batch
rectangle (multiple of the stride) instead of a square; NMS is multi-label at the
evaluation thresholds. mAP comes from pycocotools on the original-pixel boxes.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.dataset import (
    check_label_files,
    image_files,
    image_size,
    label_path,
    load_data_config,
    read_labels,
)
from ..data.images import read_image
from ..data.preprocess import MODES, preprocess, rect_shape
from ..errors import DatasetError
from ..ops.boxes import box_iou, xywh2xyxy
from ..ops.nms import VAL_NMS, NMSOptions
from ..ops.postprocess import postprocess
from ..runtime.backends import predict_above
from .coco import ImageMatches, coco_map, precision_recall_per_class
from .confusion import ConfusionMatrix

log = logging.getLogger("yolopt")


@dataclass(frozen=True)
class EvalSpec:
    """How :func:`evaluate` runs. ``nms``: evaluation NMS (default conf 0.001, IoU 0.6, as upstream val.py;
    multi-label). ``mode``: the letterbox, ``rect`` or ``square`` (None: follows the model).
    ``max_images``: only the first N images. ``match_classes``: evaluate only the classes the model and
    the dataset share by name. ``device`` / ``threads`` / ``workers`` / ``precision``: how a model file
    is opened (:func:`yolopt.runtime.open`)."""

    split: str = "val"
    imgsz: int | None = None  # None: an exported artifact's own size (its metadata), else 640
    batch: int = 32
    nms: NMSOptions = VAL_NMS
    mode: str | None = None
    max_images: int | None = None
    progress: bool = True
    match_classes: bool = False
    strict: bool = False  # images without a label file / label files without an image: an error, not a warning
    device: object = None
    threads: int | None = None
    workers: int = 1
    precision: str | None = None


@dataclass(frozen=True)
class ValSummary:
    """The few facts callers keep from an evaluation. ``detections``: boxes at the deployment operating point
    (conf 0.25, IoU 0.45; from the confusion matrix), None when it was not computed."""

    map50_95: float
    map50: float
    images: int
    mode: str
    detections: int | None = None


@dataclass
class ValResult:
    map50_95: float
    map50: float
    precision: float
    recall: float
    images: int
    instances: int
    skipped: list[str] = field(default_factory=list)  # unreadable images
    speed_ms: dict[str, float] = field(default_factory=dict)  # per image
    per_class: list[dict] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list, repr=False)  # COCO results format
    mode: str = "rect"  # letterbox used: rect (minimal padding) or square; mAPs compare only within one mode
    imgsz: int = 640
    backend: str = "torch"
    inference_precision: str = "fp32"  # fp32 | fp16 | bf16 | int8: what the model computed in
    class_map: list[dict] = field(default_factory=list)  # match_classes: {"model", "dataset", "name"} per shared class
    confusion: dict = field(default_factory=dict, repr=False)  # ConfusionMatrix.to_dict() at conf 0.25, IoU 0.45
    matches: ImageMatches | None = field(default=None, repr=False)  # per-image matches (paired bootstrap)

    def summary(self) -> ValSummary:
        """mAPs, image count, letterbox mode and the detection count at conf 0.25 (:class:`ValSummary`)."""
        m = (self.confusion or {}).get("matrix")
        dets = int(np.asarray(m)[:-1, :].sum()) if m else None
        return ValSummary(self.map50_95, self.map50, self.images, self.mode, dets)

    def to_dict(self, with_predictions: bool = False) -> dict:
        from ..machine import machine_info

        d = asdict(replace(self, matches=None))
        d.pop("matches")
        if not with_predictions:
            d.pop("predictions")
        d["machine"] = machine_info()
        return d


@dataclass
class _Item:
    path: Path
    shape: tuple[int, int]  # (h0, w0)
    labels: np.ndarray  # (n, 5) class, cx, cy, w, h normalised
    image_id: int


def rect_batches(shapes_hw: np.ndarray, batch: int, imgsz: int, stride: int, pad: float = 0.5):
    """Order images by aspect ratio and give each batch its rect letterbox shape (h, w), as upstream val.py.

    Returns (order, batch_index_per_sorted_image, batch_shapes).
    """
    ar = shapes_hw[:, 0] / shapes_hw[:, 1]
    order = ar.argsort()  # same (unstable) order as upstream, so batches match
    bi = np.arange(len(order)) // batch
    nb = int(bi[-1]) + 1 if len(bi) else 0
    shapes = np.array([rect_shape(shapes_hw[order][bi == i], imgsz, stride, pad) for i in range(nb)], dtype=int)
    return order, bi, shapes.reshape(nb, 2)


def _image_id(path: Path, index: int) -> int:
    return int(path.stem) if path.stem.isdigit() else index


def _load_items(files: list[Path], nc: int) -> tuple[list[_Item], list[str]]:
    items, skipped = [], []
    for k, f in enumerate(files):
        labels = read_labels(label_path(f), nc)  # raises on malformed labels
        shape = image_size(f)
        if shape is None:
            log.warning("%s: corrupt or unreadable image, skipped", f)
            skipped.append(str(f))
            continue
        items.append(_Item(f, shape, labels, _image_id(f, k)))
    return items, skipped


def _match(pred: torch.Tensor, gt_xyxy: torch.Tensor, gt_cls: torch.Tensor, thr: float = 0.5) -> np.ndarray:
    """Greedy (by confidence) one-to-one matching of predictions to same-class labels at IoU >= thr."""
    tp = np.zeros(len(pred), dtype=bool)
    if not len(pred) or not len(gt_xyxy):
        return tp
    iou = box_iou(pred[:, :4], gt_xyxy)
    iou[pred[:, 5:6] != gt_cls[None, :]] = 0
    used = torch.zeros(len(gt_xyxy), dtype=torch.bool)
    for i in range(len(pred)):  # pred is sorted by confidence
        cand = iou[i].clone()
        cand[used] = 0
        j = int(cand.argmax())
        if cand[j] >= thr:
            tp[i], used[j] = True, True
    return tp


def evaluate(
    model,
    data: str | Path,
    spec: EvalSpec | None = None,
    *,
    imgsz: int | None = None,
    max_images: int | None = None,
    progress: bool | None = None,
    threads: int | None = None,
    mode: str | None = None,
) -> ValResult:
    """COCO mAP of any model on a dataset split.

    ``model``: an in-memory ``DetectionModel`` (used as is, on its device), a model file, or a
    :mod:`yolopt.runtime` backend. ``spec``: how (:class:`EvalSpec`); ``imgsz``, ``max_images``,
    ``progress``, ``threads`` and ``mode``, when given, replace the spec's. ``mode``: the letterbox,
    ``rect`` or ``square`` (see :mod:`yolopt.data.preprocess`); by default it follows the model: rect for
    PyTorch and dynamic artifacts, square at the artifact's size for fixed-shape ones. The two give slightly
    different mAPs, so the result records which was used (``ValResult.mode``): compare like with like.
    ``max_images``: evaluate only the first N images (quick checks inside search loops).
    ``match_classes``: evaluate only the classes the model and the dataset share by name (model class
    ids are mapped to the dataset's, other detections and labels are left out): a model trained on
    more (or other) classes than the dataset has. Without it, a different class count is an error.

    Besides mAP the result has per-class P / R / AP (``per_class``) and the confusion matrix at the
    deployment operating point, conf 0.25 / IoU 0.45 like upstream (``confusion``).
    """
    from ..runtime import open as open_backend

    given = {"imgsz": imgsz, "max_images": max_images, "progress": progress, "threads": threads, "mode": mode}
    spec = replace(spec or EvalSpec(), **{k: v for k, v in given.items() if v is not None})
    was_training = isinstance(model, torch.nn.Module) and model.training
    try:
        backend = open_backend(model, device=spec.device, threads=spec.threads, workers=spec.workers,
                               precision=spec.precision)
        if spec.imgsz is None:  # the artifact's own size (its metadata), else 640
            d = backend.default_imgsz
            spec = replace(spec, imgsz=d if isinstance(d, int) else max(d))
        return _evaluate(backend, data, spec)
    finally:
        if was_training:
            model.train()


def _names(names: list[str], k: int = 6) -> str:
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")


def class_mapping(model_names: list[str], data_names: list[str]) -> dict[int, int]:
    """Model class id -> dataset class id for every class name the two share."""
    index = {n: i for i, n in enumerate(data_names)}
    return {mi: index[n] for mi, n in enumerate(model_names) if n in index}


def _named(names: list) -> bool:
    """Real class names, not the placeholders of a model or yaml without names (``0``, ``class0``)."""
    return any(not re.fullmatch(r"(class)?_?\d+", str(n).strip().lower()) for n in names)


def _check_classes(cfg, backend, match_classes: bool) -> dict[int, int] | None:
    """The model -> dataset class map with ``match_classes`` (None without it); one-line errors."""
    model_names, data_names = list(backend.names), list(cfg.names)
    shared = class_mapping(model_names, data_names)
    if match_classes:
        if not shared:
            raise DatasetError(f"{cfg.yaml_path}: match_classes: the model's classes ({_names(model_names)}) and the "
                               f"dataset's ({_names(data_names)}) share no name, so there is nothing to evaluate",
                               fields=("match_classes",))
        return shared
    if not shared and backend.nc == cfg.nc and _named(model_names) and _named(data_names):
        log.warning("%s: the model's classes (%s) and the dataset's (%s) share no name, so this mAP pairs unrelated "
                    "classes by index; check that the model was trained on this dataset, or name its classes alike in "
                    "the yaml", cfg.yaml_path, _names(model_names), _names(data_names))
    if backend.nc != cfg.nc:
        hint = (f"they share {len(shared)} by name ({_names([model_names[k] for k in shared])}): evaluate with "
                "match_classes to keep only those" if shared else "they share no class name, so this model cannot "
                "be evaluated on this dataset")
        raise DatasetError(f"{cfg.yaml_path}: dataset has {cfg.nc} classes ({_names(data_names)}) but the model "
                           f"predicts {backend.nc} ({_names(model_names)}); {hint}",
                           fields=("match_classes",) if shared else ())
    return None


def _evaluate(backend, data, spec: EvalSpec) -> ValResult:
    split, batch, max_images = spec.split, spec.batch, spec.max_images
    where = backend.path
    if backend.end2end:
        raise DatasetError(f"{where}: exported with NMS in the graph (final detections at fixed thresholds); mAP "
                           "needs the raw outputs, so export it without NMS")
    size = backend.resolve_imgsz(spec.imgsz)
    if isinstance(size, tuple):
        raise DatasetError(f"{where}: fixed non-square input {size[0]}x{size[1]} cannot be evaluated")
    mode = spec.mode or backend.letterbox_mode
    if mode not in MODES:
        raise DatasetError(f"letterbox mode {mode!r}: choose one of {', '.join(MODES)}", fields=("mode",))
    if mode == "rect" and not backend.dynamic:
        raise DatasetError(f"{where}: a fixed {size}x{size} input cannot take rect batches; use mode square",
                           fields=("mode",))
    if max_images is not None and max_images < 1:
        raise DatasetError(f"max_images {max_images}: must be at least 1", fields=("max_images",))

    cfg = load_data_config(data)
    stride = max(int(backend.stride.max()), 32)
    cmap = _check_classes(cfg, backend, spec.match_classes)
    nms = replace(spec.nms, classes=sorted(cmap)) if cmap is not None else spec.nms  # keep the shared classes
    lut = torch.full((max(backend.nc, 1),), -1, dtype=torch.float32)
    for mi, di in (cmap or {}).items():
        lut[mi] = di
    keep_data = np.array(sorted(set(cmap.values())), dtype=np.int64) if cmap is not None else None
    files = image_files(cfg, split)
    if max_images is not None:
        files = files[:max_images]
    else:
        check_label_files(cfg, split, files, spec.strict)
    items, skipped = _load_items(files, cfg.nc)
    if not items:
        raise DatasetError(f"{cfg.yaml_path}: no readable images in the `{split}` split")

    shapes = np.array([it.shape for it in items], dtype=np.float64)
    if mode == "rect":
        order, bi, batch_shapes = rect_batches(shapes, batch, size, stride)
    else:
        order = np.arange(len(items))
        bi = order // batch
        batch_shapes = np.full((int(bi[-1]) + 1, 2), size)

    t_decode = t_pre = t_inf = t_nms = 0.0
    cm = ConfusionMatrix(cfg.nc)
    img_cls = []  # the classes present in each image (per-class image counts)
    gt_images, gt_boxes, detections = [], [], []
    all_tp, all_conf, all_pcls, all_tcls = [], [], [], []
    bar = tqdm(range(len(batch_shapes)), desc=f"evaluating {split}", unit="batch", disable=not spec.progress, leave=False)
    for b in bar:
        batch_items, ims = [], []
        for k in order[bi == b]:
            it = items[k]
            t0 = time.perf_counter()
            im = read_image(it.path)
            t_decode += time.perf_counter() - t0
            if im is None:
                log.warning("%s: corrupt or unreadable image, skipped", it.path)
                skipped.append(str(it.path))
                continue
            batch_items.append(it)
            ims.append(im)
        if not ims:
            continue
        t1 = time.perf_counter()
        x, metas = preprocess(ims, size, mode=mode, stride=stride, shape=tuple(int(v) for v in batch_shapes[b]),
                              resize_first=True)
        t2 = time.perf_counter()
        pred = predict_above(backend, x, nms.conf)
        t3 = time.perf_counter()
        out = postprocess(pred, metas, nms, multi_label=True)
        if cmap is not None:  # model class ids -> the dataset's
            for det in out:
                det[:, 5] = lut[det[:, 5].long()]
        t4 = time.perf_counter()
        t_pre += t2 - t1
        t_inf += t3 - t2
        t_nms += t4 - t3

        for det, it, meta in zip(out, batch_items, metas):
            h0, w0 = meta.orig_hw
            gt_images.append({"id": it.image_id, "width": w0, "height": h0})
            lab = it.labels
            if keep_data is not None:
                lab = lab[np.isin(lab[:, 0].astype(np.int64), keep_data)]
            gt_xywh = lab[:, 1:5] * np.array([w0, h0, w0, h0], dtype=np.float32)
            gt_xyxy = xywh2xyxy(torch.from_numpy(gt_xywh))
            for c, (cx, cy, bw, bh) in zip(lab[:, 0], gt_xywh):
                gt_boxes.append({"image_id": it.image_id, "category_id": int(c),
                                 "bbox": [float(cx - bw / 2), float(cy - bh / 2), float(bw), float(bh)]})
            for x1, y1, x2, y2, score, c in det.tolist():
                detections.append({"image_id": it.image_id, "category_id": int(c),
                                   "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                                   "score": round(score, 5)})
            all_tp.append(_match(det, gt_xyxy, torch.from_numpy(lab[:, 0])))
            all_conf.append(det[:, 4].numpy())
            all_pcls.append(det[:, 5].numpy())
            all_tcls.append(lab[:, 0])
            cm.update(det, lab[:, 0], gt_xyxy)
            img_cls.append(set(lab[:, 0].astype(int).tolist()))
    bar.close()

    n_img = len(gt_images)
    if not n_img:
        raise DatasetError(f"{cfg.yaml_path}: no readable images in the `{split}` split")
    res = coco_map(gt_images, gt_boxes, detections, cfg.nc, keep_matches=True)
    pr_cls, p_cls, r_cls = precision_recall_per_class(
        np.concatenate(all_tp), np.concatenate(all_conf), np.concatenate(all_pcls), np.concatenate(all_tcls)
    )
    p, r = (float(p_cls.mean()), float(r_cls.mean())) if len(pr_cls) else (0.0, 0.0)
    pr = {int(c): (float(a), float(b)) for c, a, b in zip(pr_cls, p_cls, r_cls)}
    tcls = np.concatenate(all_tcls).astype(int)
    per_class = [
        {"class": int(c), "name": cfg.names[int(c)], "images": sum(int(c) in s for s in img_cls),
         "instances": int((tcls == c).sum()), "precision": pr.get(int(c), (0.0, 0.0))[0],
         "recall": pr.get(int(c), (0.0, 0.0))[1], "map50_95": float(a), "map50": float(a50)}
        for c, (a, a50) in sorted(res.per_class_ap.items())
    ]
    class_map = [{"model": mi, "dataset": di, "name": cfg.names[di]} for mi, di in sorted((cmap or {}).items())]
    speed = {
        "decode": 1e3 * t_decode / n_img,
        "preprocess": 1e3 * t_pre / n_img,
        "inference": 1e3 * t_inf / n_img,
        "nms": 1e3 * t_nms / n_img,
    }
    return ValResult(res.map50_95, res.map50, p, r, n_img, len(gt_boxes), skipped, speed, per_class, detections,
                     mode=mode, imgsz=int(size), backend=backend.name,
                     inference_precision=backend.precision, class_map=class_map, confusion=cm.to_dict(cfg.names),
                     matches=res.matches)

