#!/usr/bin/env python3
"""Run the YOLOv5 model of this deploy bundle on images: numpy, OpenCV and the runtime only.

Settings come from deploy.json next to this file (written by yolopt). The pre- and post-processing
reproduce yolopt's: the same letterbox (pad 114), the same class-aware NMS, boxes mapped back to the
original image and clipped to it.

    python infer.py bus.jpg images/ --json detections.json
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time

import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm"}
CLASS_OFFSET = 7680  # added to boxes per class id, so NMS never compares boxes of two classes
MAX_CANDIDATES = 30000  # highest-scoring boxes kept before NMS


class BundleError(Exception):
    """A problem with the command line, the bundle or an input: printed as one line."""


# --- inputs ---------------------------------------------------------------------------------------

def list_images(sources):
    """Files, folders (searched recursively, sorted) and glob patterns -> image paths."""
    out = []
    for src in sources:
        if any(ch in src for ch in "*?["):
            found = sorted(p for p in glob.glob(src, recursive=True) if os.path.isfile(p))
            if not found:
                raise BundleError(f"{src}: no files match this pattern")
            out += [p for p in found if os.path.splitext(p)[1].lower() in IMAGE_SUFFIXES]
        elif os.path.isdir(src):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs
                           if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)
            if not found:
                raise BundleError(f"{src}: folder contains no images")
            out += found
        elif os.path.isfile(src):
            out.append(src)
        else:
            raise BundleError(f"{src}: no such file or folder")
    return out


def read_image(path):
    """BGR uint8 (h, w, 3), or None when the file cannot be decoded."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    im = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return im if im is not None and im.size else None


# --- letterbox ------------------------------------------------------------------------------------

