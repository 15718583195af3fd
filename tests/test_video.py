"""Video files, streams and cameras: predict writes an annotated video + per-frame JSON, bench gives a real FPS."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run_cli

W, H, FPS = 320, 240, 10.0
# frame k shows bus.jpg when k is even, zidane.jpg when odd
N_FRAMES = 6


def _one_line_error(r, *needles):
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yolopt: error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def frames(shared):
    return [cv2.resize(cv2.imread(str(shared / "data" / "images" / n)), (W, H)) for n in ("bus.jpg", "zidane.jpg")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory, frames) -> Path:
    """A 6-frame 320x240 10 fps mp4 written by cv2.VideoWriter from the sample images."""
    p = tmp_path_factory.mktemp("video") / "clip.mp4"
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    assert w.isOpened()
    for k in range(N_FRAMES):
        w.write(frames[k % 2])
    w.release()
    return p


def _read_all(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


def test_predict_video_annotated_video_and_per_frame_json(yolov5n_pt, clip, tmp_path):
    out = tmp_path / "dets.json"
    r = run_cli("predict", yolov5n_pt, clip, "--imgsz", "320", "--json", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # a video always gets a run folder: runs/predict/exp, with the annotated copy under the same name
    video = tmp_path / "runs" / "predict" / "exp" / "clip.mp4"
    got = _read_all(video)
    assert len(got) == N_FRAMES
    assert got[0].shape == (H, W, 3)
    src = _read_all(clip)
    assert all(np.abs(a.astype(int) - b.astype(int)).mean() > 1 for a, b in zip(got, src))  # boxes drawn on each
    cap = cv2.VideoCapture(str(video))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    cap.release()

    recs = json.loads(out.read_text())
    assert len(recs) == 1
    v = recs[0]
    assert v["video"] == str(clip) and v["kind"] == "video" and (v["width"], v["height"]) == (W, H)
    assert v["frame_count"] == N_FRAMES and [f["frame"] for f in v["frames"]] == list(range(N_FRAMES))
    assert v["annotated_video"] == str(Path("runs/predict/exp/clip.mp4")) and v["source_fps"] == pytest.approx(FPS)
    assert v["fps"] > 0 and v["fps"] == pytest.approx(N_FRAMES / v["wall_s"], rel=1e-2)
    for f in v["frames"]:
        assert set(f["timing_ms"]) == {"decode", "preprocess", "inference", "nms", "write"}
        assert f["timing_ms"]["inference"] > 0
        names = {d["name"] for d in f["detections"]}
        assert ("bus" in names) if f["frame"] % 2 == 0 else ("person" in names and "bus" not in names)
    assert v["timing_ms"]["total"] == pytest.approx(sum(v["timing_ms"][k] for k in
                                                        ("decode", "preprocess", "inference", "nms", "write")), abs=0.01)
    # the same frames through the image path give the same detections (one pipeline)
    im = tmp_path / "frame0.png"
    cv2.imwrite(str(im), src[0])
    r2 = run_cli("predict", yolov5n_pt, im, "--imgsz", "320", "--json")
    assert r2.returncode == 0, r2.stderr
    still = json.loads(r2.stdout)[0]["detections"]
    assert [d["class"] for d in still] == [d["class"] for d in v["frames"][0]["detections"]]
    # the summary line: frames, fps, stage times
    assert "6 frames 320x240 (10 fps source)" in r.stderr and "fps end to end" in r.stderr


def test_predict_video_python_api(yolov5n, clip, tmp_path):
    import yolopt
    from yolopt.detect import PredictOutputs, predict_video

    dets = yolopt.predict(yolov5n, clip, imgsz=320, max_frames=3)
    assert [d.frame for d in dets] == [0, 1, 2] and all(d.image == str(clip) for d in dets)
    assert 5 in dets[0].cls and 5 not in dets[1].cls  # bus, then zidane
    run = predict_video(yolov5n, clip, imgsz=256, save=PredictOutputs(tmp_path, tmp_path / "labels"), max_frames=4)
    assert len(run.frames) == 4 and run.video == tmp_path / "clip.mp4" and len(_read_all(run.video)) == 4
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == [f"clip_{k}.txt" for k in range(4)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_camera_index_without_camera(yolov5n_pt, tmp_path):
    if Path("/dev/video0").exists():
        pytest.skip("this machine has a camera")
    r = run_cli("predict", yolov5n_pt, "0", cwd=tmp_path)
    _one_line_error(r, "0: no camera 0 on this machine", "/dev/video0")
    assert not (tmp_path / "runs").exists()  # failed before any work


def test_unreachable_stream(yolov5n_pt, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    url = f"rtsp://127.0.0.1:{port}/live"
    r = run_cli("predict", yolov5n_pt, url, cwd=tmp_path)
    _one_line_error(r, url, "could not open the stream")
    assert not list((tmp_path / "runs" / "predict").glob("*"))  # the empty run folder was removed


def test_bad_video_sources(yolov5n_pt, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video" * 100)
    _one_line_error(run_cli("predict", yolov5n_pt, bad, cwd=tmp_path), str(bad), "cannot decode this video")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    _one_line_error(run_cli("predict", yolov5n_pt, txt, cwd=tmp_path), str(txt), "not an image or video file")
    _one_line_error(run_cli("bench", yolov5n_pt, "--source", bad), str(bad), "cannot decode this video")


def test_source_kinds():
    from yolopt.data.sources import VideoInput, expand_sources

    items = expand_sources(["rtsp://cam.local:554/live", "https://x.org/a.m3u8", "3"])
    assert [(i.kind, i.spec) for i in items] == [("stream", "rtsp://cam.local:554/live"),
                                                 ("stream", "https://x.org/a.m3u8"), ("camera", "3")]
    assert items[2].name == "camera3" and items[0].name == "stream_cam.local_554_live"
    assert isinstance(items[0], VideoInput)


def test_folder_with_images_and_video(yolov5n_pt, clip, bus_jpg, tmp_path):
    import shutil

    d = tmp_path / "media"
    d.mkdir()
    shutil.copy(clip, d / "a.mp4")
    shutil.copy(bus_jpg, d / "b.jpg")
    r = run_cli("predict", yolov5n_pt, d, "--imgsz", "128", "--max-frames", "2", "--json", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)
    assert [rec.get("video", rec.get("image")) for rec in recs] == [str(d / "a.mp4"), str(d / "b.jpg")]
    assert recs[0]["frame_count"] == 2 and len(_read_all(tmp_path / "o" / "a.mp4")) == 2
    assert (tmp_path / "o" / "b.jpg").is_file()


def test_bench_end2end_video_fps(yolov5n_pt, clip, tmp_path):
    out = tmp_path / "b.json"
    r = run_cli("bench", yolov5n_pt, "--imgsz", "128", "--end2end", "--source", clip, "--warmup", "1", "--iters",
                "8", "--threads", "1", "--json", out)
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())
    assert rec["end2end"] is True and rec["iters"] == 8 and rec["fps"] > 0
    assert rec["fps"] == pytest.approx(1000 / rec["latency_ms"]["mean"], rel=1e-6)
    assert rec["stages_ms"]["decode"] > 0  # video decoding is timed
    assert rec["extra"]["videos"] == [{"source": str(clip), "kind": "video", "fps": FPS, "width": W, "height": H,
                                       "frames": N_FRAMES}]
    # 1 warm-up + 8 timed calls cycle over the 6 frames: bus, zidane, bus...; one pass of counts is kept
    assert len(rec["extra"]["detections_per_image"]) == N_FRAMES
    assert "end to end (decode included)" in r.stderr and "FPS" in r.stderr and "x real time" in r.stderr
    # --source alone implies --end2end
    r2 = run_cli("bench", yolov5n_pt, "--imgsz", "128", "--source", clip, "--warmup", "0", "--iters", "2",
                 "--threads", "1", "--json", tmp_path / "c.json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads((tmp_path / "c.json").read_text())["end2end"] is True


def test_frame_cycle_wraps_around(clip, bus_jpg, frames):
    from yolopt.data.sources import FrameCycle

    fc = FrameCycle([str(clip), str(bus_jpg)])
    assert fc.cycle_frames == N_FRAMES + 1
    got = [fc() for _ in range(2 * (N_FRAMES + 1))]
    assert [g.shape for g in got[:N_FRAMES]] == [(H, W, 3)] * N_FRAMES and got[N_FRAMES].shape == (1080, 810, 3)
    assert all(np.array_equal(a, b) for a, b in zip(got[:N_FRAMES + 1], got[N_FRAMES + 1:]))  # second pass == first
    fc.close()
