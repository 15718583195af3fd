"""End-to-end timing step: decode, letterbox, model, NMS and rescale over real frames, stage by stage."""

from __future__ import annotations

import time

from ..data.preprocess import preprocess
from ..data.sources import FrameCycle
from ..ops.postprocess import NMSOptions, select, to_original
from ..runtime.backends import predict_above

STAGES = ("decode", "preprocess", "inference", "nms", "postprocess")


class EndToEnd:
    """One full frame -> detections step over a batch of real frames: decode, letterbox, model,
    NMS and rescale (the same :func:`preprocess` and :func:`~yolopt.ops.postprocess.postprocess` steps as
    ``yolopt predict``, timed one by one).

    ``images``: image files, folders, globs and video files (a video is decoded frame by frame, and
    decoding is part of the ``decode`` stage); they are cycled over, so any number of calls can be timed.
    Each call appends its per-stage times (ms) to ``stage_samples``.
    """

    def __init__(self, backend, images, imgsz, batch: int, conf: float = 0.25, iou: float = 0.45,
                 max_det: int = 300, mode: str = "square"):
        self.backend = backend
        self.mode = mode  # letterbox: square (fixed input) or rect (dynamic artifacts, minimal padding)
        self.frames = FrameCycle(images)
        self.imgsz = imgsz
        self.batch = batch
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.detections = 0
        self.last: list = []
        self.counts: list[int] = []  # detections per frame, in call order
        self.stage_samples: dict[str, list[float]] = {k: [] for k in STAGES}

    @property
    def cycle_frames(self) -> int | None:
        """Frames in one pass over the sources (None: a video whose length its container does not give)."""
        return self.frames.cycle_frames

    def __call__(self):
        t0 = time.perf_counter()
        ims = [self.frames() for _ in range(self.batch)]
        t1 = time.perf_counter()
        x, metas = preprocess(ims, self.imgsz if self.mode == "square" else max(self.imgsz), mode=self.mode,
                              pixels=self.backend.uint8_input)
        t2 = time.perf_counter()
        pred = predict_above(self.backend, x, self.conf)
        t3 = time.perf_counter()
        dets = select(pred, NMSOptions(self.conf, self.iou, self.max_det), end2end=self.backend.end2end,
                      batch=len(ims))
        t4 = time.perf_counter()
        self.last = to_original(dets, metas)
        t5 = time.perf_counter()
        self.counts += [len(d) for d in self.last]
        self.detections += sum(len(d) for d in self.last)
        for k, (a, b) in zip(STAGES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
            self.stage_samples[k].append((b - a) * 1e3)