def fit_and_pad(im, size_hw, allow_upscale, pad_value):
    """Resize keeping the aspect ratio to fit ``size_hw``, then pad evenly to exactly that size.

    Returns (padded image, scale, (half pad x, half pad y)).
    """
    h0, w0 = im.shape[:2]
    scale = min(size_hw[0] / h0, size_hw[1] / w0)
    if not allow_upscale:
        scale = min(scale, 1.0)
    new_w, new_h = round(w0 * scale), round(h0 * scale)
    half_x, half_y = (size_hw[1] - new_w) / 2, (size_hw[0] - new_h) / 2
    if (w0, h0) != (new_w, new_h):
        im = cv2.resize(im, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    # an odd padding puts the extra pixel at the bottom / right
    top, bottom = round(half_y - 0.1), round(half_y + 0.1)
    left, right = round(half_x - 0.1), round(half_x + 0.1)
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return im, scale, (half_x, half_y)


def rect_size(h0, w0, long_side, stride):
    """Input (h, w) of one image in rect mode: the long side, the short one to the smallest stride multiple
    that holds it with at least half a stride of margin."""
    aspect = h0 / w0
    rel = (aspect, 1.0) if aspect < 1 else (1.0, 1.0 / aspect) if aspect > 1 else (1.0, 1.0)
    return tuple(math.ceil(v * long_side / stride + 0.5) * stride for v in rel)


def letterbox(im, cfg):
    """Original BGR image -> (network-input HWC BGR image, gain, (pad x, pad y)) as the bundle's mode says."""
    pad_value = int(cfg.get("pad_value", 114))
    h0, w0 = im.shape[:2]
    if cfg["letterbox"] == "rect":
        long_side, stride = int(cfg["imgsz"][0]), int(cfg["stride"])
        target = rect_size(h0, w0, long_side, stride)
        r = long_side / max(h0, w0)
        small = im
        if r != 1:  # long side to imgsz first: INTER_AREA when shrinking
            interp = cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA
            small = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
        padded, _, pad = fit_and_pad(small, target, False, pad_value)
        return padded, small.shape[0] / h0, pad
    padded, gain, _ = fit_and_pad(im, tuple(cfg["imgsz"]), True, pad_value)
    h, w = padded.shape[:2]
    # boxes map back with the exact (unrounded) padding
    return padded, gain, ((w - w0 * gain) / 2, (h - h0 * gain) / 2)


def to_input(padded, dtype):
    """HWC BGR uint8 -> (1, 3, H, W) RGB: uint8 pixels, or float in [0, 1]."""
    x = np.ascontiguousarray(padded[..., ::-1].transpose(2, 0, 1))[None]
    if dtype == np.uint8:
        return x
    return (x.astype(np.float32) / np.float32(255.0)).astype(dtype, copy=False)


# --- model ----------------------------------------------------------------------------------------

class Model:
    """The bundle's artifact on onnxruntime or OpenVINO (CPU): (1, 3, H, W) -> first output as float32."""

    def __init__(self, cfg, threads=None):
        path = os.path.join(HERE, cfg["artifact"])
        self.runtime = cfg["runtime"]
        self.batch = cfg.get("batch")
        if self.runtime == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError:
                raise BundleError("onnxruntime is not installed: pip install -r requirements.txt") from None
            so = ort.SessionOptions()
            opts = cfg.get("runtime_options") or {}
            threads = threads or opts.get("threads")
            if threads:
                so.intra_op_num_threads = int(threads)
                so.inter_op_num_threads = 1
            if opts.get("allow_spinning") is False:  # idle threads sleep: the decode and NMS keep their core
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
            inp = self.session.get_inputs()[0]
            self.input_name = inp.name
            self.dtype = {"tensor(uint8)": np.uint8, "tensor(float16)": np.float16}.get(inp.type, np.float32)
            self.output_name = self.session.get_outputs()[0].name
        elif self.runtime == "openvino":
            try:
                import openvino as ov
            except ImportError:
                raise BundleError("openvino is not installed: pip install -r requirements.txt") from None
            core = ov.Core()
            model = core.read_model(path)
            # f32 compute as yolopt does: the CPU plugin would otherwise pick bf16 on AMX / AVX-512 BF16 CPUs
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            self.compiled = core.compile_model(model, "CPU", config)
            self.request = self.compiled.create_infer_request()
            self.dtype = np.dtype(self.compiled.inputs[0].get_element_type().to_dtype()).type
        else:
            raise BundleError(f"deploy.json: unknown runtime {self.runtime!r}")

    def __call__(self, x):
        if self.batch and self.batch > 1:  # a fixed-batch artifact: fill the rest with zeros
            x = np.concatenate([x, np.zeros((self.batch - 1, *x.shape[1:]), x.dtype)])
        if self.runtime == "onnxruntime":
            y = self.session.run([self.output_name], {self.input_name: x})[0]
        else:
            y = self.request.infer({0: x})[self.compiled.outputs[0]]
        return np.asarray(y, dtype=np.float32)


# --- post-processing ------------------------------------------------------------------------------

def greedy_nms(boxes, scores, iou_thres, limit):
    """Indices kept by greedy NMS (highest score first); a box goes when its IoU with a kept one > iou_thres."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size and len(keep) < limit:
        best, others = order[0], order[1:]
        keep.append(best)
        iw = np.maximum(np.minimum(x2[best], x2[others]) - np.maximum(x1[best], x1[others]), 0)
        ih = np.maximum(np.minimum(y2[best], y2[others]) - np.maximum(y1[best], y1[others]), 0)
        inter = iw * ih
        union = area[best] + area[others] - inter
        iou = np.zeros_like(inter)
        np.divide(inter, union, out=iou, where=union > 0)  # a zero-area box overlaps nothing
        order = others[iou <= iou_thres]
    return np.asarray(keep, dtype=np.int64)


def decode(pred, conf_thres, iou_thres, max_det):
    """(N, 5+nc) rows [cx, cy, w, h, obj, class probs...] -> (n, 6) [x1, y1, x2, y2, conf, cls] in input pixels."""
    pred = pred[pred[:, 4] > conf_thres]
    if not len(pred):
        return np.zeros((0, 6), np.float32)
    scores = pred[:, 5:] * pred[:, 4:5]
    cls = scores.argmax(1)
    conf = scores[np.arange(len(scores)), cls]
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2] / 2, pred[:, 3] / 2
    boxes = np.stack([cx - w, cy - h, cx + w, cy + h], 1)
    ok = conf > conf_thres
    boxes, conf, cls = boxes[ok], conf[ok], cls[ok]
    top = np.argsort(-conf, kind="stable")[:MAX_CANDIDATES]
    boxes, conf, cls = boxes[top], conf[top], cls[top]
    shifted = boxes + (cls.astype(np.float32) * np.float32(CLASS_OFFSET))[:, None]
    keep = greedy_nms(shifted, conf, iou_thres, max_det)
    return np.concatenate([boxes[keep], conf[keep, None], cls[keep, None].astype(np.float32)], 1)


def decode_end2end(rows, conf_thres, max_det):
    """Rows [batch, x1, y1, x2, y2, conf, cls] of an artifact that ran NMS itself -> image 0's (n, 6)."""
    d = rows[rows[:, 0] == 0][:, 1:]
    return d[d[:, 4] > conf_thres][:max_det]


def to_original(det, gain, pad, shape_hw):
    """Boxes from the network input back to the original image, clipped to it."""
    det = det.copy()
    det[:, [0, 2]] -= pad[0]
    det[:, [1, 3]] -= pad[1]
    det[:, :4] /= gain
    det[:, [0, 2]] = det[:, [0, 2]].clip(0, shape_hw[1])
    det[:, [1, 3]] = det[:, [1, 3]].clip(0, shape_hw[0])
    return det


# --- command line ---------------------------------------------------------------------------------

def load_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except OSError as e:
        raise BundleError(f"{path}: cannot read the bundle settings ({e.strerror})") from None
    except ValueError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in ("artifact", "runtime", "imgsz", "letterbox", "names", "stride") if k not in cfg]
    if missing:
        raise BundleError(f"{path}: missing {', '.join(missing)}; not a yolopt deploy.json")
    return cfg


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Detect objects in images with the model of this deploy bundle (settings from deploy.json "
                    "next to this script). Prints one line per image and its boxes; --json writes them.",
        epilog="example: python infer.py bus.jpg photos/ --json out.json --threads 4")
    ap.add_argument("sources", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    ap.add_argument("--json", metavar="PATH", help="write the detections as JSON: per image a list of "
                    "{xyxy, conf, cls, name} in original-image pixels")
    ap.add_argument("--conf", type=float, help="score threshold, objectness x class (default: deploy.json's)")
    ap.add_argument("--iou", type=float, help="NMS IoU threshold (default: deploy.json's)")
    ap.add_argument("--max-det", type=int, help="at most this many boxes per image (default: deploy.json's)")
    ap.add_argument("--threads", type=int, help="intra-op threads of the runtime (default: deploy.json runtime_options, else the runtime's own)")
    ap.add_argument("--config", default=os.path.join(HERE, "deploy.json"), help="bundle settings (default: "
                    "deploy.json next to this script)")
    ap.add_argument("--quiet", action="store_true", help="print only the one-line summary of each image")
    return ap.parse_args(argv)


def run(args):
    cfg = load_config(args.config)
    conf = cfg.get("conf", 0.25) if args.conf is None else args.conf
    iou = cfg.get("iou", 0.45) if args.iou is None else args.iou
    max_det = cfg.get("max_det", 300) if args.max_det is None else args.max_det
    if not (0 <= conf <= 1 and 0 <= iou <= 1) or max_det < 1:
        raise BundleError(f"--conf {conf} and --iou {iou} must be in [0, 1], --max-det {max_det} at least 1")
    if args.threads is not None and args.threads < 1:
        raise BundleError(f"--threads {args.threads}: give a positive number")
    baked = cfg.get("baked_nms") or {}
    if cfg.get("end2end") and baked.get("conf") is not None and conf < baked["conf"]:
        print(f"warning: the model ran NMS itself at conf {baked['conf']}; --conf {conf} cannot bring back "
              "boxes under that", file=sys.stderr)
    names = cfg["names"]
    paths = list_images(args.sources)
    model = Model(cfg, args.threads)
    records = []
    for path in paths:
        im = read_image(path)
        if im is None:
            print(f"warning: {path}: not a readable image, skipped", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        padded, gain, pad = letterbox(im, cfg)
        y = model(to_input(padded, model.dtype))
        det = decode_end2end(y, conf, max_det) if cfg.get("end2end") else decode(y[0], conf, iou, max_det)
        det = to_original(det, gain, pad, im.shape[:2])
        ms = (time.perf_counter() - t0) * 1e3
        dets = [{"xyxy": [float(v) for v in d[:4]], "conf": float(d[4]), "class": int(d[5]),
                 "name": names[int(d[5])] if int(d[5]) < len(names) else str(int(d[5]))} for d in det]
        records.append({"image": path, "width": int(im.shape[1]), "height": int(im.shape[0]), "detections": dets})
        counts = {}
        for d in dets:
            counts[d["name"]] = counts.get(d["name"], 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no detections"
        print(f"{path}: {im.shape[1]}x{im.shape[0]}, {summary} ({ms:.1f} ms)")
        if not args.quiet:
            for d in dets:
                x1, y1, x2, y2 = d["xyxy"]
                print(f"  {d['name']:<16} {d['conf']:.3f}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
        os.replace(tmp, args.json)
    return records


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
