"""The validation loop: COCO mAP of a detector on a YOLO-format dataset split.

Inference follows upstream YOLOv5's val.py: images are resized so their long side is
``imgsz``, grouped into batches of similar aspect ratio, and letterboxed to a per-batch
rectangle (multiple of the stride) instead of a square; NMS is multi-label at the
evaluation thresholds. mAP comes from pycocotools on the original-pixel boxes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..data.dataset import image_files, image_size, label_path, load_data_config, read_labels
from ..data.images import read_image
from ..data.letterbox import letterbox, resize_long_side, to_tensor
from ..errors import DatasetError
from ..ops.boxes import box_iou, scale_boxes, xywh2xyxy
from .coco import coco_map, precision_recall
from ..ops.nms import non_max_suppression

log = logging.getLogger("yolopt")


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

    def to_dict(self, with_predictions: bool = False) -> dict:
        d = asdict(self)
        if not with_predictions:
            d.pop("predictions")
        return d


@dataclass
class _Item:
    path: Path
    shape: tuple[int, int]  # (h0, w0)
    labels: np.ndarray  # (n, 5) class, cx, cy, w, h normalised
    image_id: int


def rect_batches(shapes_hw: np.ndarray, batch: int, imgsz: int, stride: int, pad: float = 0.5):
    """Order images by aspect ratio and give each batch its letterbox shape (h, w).

    Returns (order, batch_index_per_sorted_image, batch_shapes).
    """
    ar = shapes_hw[:, 0] / shapes_hw[:, 1]
    order = ar.argsort()  # same (unstable) order as upstream, so batches match
    ar = ar[order]
    bi = np.arange(len(order)) // batch
    nb = int(bi[-1]) + 1 if len(bi) else 0
    rel = np.ones((nb, 2))
    for i in range(nb):
        a = ar[bi == i]
        lo, hi = a.min(), a.max()
        if hi < 1:
            rel[i] = [hi, 1]
        elif lo > 1:
            rel[i] = [1, 1 / lo]
    shapes = (np.ceil(rel * imgsz / stride + pad).astype(int) * stride).astype(int)
    return order, bi, shapes


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


def validate(
    model: Callable[[torch.Tensor], torch.Tensor],
    data: str | Path,
    split: str = "val",
    imgsz: int = 640,
    batch: int = 32,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    rect: bool = True,
    stride: int | None = None,
    nc: int | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> ValResult:
    """Evaluate ``model`` (maps a float (B,3,H,W) batch to (B,N,5+nc)) on a dataset split.

    ``rect=False`` letterboxes every image to an ``imgsz`` square (for fixed-shape artifacts).
    """
    cfg = load_data_config(data)
    stride = int(stride or max(int(getattr(model, "stride", torch.tensor([32])).max()), 32))
    model_nc = nc if nc is not None else getattr(model, "nc", None)
    if model_nc is not None and model_nc != cfg.nc:
        raise DatasetError(f"{cfg.yaml_path}: dataset has {cfg.nc} classes but the model predicts {model_nc}")
    files = image_files(cfg, split)
    items, skipped = _load_items(files, cfg.nc)
    if not items:
        raise DatasetError(f"{cfg.yaml_path}: no readable images in the `{split}` split")

    shapes = np.array([it.shape for it in items], dtype=np.float64)
    if rect:
        order, bi, batch_shapes = rect_batches(shapes, batch, imgsz, stride)
    else:
        order = np.arange(len(items))
        bi = order // batch
        batch_shapes = np.full((int(bi[-1]) + 1, 2), imgsz)

    t_decode = t_pre = t_inf = t_nms = 0.0
    gt_images, gt_boxes, detections = [], [], []
    all_tp, all_conf, all_pcls, all_tcls = [], [], [], []
    n_batches = len(batch_shapes)
    bar = tqdm(range(n_batches), desc=f"val {split}", unit="batch", disable=not progress, leave=False)
    for b in bar:
        idx = order[bi == b]
        new_shape = tuple(int(v) for v in batch_shapes[b])
        tensors, metas = [], []
        for k in idx:
            it = items[k]
            t0 = time.perf_counter()
            im = read_image(it.path)
            t1 = time.perf_counter()
            t_decode += t1 - t0
            if im is None:
                log.warning("%s: corrupt or unreadable image, skipped", it.path)
                skipped.append(str(it.path))
                continue
            h0, w0 = im.shape[:2]
            im = resize_long_side(im, imgsz)
            h, w = im.shape[:2]
            im, _, pad = letterbox(im, new_shape, auto=False, scaleup=False)
            tensors.append(to_tensor(im))
            metas.append((it, (h0, w0), h / h0, pad))
            t_pre += time.perf_counter() - t1
        if not tensors:
            continue
        t0 = time.perf_counter()
        x = torch.stack(tensors).to(device)
        t1 = time.perf_counter()
        with torch.inference_mode():
            pred = model(x)
        if isinstance(pred, (list, tuple)):
            pred = pred[0]
        pred = torch.as_tensor(pred).float().cpu()
        t2 = time.perf_counter()
        out = non_max_suppression(pred, conf, iou, multi_label=True, max_det=max_det)
        t3 = time.perf_counter()
        t_pre += t1 - t0
        t_inf += t2 - t1
        t_nms += t3 - t2

        for det, (it, (h0, w0), gain, pad) in zip(out, metas):
            det = det.clone()
            scale_boxes(det[:, :4], (gain, gain), pad, (h0, w0))
            gt_images.append({"id": it.image_id, "width": w0, "height": h0})
            lab = it.labels
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
    bar.close()

    n_img = len(gt_images)
    if not n_img:
        raise DatasetError(f"{cfg.yaml_path}: no readable images in the `{split}` split")
    res = coco_map(gt_images, gt_boxes, detections, cfg.nc)
    p, r = precision_recall(
        np.concatenate(all_tp), np.concatenate(all_conf), np.concatenate(all_pcls), np.concatenate(all_tcls)
    )
    tcls = np.concatenate(all_tcls).astype(int)
    per_class = [
        {"class": c, "name": cfg.names[c], "instances": int((tcls == c).sum()), "map50_95": a, "map50": a50}
        for c, (a, a50) in sorted(res.per_class_ap.items())
    ]
    speed = {
        "decode": 1e3 * t_decode / n_img,
        "preprocess": 1e3 * t_pre / n_img,
        "inference": 1e3 * t_inf / n_img,
        "nms": 1e3 * t_nms / n_img,
    }
    return ValResult(res.map50_95, res.map50, p, r, n_img, len(gt_boxes), skipped, speed, per_class, detections)
