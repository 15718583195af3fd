"""High-level prediction: images and videos in, detections out (and annotated images / videos, labels, JSON).

    >>> dets = yolopt.predict(model, ["bus.jpg", "clip.mp4"])   # one Detections per image and per video frame
    >>> run = predict_video(backend, "clip.mp4", save=PredictOutputs("runs/predict/exp"))   # annotated video + timing

Every frame goes through the one path: ``data.preprocess`` -> backend -> ``ops.postprocess``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from .data.images import read_image
from .runtime.backends import predict_above
from .data.preprocess import preprocess
from .data.sources import VideoInput, VideoReader, expand_sources
from .errors import YoloptError
from .fileio import atomic_write
from .ops.nms import PREDICT_NMS, NMSOptions
from .ops.postprocess import postprocess

log = logging.getLogger("yolopt")

FRAME_STAGES = ("decode", "preprocess", "inference", "nms", "write")


@dataclass
class Detections:
    """Detections of one image (or one video frame), boxes in original-image pixels."""

    image: str  # the image file, or the video / stream / camera a frame came from
    width: int
    height: int
    xyxy: np.ndarray  # (n, 4)
    conf: np.ndarray  # (n,)
    cls: np.ndarray  # (n,) int
    names: list[str] = field(default_factory=list, repr=False)
    frame: int | None = None  # video frames: index in the source, from 0
    timing_ms: dict | None = field(default=None, repr=False)  # video frames: ms per stage (FRAME_STAGES)

    def __len__(self) -> int:
        return len(self.conf)

    def name(self, k) -> str:
        return self.names[int(k)] if int(k) < len(self.names) else str(int(k))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in self.cls:
            out[self.name(k)] = out.get(self.name(k), 0) + 1
        return out

    def to_dict(self, in_video: bool = False) -> dict:
        """JSON record; ``in_video``: a frame inside its video's record (no image / size, which the video has)."""
        d = {} if in_video else {"image": self.image, "width": self.width, "height": self.height}
        if self.frame is not None:
            d["frame"] = self.frame
        if self.timing_ms is not None:
            d["timing_ms"] = {k: round(v, 3) for k, v in self.timing_ms.items()}
        d["detections"] = [
            {"xyxy": [round(float(v), 2) for v in box], "conf": round(float(c), 5), "class": int(k),
             "name": self.name(k)}
            for box, c, k in zip(self.xyxy, self.conf, self.cls)
        ]
        return d

    def to_yolo(self, save_conf: bool = False) -> str:
        """YOLO-format label text: one ``class cx cy w h [conf]`` line per box, normalised to the image size."""
        lines = []
        wh = np.array([self.width, self.height, self.width, self.height], dtype=np.float64)
        for (x1, y1, x2, y2), c, k in zip(self.xyxy.astype(np.float64), self.conf, self.cls):
            cx, cy, w, h = np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]) / wh
            vals = [int(k), cx, cy, w, h] + ([float(c)] if save_conf else [])
            lines.append(" ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vals))
        return "".join(line + "\n" for line in lines)


def _palette(k: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(k * 7919 + 17)
    return tuple(int(v) for v in rng.integers(40, 255, 3))


def draw(im: np.ndarray, det: Detections) -> np.ndarray:
    """Annotated copy of a BGR image."""
    out = im.copy()
    lw = max(round(sum(im.shape[:2]) / 2 * 0.003), 2)
    for (x1, y1, x2, y2), c, k in zip(det.xyxy.astype(int), det.conf, det.cls):
        color = _palette(int(k))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
        label = f"{det.name(k)} {c:.2f}"
        fs = lw / 3
        (tw, th), _ = cv2.getTextSize(label, 0, fs, max(lw - 1, 1))
        y0 = y1 - th - 3 if y1 - th - 3 >= 0 else y1 + th + 3
        cv2.rectangle(out, (x1, y0), (x1 + tw, y1), color, -1, cv2.LINE_AA)
        cv2.putText(out, label, (x1, y1 - 2 if y0 < y1 else y0 - 2), 0, fs, (255, 255, 255), max(lw - 1, 1), cv2.LINE_AA)
    return out


_warned: set = set()


def end2end_warning(backend, conf: float, iou: float) -> str | None:
    """What an artifact exported with ``--nms`` cannot do at these thresholds (one line), or None.

    Its NMS ran inside the graph at the baked-in thresholds: a higher ``conf`` still filters, a lower
    one cannot bring back the boxes under the baked-in one, and a different ``iou`` has no effect.
    """
    if not getattr(backend, "end2end", False):
        return None
    nms = getattr(backend, "nms", None) or {}
    parts = []
    c0, i0 = nms.get("conf"), nms.get("iou")
    if c0 is not None and conf < float(c0) - 1e-9:
        parts.append(f"--conf {conf:g} is below the conf {float(c0):g} baked into it, so boxes scoring under "
                     f"{float(c0):g} cannot be returned")
    if i0 is not None and abs(iou - float(i0)) > 1e-9:
        parts.append(f"--iou {iou:g} has no effect (its NMS ran at IoU {float(i0):g})")
    if not parts:
        return None
    return (f"{backend.path}: exported with --nms: " + "; ".join(parts)
            + "; export again with the thresholds you need, or without --nms")


def _warn_end2end(backend, conf: float, iou: float) -> None:
    msg = end2end_warning(backend, conf, iou)
    if msg and msg not in _warned:
        _warned.add(msg)
        log.warning("%s", msg)


def _detections(det, im: np.ndarray, image: str, names: list[str], frame: int | None = None,
                timing: dict | None = None) -> Detections:
    return Detections(image, im.shape[1], im.shape[0], det[:, :4].numpy(), det[:, 4].numpy(),
                      det[:, 5].numpy().astype(int), names, frame, timing)


def predict(
    model,
    source: str | Path | Iterable,
    imgsz: int | tuple[int, int] | None = None,
    nms: NMSOptions = PREDICT_NMS,
    *,
    conf: float | None = None,
    max_frames: int | None = None,
    letterbox: str | None = None,
) -> list[Detections]:
    """Detect objects in image files and videos (paths, folders or globs; video frames come one by one).

    ``model``: a model file, an in-memory ``DetectionModel`` or a :mod:`yolopt.runtime` backend.
    Unreadable images are skipped with a warning. Each image is letterboxed to an ``imgsz``
    square (pad 114), exactly like upstream YOLOv5's detect.py at a fixed input size. A video gives
    one :class:`Detections` per frame (``frame`` set; at most ``max_frames`` of them); streams and
    cameras need ``max_frames`` here (or :func:`predict_video`, which handles Ctrl-C). ``nms``: the
    NMS options; ``conf`` (convenience) replaces ``nms.conf``. ``imgsz`` / ``letterbox`` (``square`` or
    ``rect``): None takes the model's own (:func:`input_of`).
    """
    from .runtime import open as open_backend

    if conf is not None:
        nms = replace(nms, conf=conf)
    backend = open_backend(model)
    _warn_end2end(backend, nms.conf, nms.iou)
    imgsz, mode = input_of(backend, imgsz, letterbox)
    names = list(getattr(backend, "names", []))
    results = []
    for item in expand_sources(source):
        if isinstance(item, VideoInput):
            if item.kind != "video" and max_frames is None:
                raise ValueError(f"{item}: a live {item.kind} never ends: give max_frames, or use predict_video")
            run = predict_video(backend, item, imgsz, nms, max_frames=max_frames, progress=False, letterbox=mode)
            results.extend(run.frames)
            continue
        im = read_image(item)
        if im is None:
            log.warning("%s: corrupt or unreadable image, skipped", item)
            continue
        x, metas = preprocess([im], imgsz, mode=mode, pixels=backend.uint8_input)
        det = postprocess(predict_above(backend, x, nms.conf), metas, nms, end2end=backend.end2end)[0]
        results.append(_detections(det, im, str(item), names))
    return results


def class_ids(values: list[str] | None, names: list[str]) -> list[int] | None:
    """Class ids or names -> sorted ids of the model's classes (None when no filter is given)."""
    if not values:
        return None
    out = []
    for v in values:
        if str(v).lstrip("-").isdigit():
            k = int(v)
            if not 0 <= k < len(names):
                raise YoloptError(f"class {v}: the model has class ids 0-{len(names) - 1}", fields=("classes",))
        elif v in names:
            k = names.index(v)
        else:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise YoloptError(f"class {v}: no class of that name in the model ({shown})", fields=("classes",))
        out.append(k)
    return sorted(set(out))


def input_of(backend, imgsz=None, letterbox: str | None = None) -> tuple[int | tuple[int, int], str]:
    """``(imgsz, letterbox)`` to feed ``backend``: what is given, else the model's own (an exported artifact's size
    from its metadata, else 640; rect for a dynamic artifact, square for a fixed one and for PyTorch), the size
    rounded to the stride (a fixed-shape artifact always gets its own)."""
    if letterbox not in (None, "square", "rect"):
        raise YoloptError(f"letterbox {letterbox!r}: choose square or rect", fields=("letterbox",))
    if letterbox == "rect" and backend.letterbox_mode == "square":
        raise YoloptError(f"{backend.path}: a fixed-shape artifact takes only a square letterbox", fields=("letterbox",))
    size = backend.resolve_imgsz(backend.default_imgsz if imgsz is None else imgsz)
    return size, letterbox or backend.default_letterbox()


def predict_images(model, files: list, imgsz: int | tuple[int, int] | None = None, nms: NMSOptions = PREDICT_NMS,
                   workers: int = 1, letterbox: str | None = None) -> list[Detections]:
    """:func:`predict` on image files; with ``workers`` > 1 in contiguous chunks, one cloned backend per
    worker thread (``model``: a :mod:`yolopt.runtime` backend), results in input order."""
    if workers > 1 and len(files) > 1:
        from concurrent.futures import ThreadPoolExecutor

        n = min(workers, len(files))
        step = -(-len(files) // n)
        chunks = [files[i:i + step] for i in range(0, len(files), step)]
        replicas = [model] + [model.clone() for _ in range(len(chunks) - 1)]
        with ThreadPoolExecutor(len(chunks)) as pool:
            parts = list(pool.map(lambda a: predict(a[0], a[1], imgsz, nms, letterbox=letterbox),
                                  zip(replicas, chunks)))
        return [r for part in parts for r in part]
    return predict(model, files, imgsz, nms, letterbox=letterbox)


@dataclass
class VideoRun:
    """One video / stream / camera through the model: per-frame detections and timing."""

    source: str
    kind: str  # video | stream | camera
    width: int
    height: int
    source_fps: float | None  # what the container (or camera) says
    frames: list[Detections] = field(default_factory=list)
    wall_s: float = 0.0  # first decode to last write
    video: Path | None = None  # the annotated video
    interrupted: bool = False  # stopped with Ctrl-C

    @property
    def fps(self) -> float:
        """Frames processed per second, end to end (decode, pre-process, inference, NMS, annotate + write)."""
        return len(self.frames) / self.wall_s if self.wall_s > 0 else 0.0

    def timing_ms(self) -> dict[str, float]:
        """Mean ms per frame of each stage, and their total."""
        if not self.frames:
            return {k: 0.0 for k in (*FRAME_STAGES, "total")}
        out = {k: float(np.mean([f.timing_ms[k] for f in self.frames])) for k in FRAME_STAGES}
        out["total"] = sum(out.values())
        return out

    def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for f in self.frames:
            for k, v in f.counts().items():
                total[k] = total.get(k, 0) + v
        return total

    def to_dict(self) -> dict:
        return {"video": self.source, "kind": self.kind, "width": self.width, "height": self.height,
                "source_fps": self.source_fps, "frame_count": len(self.frames), "fps": round(self.fps, 3),
                "wall_s": round(self.wall_s, 4), "timing_ms": {k: round(v, 3) for k, v in self.timing_ms().items()},
                "annotated_video": str(self.video) if self.video else None, "interrupted": self.interrupted,
                "frames": [f.to_dict(in_video=True) for f in self.frames]}

    def summary(self) -> str:
        t = self.timing_ms()
        counts = ", ".join(f"{v} {k}" for k, v in self.counts().items()) or "no detections"
        src = f"{self.source_fps:g} fps source" if self.source_fps else "source fps unknown"
        return (f"{self.source}: {len(self.frames)} frames {self.width}x{self.height} ({src}) in {self.wall_s:.2f} s = "
                f"{self.fps:.1f} fps end to end; per frame: decode {t['decode']:.1f} ms, pre-process "
                f"{t['preprocess']:.1f} ms, inference {t['inference']:.1f} ms, NMS {t['nms']:.1f} ms, write "
                f"{t['write']:.1f} ms; {counts}")


VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


def video_output_path(out_dir: str | Path, item: VideoInput) -> Path:
    """Where the annotated copy of ``item`` goes: same name and container when OpenCV can write it, else .mp4."""
    suffix = Path(item.spec).suffix.lower() if item.kind == "video" else ""
    return Path(out_dir) / f"{item.name}{suffix if suffix in VIDEO_FOURCC else '.mp4'}"


class _VideoSink:
    """Annotated frames into a hidden temporary file next to ``path``, moved into place by :meth:`finish`
    (atomically: a reader never sees half a video under the final name)."""

    def __init__(self, path: Path, fps: float | None):
        self.path = Path(path)
        self.fps = fps or 30.0
        self.writer = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=self.path.suffix, dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.frames = 0

    def write(self, im: np.ndarray) -> None:
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC.get(self.path.suffix.lower(), "mp4v"))
            self.size = (im.shape[1], im.shape[0])
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                self.abort()
                raise YoloptError(f"{self.path}: OpenCV cannot write this video format here")
        if (im.shape[1], im.shape[0]) != self.size:  # a stream that changed resolution
            im = cv2.resize(im, self.size)
        self.writer.write(im)
        self.frames += 1

    def finish(self) -> Path | None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if not self.frames:
            self.tmp.unlink(missing_ok=True)
            return None
        return atomic_write(self.path, lambda t: os.replace(self.tmp, t))

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        self.tmp.unlink(missing_ok=True)


def write_labels(det: Detections, path: str | Path, save_conf: bool = False) -> Path:
    """``det`` as a YOLO-format label file (atomic)."""
    text = det.to_yolo(save_conf)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


@dataclass(frozen=True)
class PredictOutputs:
    """Where :func:`predict_video` writes. ``out_dir``: the annotated video (same fps and size; see
    :func:`video_output_path`). ``labels_dir``: a YOLO label file ``<name>_<frame>.txt`` for every frame
    with detections (as upstream), with the confidence on each line when ``save_conf``."""

    out_dir: str | Path | None = None
    labels_dir: str | Path | None = None
    save_conf: bool = False


def predict_video(
    model,
    source: VideoInput | str,
    imgsz: int | tuple[int, int] | None = None,
    nms: NMSOptions = PREDICT_NMS,
    save: PredictOutputs | None = None,
    max_frames: int | None = None,
    progress: bool | None = None,
    letterbox: str | None = None,
) -> VideoRun:
    """Run a video file, stream or camera through the model frame by frame.

    ``save``: the annotated video and per-frame label files to write (:class:`PredictOutputs`; none by default).
    Each frame's :class:`Detections` has ``frame`` and ``timing_ms`` (decode, preprocess, inference, nms,
    write). Ctrl-C stops a run cleanly: what was processed is kept and written (``interrupted``).
    """
    from tqdm import tqdm

    from .runtime import open as open_backend

    save = save or PredictOutputs()
    out_dir, labels_dir = save.out_dir, save.labels_dir
    backend = open_backend(model)
    _warn_end2end(backend, nms.conf, nms.iou)
    imgsz, mode = input_of(backend, imgsz, letterbox)
    names = list(getattr(backend, "names", []))
    reader = VideoReader(source)
    item = reader.source
    run = VideoRun(item.spec, item.kind, reader.width, reader.height, reader.fps)
    sink = _VideoSink(video_output_path(out_dir, item), reader.fps) if out_dir else None
    total = reader.frame_count if max_frames is None else min(max_frames, reader.frame_count or max_frames)
    bar = tqdm(total=total, desc=item.name, unit="frame", disable=(None if progress is None else not progress),
               leave=False)
    t_start = time.perf_counter()
    try:
        while max_frames is None or len(run.frames) < max_frames:
            im = reader.read()
            if im is None:
                break
            t_decode = reader.read_ms
            t1 = time.perf_counter()
            x, metas = preprocess([im], imgsz, mode=mode, pixels=backend.uint8_input)
            t2 = time.perf_counter()
            pred = predict_above(backend, x, nms.conf)
            t3 = time.perf_counter()
            det = postprocess(pred, metas, nms, end2end=backend.end2end)[0]
            t4 = time.perf_counter()
            d = _detections(det, im, item.spec, names, frame=reader.index - 1)
            if sink is not None:
                sink.write(draw(im, d))
            if labels_dir is not None and len(d):
                write_labels(d, Path(labels_dir) / f"{item.name}_{d.frame}.txt", save.save_conf)
            t5 = time.perf_counter()
            d.timing_ms = {"decode": t_decode, "preprocess": (t2 - t1) * 1e3, "inference": (t3 - t2) * 1e3,
                           "nms": (t4 - t3) * 1e3, "write": (t5 - t4) * 1e3}
            run.frames.append(d)
            bar.update(1)
        if not run.frames:
            raise YoloptError(f"{item.spec}: no frame could be decoded")
    except KeyboardInterrupt:
        run.interrupted = True
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    finally:
        bar.close()
        reader.close()
        run.wall_s = time.perf_counter() - t_start
    if sink is not None:
        run.video = sink.finish()
    return run


def write_outputs(results: list, out_dir: str | Path | None, json_path: str | Path | None,
                  labels_dir: str | Path | None = None, save_conf: bool = False) -> None:
    """Annotated images into ``out_dir``, YOLO label files (``<stem>.txt``, for images with detections) into
    ``labels_dir``, and the JSON list (:func:`json_records`) into ``json_path``; atomic writes.

    ``results``: :class:`Detections` and :class:`VideoRun` in source order. Videos only go into the JSON
    here: :func:`predict_video` writes their annotated video and labels as it goes.
    """
    images = [r for r in results if isinstance(r, Detections) and r.frame is None]
    if out_dir:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for r in images:
            im = read_image(r.image)
            target = out_dir / Path(r.image).name
            if Path(r.image).resolve() == target.resolve():
                raise YoloptError(f"{target}: the annotated image would overwrite the input image", fields=("out",))
            ext = target.suffix or ".jpg"
            ok, buf = cv2.imencode(ext, draw(im, r))
            if ok:
                atomic_write(target, lambda tmp, b=buf: Path(tmp).write_bytes(b.tobytes()))
    if labels_dir:
        for r in images:
            if len(r):
                write_labels(r, Path(labels_dir) / f"{Path(r.image).stem}.txt", save_conf)
    if json_path:
        payload = json.dumps(json_records(results), indent=1)
        atomic_write(json_path, lambda tmp: Path(tmp).write_text(payload))


def json_records(results: list) -> list[dict]:
    """The predict JSON: one record per image (and per loose video frame), one per :class:`VideoRun`."""
    return [r.to_dict() for r in results]
