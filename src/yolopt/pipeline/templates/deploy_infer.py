#!/usr/bin/env python3
"""Run the YOLOv5 model of this deploy bundle on images: numpy, OpenCV and the runtime only.

Settings come from deploy.json next to this file (written by yolopt). The pre- and post-processing
reproduce yolopt's: the same letterbox (pad 114), the same class-aware NMS, boxes mapped back to the
original image and clipped to it.

    python infer.py bus.jpg images/ clip.mp4 --json detections.json --workers 2

With --workers N (default: the pipelines deploy.json recommends), N processes each run their own runtime session;
images go to whichever is free and the results come back in input order, the same as one worker gives.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.connection import wait

import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm"}
VIDEO_SUFFIXES = {".asf", ".avi", ".flv", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".webm", ".wmv"}
CLASS_OFFSET = 7680  # added to boxes per class id, so NMS never compares boxes of two classes
MAX_CANDIDATES = 30000  # highest-scoring boxes kept before NMS


class BundleError(Exception):
    """A problem with the command line, the bundle or an input: printed as one line."""


# --- inputs ---------------------------------------------------------------------------------------

def _media(path):
    ext = os.path.splitext(path)[1].lower()
    return ext in IMAGE_SUFFIXES or ext in VIDEO_SUFFIXES


def list_images(sources):
    """Files, folders (searched recursively, sorted) and glob patterns -> image and video paths (paths only:
    the pixels are read one image or frame at a time)."""
    out = []
    for src in sources:
        if any(ch in src for ch in "*?["):
            found = sorted(p for p in glob.glob(src, recursive=True) if os.path.isfile(p))
            if not found:
                raise BundleError(f"{src}: no files match this pattern")
            out += [p for p in found if _media(p)]
        elif os.path.isdir(src):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if _media(f))
            if not found:
                raise BundleError(f"{src}: folder contains no images or videos")
            out += found
        elif os.path.isfile(src):
            out.append(src)
        else:
            raise BundleError(f"{src}: no such file or folder")
    return out


def is_video(path):
    return os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES


def tasks(paths):
    """(path, frame index, pixels) one at a time: an image as its path (read where it is processed), a video
    frame by frame (index from 0, pixels decoded here)."""
    for path in paths:
        if not is_video(path):
            yield path, None, None
            continue
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            yield path, None, None  # not a video OpenCV can open: tried as an image, skipped with a warning
            continue
        try:
            k = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield path, k, frame
                k += 1
        finally:
            cap.release()


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
    """The bundle's artifact on onnxruntime, OpenVINO, NCNN or LiteRT (CPU): (1, 3, H, W) -> first output as float32
    (LiteRT: its outputs joined, boxes then scores, when it has two)."""

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
        elif self.runtime == "ncnn":
            self._open_ncnn(cfg, path, threads)
        elif self.runtime == "litert":
            self._open_litert(cfg, path, threads)
        else:
            raise BundleError(f"deploy.json: unknown runtime {self.runtime!r}")

    def _open_ncnn(self, cfg, path, threads):
        """NCNN as yolopt runs it: fp32 compute (fp16 / bf16 storage and arithmetic off), no Vulkan, threads that
        sleep after each layer (openmp_blocktime 0), 1 thread on <= 2 usable cores (threads stall at NCNN's
        per-layer barrier when another process shares the cores), else all of them."""
        try:
            import ncnn
        except ImportError:
            raise BundleError("ncnn is not installed: pip install -r requirements.txt") from None
        n = usable_cpus()
        net = ncnn.Net()
        opt = net.opt
        opt.num_threads = int(threads) if threads else (1 if n <= 2 else n)
        opt.use_vulkan_compute = False
        for k in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                  "use_bf16_packed"):
            setattr(opt, k, False)
        opt.openmp_blocktime = 0
        bin_path = os.path.splitext(path)[0] + ".bin"
        if net.load_param(path) != 0 or net.load_model(bin_path) != 0:
            raise BundleError(f"{path}: NCNN cannot load this .param and its .bin")
        self.net, self._ncnn = net, ncnn
        self.input_name, self.output_name = cfg["input"]["name"], cfg["outputs"][0]["name"]
        self.dtype = np.float32
        self.batch = None  # NCNN has no batch dimension

    def _run_ncnn(self, x):
        a = np.ascontiguousarray(x[0], dtype=np.float32)  # ncnn.Mat wraps this memory: keep it until extract
        ex = self.net.create_extractor()
        if ex.input(self.input_name, self._ncnn.Mat(a)) != 0:
            raise BundleError(f"NCNN refused the input of shape {tuple(x.shape)}")
        ret, out = ex.extract(self.output_name)
        if ret != 0:
            raise BundleError(f"NCNN inference failed (status {ret})")
        return np.array(out)[None]

    def run_all(self, x):
        """Every output of an onnxruntime artifact, as float32 (a raw head's per-level maps)."""
        return [np.asarray(y, dtype=np.float32) for y in self.session.run(None, {self.input_name: x})]

    def _open_litert(self, cfg, path, threads):
        """LiteRT's interpreter (XNNPACK delegate on the CPU) on the default signature, as yolopt runs it: the
        usable cores as threads unless told otherwise."""
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise BundleError("ai-edge-litert is not installed: pip install -r requirements.txt") from None
        threads = threads or (cfg.get("runtime_options") or {}).get("threads") or usable_cpus()
        try:
            self.runner = Interpreter(model_path=path, num_threads=int(threads)).get_signature_runner()
        except (ValueError, RuntimeError) as e:
            raise BundleError(f"{path}: LiteRT cannot load this model ({e})") from None
        self.input_name = cfg["input"]["name"]
        self.output_names = [t["name"] for t in cfg["outputs"]]  # predictions, or boxes then scores
        details = self.runner.get_output_details()
        self.out_quant = {k: d["quantization"] if d["dtype"] != np.float32 else None for k, d in details.items()}
        self.dtype = np.float32

    def _run_litert(self, x):
        res = self.runner(**{self.input_name: x})
        parts = []
        for k in self.output_names:
            y, q = res[k], self.out_quant.get(k)
            parts.append((y.astype(np.float32) - q[1]) * q[0] if q else y.astype(np.float32, copy=False))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)

    def __call__(self, x):
        if self.runtime == "ncnn":
            return np.asarray(self._run_ncnn(x), dtype=np.float32)
        if self.batch and self.batch > 1:  # a fixed-batch artifact: fill the rest with zeros
            x = np.concatenate([x, np.zeros((self.batch - 1, *x.shape[1:]), x.dtype)])
        if self.runtime == "litert":
            return np.asarray(self._run_litert(x), dtype=np.float32)
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


