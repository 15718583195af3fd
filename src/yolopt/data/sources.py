"""Where frames come from: image files, video files, network streams and camera indices.

    >>> items = expand_sources(["bus.jpg", "clips/", "clip.mp4", "rtsp://cam.local/live", "0"])
    >>> # -> Paths (images) and VideoInput (kind "video" | "stream" | "camera"), in the order given
    >>> with VideoReader(items[2]) as v:
    ...     for index, frame in v:          # BGR uint8 frames
    ...         ...

Everything that cannot be read is reported as one :class:`~yolopt.errors.YoloptError` line that
names the source: a missing file, a file that is neither an image nor a video, a video OpenCV
cannot decode, an unreachable stream, or a camera index on a machine without that camera.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import YoloptError
from .images import IMAGE_SUFFIXES, is_image, read_image

VIDEO_SUFFIXES = {".asf", ".avi", ".flv", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".webm", ".wmv"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")
OPEN_TIMEOUT_MS = 10_000  # a stream that has not answered after this long is reported as unreachable
READ_TIMEOUT_MS = 10_000

# FFmpeg (inside OpenCV) prints its own errors ("[tcp @ 0x..] Connection refused") unless told not to;
# yolopt reports the problem itself, in one line. Read once, when OpenCV first starts FFmpeg.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def is_video(path: str | Path) -> bool:
    return Path(str(path)).suffix.lower() in VIDEO_SUFFIXES


def is_stream(spec: str | Path) -> bool:
    return str(spec).lower().startswith(STREAM_SCHEMES)


def is_camera(spec: str | Path) -> bool:
    """A camera index ("0", "1", ...): digits that do not name an existing file."""
    s = str(spec)
    return s.isdigit() and not Path(s).exists()


@dataclass(frozen=True)
class VideoInput:
    """A source of frames: ``spec`` as given (path, URL or camera index) and its ``kind``."""

    spec: str
    kind: str  # "video" | "stream" | "camera"

    @property
    def name(self) -> str:
        """A file-name stem for outputs made from this source."""
        if self.kind == "video":
            return Path(self.spec).stem
        if self.kind == "camera":
            return f"camera{self.spec}"
        tail = self.spec.split("://", 1)[-1]
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tail).strip("._")
        return ("stream_" + safe)[:80] if safe else "stream"

    def __str__(self) -> str:
        return self.spec


def _media_in(paths) -> list[Path]:
    return [p for p in paths if p.is_file() and (is_image(p) or is_video(p))]


def expand_sources(sources: str | Path | list) -> list[Path | VideoInput]:
    """Files, folders (recursively sorted), glob patterns, stream URLs and camera indices -> images
    (``Path``) and videos / streams / cameras (:class:`VideoInput`), in the order given."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    out: list[Path | VideoInput] = []

    def add(p: Path) -> None:
        out.append(VideoInput(str(p), "video") if is_video(p) else p)

    for src in sources:
        s = str(src)
        if is_stream(s):
            out.append(VideoInput(s, "stream"))
            continue
        if is_camera(s):
            out.append(VideoInput(s, "camera"))
            continue
        if any(ch in s for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(s, recursive=True))
            if not matches:
                raise YoloptError(f"{s}: no files match this pattern")
            for p in _media_in(matches):
                add(p)
            continue
        p = Path(s)
        if p.is_dir():
            found = sorted(_media_in(p.rglob("*")))
            if not found:
                raise YoloptError(f"{p}: folder contains no images or videos")
            for q in found:
                add(q)
        elif p.is_file():
            if not (is_image(p) or is_video(p)):
                raise YoloptError(f"{p}: not an image or video file (images: {', '.join(sorted(IMAGE_SUFFIXES))}; "
                                  f"videos: {', '.join(sorted(VIDEO_SUFFIXES))}; or an rtsp:// URL or camera index)")
            add(p)
        else:
            raise YoloptError(f"{p}: no such file or folder")
    return out


@contextlib.contextmanager
def _quiet_opencv():
    """OpenCV's own warnings (V4L2 "can't open camera by index" ...) off while we open a capture."""
    import cv2

    lg = getattr(getattr(cv2, "utils", None), "logging", None)
    if lg is None:
        yield
        return
    old = lg.getLogLevel()
    lg.setLogLevel(lg.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        lg.setLogLevel(old)


def _backend_names(kind: str) -> list[str]:
    import cv2

    reg = cv2.videoio_registry
    ids = reg.getCameraBackends() if kind == "camera" else reg.getStreamBackends()
    return [reg.getBackendName(b) for b in ids]


def camera_problem(index: int) -> str | None:
    """Why camera ``index`` cannot be used here, or None when it may be (the open call decides)."""
    if not _backend_names("camera"):
        return "this OpenCV build has no camera support"
    if sys.platform.startswith("linux") and not Path(f"/dev/video{index}").exists():
        have = sorted(p.name for p in Path("/dev").glob("video[0-9]*"))
        return (f"no camera {index} on this machine (/dev/video{index} does not exist; "
                + (f"found {', '.join(have)})" if have else "it has no camera at all)"))
    return None


class VideoReader:
    """Frames of one video file, network stream or camera, through ``cv2.VideoCapture``.

    ``fps``, ``width``, ``height`` describe the source; ``frame_count`` is the container's count for a
    file (None for streams and cameras, or when the container does not say). Iterating yields
    ``(index, frame)`` until the source ends; :meth:`read` returns the next frame or None.
    """

    def __init__(self, source: VideoInput | str | Path):
        import cv2

        if not isinstance(source, VideoInput):
            items = expand_sources([source])
            if len(items) != 1 or not isinstance(items[0], VideoInput):
                raise YoloptError(f"{source}: not a video file, stream URL or camera index")
            source = items[0]
        self.source = source
        self.spec, self.kind = source.spec, source.kind
        if self.kind == "camera":
            why = camera_problem(int(self.spec))
            if why:
                raise YoloptError(f"{self.spec}: {why}; give a video file or an rtsp:// URL instead")
        elif self.kind == "stream":
            if not any(b in ("FFMPEG", "GSTREAMER") for b in _backend_names("stream")):
                raise YoloptError(f"{self.spec}: this OpenCV build cannot read network streams (no FFmpeg or "
                                  "GStreamer video I/O)")
        elif not Path(self.spec).is_file():
            raise YoloptError(f"{self.spec}: no such file")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
        target = int(self.spec) if self.kind == "camera" else self.spec
        with _quiet_opencv():
            cap = cv2.VideoCapture(target, cv2.CAP_ANY, params) if self.kind != "camera" else cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            why = {"video": "cannot decode this video (corrupt, or a codec this OpenCV build lacks)",
                   "stream": "could not open the stream (unreachable or refused, wrong URL, or a protocol this "
                             f"OpenCV build lacks; waited up to {OPEN_TIMEOUT_MS // 1000} s)",
                   "camera": "the camera exists but could not be opened (in use by another program, or no "
                             "permission)"}[self.kind]
            raise YoloptError(f"{self.spec}: {why}")
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0 < fps < 1000 else None
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if self.kind == "video" else 0
        self.frame_count = n if n > 0 else None
        self.index = 0  # frames read so far
        self.read_ms = 0.0  # time of the last read (decode, or waiting for a live frame)

    def read(self) -> np.ndarray | None:
        t0 = time.perf_counter()
        ok, frame = self._cap.read()
        self.read_ms = (time.perf_counter() - t0) * 1e3
        if not ok or frame is None or frame.size == 0:
            return None
        self.index += 1
        return frame

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield self.index - 1, frame

    def close(self) -> None:
        cap, self._cap = getattr(self, "_cap", None), None
        if cap is not None:
            cap.release()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()


def check_sources(items: list[Path | VideoInput]) -> None:
    """Open every video / stream / camera once, so a missing camera or a dead URL fails before any work."""
    for it in items:
        if isinstance(it, VideoInput):
            VideoReader(it).close()


class FrameCycle:
    """An endless supply of decoded frames from ``sources`` (images and videos, in order, then again):
    what ``bench --end2end`` times. Each call returns the next BGR frame; ``cycle_frames`` is the number
    of frames in one pass (known after the first pass through a video whose container does not say)."""

    def __init__(self, sources):
        self.items = sources if isinstance(sources, list) and all(
            isinstance(s, (Path, VideoInput)) for s in sources) else expand_sources(sources)
        if not self.items:
            raise YoloptError(f"{sources}: no images or videos")
        self._k = 0
        self._reader: VideoReader | None = None
        self.videos: list[dict] = []
        counts = []
        for it in self.items:
            if isinstance(it, VideoInput):
                with VideoReader(it) as v:  # fail now on a source that cannot be opened
                    self.videos.append({"source": it.spec, "kind": it.kind, "fps": v.fps, "width": v.width,
                                        "height": v.height, "frames": v.frame_count})
                    counts.append(v.frame_count)
            else:
                counts.append(1)
        self.cycle_frames = sum(counts) if all(c is not None for c in counts) else None

    def __call__(self) -> np.ndarray:
        for _ in range(2 * len(self.items) + 1):  # at most one wrap-around without any frame
            it = self.items[self._k % len(self.items)]
            if isinstance(it, VideoInput):
                if self._reader is None:
                    self._reader = VideoReader(it)
                frame = self._reader.read()
                if frame is not None:
                    return frame
                if self._reader.index == 0:
                    raise YoloptError(f"{it.spec}: no frame could be decoded")
                self._reader.close()
                self._reader = None
                self._k += 1
                continue
            im = read_image(it)
            self._k += 1
            if im is None:
                raise YoloptError(f"{it}: corrupt or unreadable image")
            return im
        raise YoloptError("no frame could be read from the sources")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