def candidates(maps, strides, anchors, conf_thres):
    """A raw head's per-level logit maps (1, na*(5+nc), ny, nx) -> (K, 5+nc) rows [cx, cy, w, h, obj, class probs]
    in input pixels, decoded only for the cells whose objectness can pass conf_thres (yolopt's ops.decode_raw)."""
    thr = math.log(conf_thres / (1 - conf_thres)) - 1e-3 if 0 < conf_thres < 1 else (-math.inf if conf_thres <= 0
                                                                                      else math.inf)
    rows = []
    for m, stride, anc in zip(maps, strides, anchors):
        anc = np.asarray(anc, np.float32)
        na = len(anc)
        _, c, ny, nx = m.shape
        v = m[0].reshape(na, c // na, ny, nx)
        a, y, x = np.nonzero(v[:, 4] > thr)
        if not len(a):
            continue
        s = (1.0 / (1.0 + np.exp(-v[a, :, y, x], dtype=np.float32))).astype(np.float32)
        grid = np.stack((x, y), -1).astype(np.float32) - np.float32(0.5)
        xy = (s[:, :2] * 2 + grid) * np.float32(stride)
        wh = (s[:, 2:4] * 2) ** 2 * anc[a]
        rows.append(np.concatenate((xy, wh, s[:, 4:]), -1))
    return np.concatenate(rows, 0) if rows else np.zeros((0, maps[0].shape[1] // len(anchors[0])), np.float32)


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


def usable_cpus():
    """The cores this process may run on: its affinity, capped by a cgroup CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def recommended_workers(cfg):
    """The pipelines the bundle's numbers were measured with (deploy.json), else 1."""
    opts = cfg.get("runtime_options") or {}
    rep = cfg.get("report") if isinstance(cfg.get("report"), dict) else {}
    n = opts.get("workers") or rep.get("streams") or 1
    return max(1, int(n))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Detect objects in images and videos with the model of this deploy bundle (settings from "
                    "deploy.json next to this script). Prints one line per image or frame and its boxes; --json "
                    "writes them.",
        epilog="example: python infer.py bus.jpg photos/ --json out.json --workers 2 --threads 1")
    ap.add_argument("sources", nargs="+", help="image or video files, folders (searched recursively) or glob patterns")
    ap.add_argument("--json", metavar="PATH", help="write the detections as JSON: per image (per frame of a video) "
                    "a list of {xyxy, conf, cls, name} in original-image pixels")
    ap.add_argument("--conf", type=float, help="score threshold, objectness x class (default: deploy.json's)")
    ap.add_argument("--iou", type=float, help="NMS IoU threshold (default: deploy.json's)")
    ap.add_argument("--max-det", type=int, help="at most this many boxes per image (default: deploy.json's)")
    ap.add_argument("--threads", type=int, help="intra-op threads of the runtime, per worker (default: deploy.json "
                    "runtime_options; else the usable cores shared by the workers, or the runtime's own for one)")
    ap.add_argument("--workers", type=int, help="worker processes, each with its own runtime session (default: the "
                    "pipelines deploy.json recommends, at most the usable cores); the output is in input order "
                    "whatever the number")
    ap.add_argument("--config", default=os.path.join(HERE, "deploy.json"), help="bundle settings (default: "
                    "deploy.json next to this script)")
    ap.add_argument("--quiet", action="store_true", help="print only the one-line summary of each image")
    return ap.parse_args(argv)


class Detector:
    """One pipeline: read -> letterbox -> model -> NMS -> boxes in original pixels, as JSON-ready records."""

    def __init__(self, cfg, settings):
        self.cfg = cfg
        self.conf, self.iou, self.max_det = settings["conf"], settings["iou"], settings["max_det"]
        self.names = cfg["names"]
        self.model = Model(cfg, settings["threads"])

    def __call__(self, path, frame, im):
        """(record or None, warning or None, ms) of one image (``im`` None: read from ``path``) or video frame."""
        if im is None:
            im = read_image(path)
            if im is None:
                return None, f"{path}: not a readable image, skipped", 0.0
        t0 = time.perf_counter()
        padded, gain, pad = letterbox(im, self.cfg)
        raw = self.cfg.get("raw_head")
        y = None if raw else self.model(to_input(padded, self.model.dtype))
        if raw:  # boxes decoded here, only for the cells that can pass the threshold
            maps = self.model.run_all(to_input(padded, self.model.dtype))
            det = decode(candidates(maps, raw["strides"], raw["anchors"], self.conf), self.conf, self.iou,
                         self.max_det)
        elif self.cfg.get("end2end"):
            det = decode_end2end(y, self.conf, self.max_det)
        else:
            det = decode(y[0], self.conf, self.iou, self.max_det)
        det = to_original(det, gain, pad, im.shape[:2])
        ms = (time.perf_counter() - t0) * 1e3
        names = self.names
        dets = [{"xyxy": [float(v) for v in d[:4]], "conf": float(d[4]), "class": int(d[5]),
                 "name": names[int(d[5])] if int(d[5]) < len(names) else str(int(d[5]))} for d in det]
        rec = {"image": path}
        if frame is not None:
            rec["frame"] = frame
        rec.update({"width": int(im.shape[1]), "height": int(im.shape[0]), "detections": dets})
        return rec, None, ms


def worker_main(conn, cfg, settings, inherited=()):
    """A worker process: its own Detector; tasks in, results out on ``conn``, until None or the pipe closes.
    ``inherited``: the main process's pipe ends a forked worker holds copies of, closed here so that the main
    process dying closes the pipe (the worker then stops)."""
    for c in inherited:
        c.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    try:
        detector = Detector(cfg, settings)
    except BundleError as e:
        conn.send(("error", str(e)))
        return
    except Exception as e:  # the runtime refusing the model, say: one line, not a traceback per worker
        conn.send(("error", f"{type(e).__name__}: {e}".splitlines()[0]))
        return
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        idx, path, frame, im = task
        try:
            msg = ("result", idx, detector(path, frame, im))
        except Exception as e:
            msg = ("error", f"{path}: {type(e).__name__}: {e}".splitlines()[0])
        try:
            conn.send(msg)
        except OSError:  # the main process is gone: nobody to answer
            return
        if msg[0] == "error":
            return


def _death(proc):
    proc.join(2)
    code = proc.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class WorkerPool:
    """``n`` worker processes, one pipe each. Images go out as paths (two queued per worker, so none waits
    between images), video frames as pixels (one at a time, so a large frame never blocks a pipe both ways)."""

    def __init__(self, n, cfg, settings):
        fork = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if fork else "spawn")
        self.procs, self.conns, self.sent = [], [], 0
        for _ in range(n):
            parent, child = ctx.Pipe()
            inherited = (*self.conns, parent) if fork else ()
            p = ctx.Process(target=worker_main, args=(child, cfg, settings, inherited), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)

    def run(self, items, emit):
        """Send every task of ``items`` out, call ``emit(path, frame, result)`` in input order."""
        n = len(self.procs)
        queued = [[] for _ in range(n)]  # per worker: (index, carries pixels) in flight
        meta, done = {}, {}
        items = iter(items)
        nxt, out_pos, done_count = None, 0, 0
        exhausted = False
        while True:
            for w in range(n):  # feed every worker that has room
                while not exhausted:
                    if nxt is None:
                        try:
                            nxt = next(items)
                        except StopIteration:
                            exhausted = True
                            break
                    big = nxt[2] is not None
                    if queued[w] and (big or len(queued[w]) >= 2 or queued[w][-1][1]):
                        break
                    idx = self.sent
                    self.sent += 1
                    meta[idx] = (nxt[0], nxt[1])
                    self._send(w, (idx, *nxt))
                    queued[w].append((idx, big))
                    nxt = None
            if exhausted and not any(queued):
                break
            ready = wait([c for c, q in zip(self.conns, queued) if q] + [p.sentinel for p in self.procs])
            for w, c in enumerate(self.conns):
                if c not in ready:
                    continue
                try:
                    msg = c.recv()
                except (EOFError, OSError):
                    self._died(w, done_count)
                if msg[0] == "error":
                    self.close()
                    raise BundleError(msg[1])
                _, idx, res = msg
                queued[w] = [q for q in queued[w] if q[0] != idx]
                done[idx] = res
            for w, p in enumerate(self.procs):
                if p.sentinel in ready:  # gone before it was told to stop: its own error, else killed
                    self._raise_error(w)
                    self._died(w, done_count)
            while out_pos in done:  # emit in input order
                path, frame = meta.pop(out_pos)
                emit(path, frame, done.pop(out_pos))
                out_pos += 1
                done_count += 1

    def _raise_error(self, w):
        """The error a worker sent before it exited, if it sent one."""
        try:
            while self.conns[w].poll():
                msg = self.conns[w].recv()
                if msg[0] == "error":
                    self.close()
                    raise BundleError(msg[1])
        except (EOFError, OSError):
            pass

    def _send(self, w, task):
        try:
            self.conns[w].send(task)
        except (BrokenPipeError, EOFError, OSError):
            self._died(w, None)

    def _died(self, w, done_count):
        how = _death(self.procs[w])
        self.close()
        after = f" after {done_count} image(s)" if done_count is not None else ""
        raise WorkerDied(f"worker {w + 1} of {len(self.procs)} (pid {self.procs[w].pid}) {how}{after}; the run "
                         "stopped (no --json written)")

    def close(self):
        """Stop the workers: a None each, then terminate whoever is left."""
        for c in self.conns:
            try:
                c.send(None)
            except (OSError, EOFError, ValueError):
                pass
        for p in self.procs:
            p.join(1)
            if p.exitcode is None:
                p.kill()
                p.join(1)
        for c in self.conns:
            c.close()


class WorkerDied(BundleError):
    """A worker process died (killed, out of memory): the run stops."""


class JsonWriter:
    """The --json list written record by record (the same text as json.dump(records, indent=1)), renamed into
    place only when complete."""

    def __init__(self, path):
        self.path, self.tmp, self.n = path, f"{path}.tmp", 0
        self.f = open(self.tmp, "w", encoding="utf-8")

    def add(self, rec):
        text = "\n".join(" " + line for line in json.dumps(rec, indent=1).splitlines())
        self.f.write(("[\n" if self.n == 0 else ",\n") + text)
        self.n += 1

    def finish(self):
        self.f.write("\n]" if self.n else "[]")
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        self.f.close()
        try:
            os.remove(self.tmp)
        except OSError:
            pass


def settings_of(args, cfg):
    """conf / iou / max_det / threads / workers from the command line over deploy.json; bad values are errors."""
    conf = cfg.get("conf", 0.25) if args.conf is None else args.conf
    iou = cfg.get("iou", 0.45) if args.iou is None else args.iou
    max_det = cfg.get("max_det", 300) if args.max_det is None else args.max_det
    if not (0 <= conf <= 1 and 0 <= iou <= 1) or max_det < 1:
        raise BundleError(f"--conf {conf} and --iou {iou} must be in [0, 1], --max-det {max_det} at least 1")
    if args.threads is not None and args.threads < 1:
        raise BundleError(f"--threads {args.threads}: give a positive number")
    cores = usable_cpus()
    workers = min(recommended_workers(cfg), cores) if args.workers is None else args.workers
    if workers < 1:
        raise BundleError(f"--workers {workers}: give at least 1 worker process")
    if workers > cores:
        print(f"warning: --workers {workers} is more than the {cores} usable CPU core(s); the workers will take "
              "turns on them", file=sys.stderr)
    threads = args.threads or (cfg.get("runtime_options") or {}).get("threads")
    if not threads and workers > 1:
        threads = max(1, cores // workers)
    return {"conf": conf, "iou": iou, "max_det": max_det, "threads": threads, "workers": workers}


def run(args):
    """Detect on every image / frame of ``args.sources``; returns how many were processed."""
    cfg = load_config(args.config)
    settings = settings_of(args, cfg)
    conf = settings["conf"]
    baked = cfg.get("baked_nms") or {}
    if cfg.get("end2end") and baked.get("conf") is not None and conf < baked["conf"]:
        print(f"warning: the model ran NMS itself at conf {baked['conf']}; --conf {conf} cannot bring back "
              "boxes under that", file=sys.stderr)
    paths = list_images(args.sources)
    writer = JsonWriter(args.json) if args.json else None
    count = 0

    def emit(path, frame, result):
        nonlocal count
        rec, warning, ms = result
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
            return
        count += 1
        if writer:
            writer.add(rec)
        counts = {}
        for d in rec["detections"]:
            counts[d["name"]] = counts.get(d["name"], 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no detections"
        where = path if frame is None else f"{path} frame {frame}"
        print(f"{where}: {rec['width']}x{rec['height']}, {summary} ({ms:.1f} ms)")
        if not args.quiet:
            for d in rec["detections"]:
                x1, y1, x2, y2 = d["xyxy"]
                print(f"  {d['name']:<16} {d['conf']:.3f}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")

    try:
        if settings["workers"] == 1:  # in this process: nothing to hand over
            detector = Detector(cfg, settings)
            for path, frame, im in tasks(paths):
                emit(path, frame, detector(path, frame, im))
        else:
            pool = WorkerPool(settings["workers"], cfg, settings)
            try:
                pool.run(tasks(paths), emit)
            finally:
                pool.close()
    except BaseException:
        if writer:
            writer.abort()
        raise
    if writer:
        writer.finish()
    return count


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
