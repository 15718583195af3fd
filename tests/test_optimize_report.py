"""The report of `yolopt optimize` (pipeline/report.py): md + self-contained html + json + Pareto PNG.

Built on a hand-made results dict shaped like a real run (six variants, one failed, one skipped). The last
test opens report.html in a real headless Chromium and checks the screenshot's pixels.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from yolopt.pipeline.report import POINT_COLOR, write_report

CHROMIUM = Path("/usr/bin/chromium")
PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _variant(name, kind, **kw) -> dict:
    v = {"name": name, "description": "", "kind": kind, "status": "done", "reason": None,
         "artifact": f"runs/optimize/exp/{name}.onnx", "runtime": "onnxruntime", "precision": "fp32", "imgsz": 640,
         "letterbox": "square", "threads": 2, "streams": 1, "params": 1_872_157, "gflops": 4.5, "size_mb": 7.6,
         "peak_mem_mb": 212.0, "map50_95": None, "map50": None, "drop": None, "drop50": None, "latency_ms": None,
         "fps": None, "speedup": None, "stages_ms": None, "seconds": None, "meets": None}
    v.update(kw)
    return v


def _lat(p50, p99=None):
    return {"p50": p50, "p99": p99 if p99 is not None else p50 * 1.3, "mean": p50 * 1.05}


def _stages(decode, pre, inf, nms, post):
    return {"decode": decode, "preprocess": pre, "inference": inf, "nms": nms, "postprocess": post}


def make_results() -> dict:
    base_map, base_fps = 0.2841, 24.6
    variants = [
        _variant("fp32-640", "baseline", description="the model as given, ONNX Runtime fp32", map50_95=base_map,
                 map50=0.4562, drop=0.0, drop50=0.0, latency_ms=_lat(40.6, 47.9), fps=base_fps, speedup=1.0,
                 stages_ms=_stages(3.1, 2.4, 33.0, 1.2, 0.9), seconds=41.0, meets=False),
        _variant("fp32-512-rect", "imgsz", description="smaller input, rect letterbox", imgsz=512, letterbox="rect",
                 gflops=2.9, map50_95=0.2712, map50=0.4391, drop=0.0129, drop50=0.0171, latency_ms=_lat(27.9, 33.0),
                 fps=35.8, speedup=35.8 / base_fps, seconds=55.2, meets=False),
        _variant("int8-qdq", "int8", description="INT8 QDQ, uint8 input <all layers>", precision="int8", size_mb=2.2,
                 map50_95=0.2779, map50=0.4497, drop=0.0062, drop50=0.0065, latency_ms=_lat(22.1, 26.4), fps=45.2,
                 speedup=45.2 / base_fps, stages_ms=_stages(3.0, 2.3, 15.0, 1.1, 0.7), seconds=128.0, meets=True),
        _variant("int8-qdq-x2", "streams", description="INT8 QDQ, two parallel streams of one thread", precision="int8",
                 threads=1, streams=2, size_mb=2.2, map50_95=0.2779, map50=0.4497, drop=0.0062, drop50=0.0065,
                 latency_ms=_lat(38.0, 45.5), fps=52.6, speedup=52.6 / base_fps, seconds=30.5, meets=False),
        _variant("mixed-int8", "mixed", status="failed", precision="int8",
                 reason="ValueError: <calibration> produced NaN scales & stopped", artifact=None, seconds=12.3),
        _variant("prune-30", "prune", status="skipped", reason="time budget spent before fine-tuning could start",
                 artifact=None, params=None, gflops=None, size_mb=None, peak_mem_mb=None),
    ]
    machine = {"cpu": "Intel(R) Xeon(R) Platinum 8488C", "arch": "x86_64", "logical_cpus": 8, "usable_cpus": 8,
               "isa": {"avx2": True, "fma": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": True,
                       "avx512_bf16": True, "amx_tile": True, "amx_int8": True, "amx_bf16": True},
               "native_bf16": True, "native_fp16": False, "vnni": True, "os": "Linux 6.1.0",
               "versions": {"yolopt": "0.1.0", "python": "3.11.7", "onnxruntime": "1.32.0", "openvino": "2026.4.1"}}
    layers_before = [{"name": "model.24.m.2", "type": "Conv", "ms": 4.1, "share": 0.124},
                     {"name": "model.8.cv3", "type": "Conv", "ms": 2.7, "share": 0.082},
                     {"name": "model.9", "type": "SPPF", "ms": 2.2, "share": 0.067}]
    layers_after = [{"name": "model.24.m.2", "type": "QLinearConv", "ms": 1.6, "share": 0.107},
                    {"name": "model.0.conv", "type": "QLinearConv", "ms": 1.2, "share": 0.08}]
    return {
        "version": 1, "model": "yolov5n.pt", "data": "coco128.yaml", "scenario": "realtime", "target": "onnxruntime",
        "threads": 2, "conf": 0.25,
        "budget": {"time_budget_s": 900.0, "max_map_drop": 0.01, "max_latency_ms": 25.0, "max_size_mb": None},
        "machine": machine, "baseline": "fp32-640", "variants": variants,
        "profile": {"before": {"variant": "fp32-640", "stages_ms": variants[0]["stages_ms"], "layers": layers_before},
                    "after": {"variant": "int8-qdq", "stages_ms": variants[2]["stages_ms"], "layers": layers_after}},
        "recommendation": {"scenario": "realtime", "variant": "int8-qdq", "met": True, "closest": None,
                           "summary": "INT8 QDQ runs 1.84x the fp32 baseline end to end for a 0.0062 mAP50-95 drop "
                                      "(budget 0.01) and is 3.5x smaller.",
                           "next": ["profile the decode stage: it is now 14 % of the time",
                                    "try OpenVINO INT8 on this VNNI CPU"]},
        "per_scenario": {"realtime": {"variant": "int8-qdq", "text": "fastest within the mAP budget"},
                         "accuracy": {"variant": "fp32-640", "text": "no variant within 0.002 mAP was faster"},
                         "edge": {"variant": "int8-qdq", "text": "smallest (2.2 MB) within the budget"}},
        "time_spent_s": 266.0, "deploy": "runs/optimize/exp/deploy",
    }


@pytest.fixture
def results() -> dict:
    return make_results()


def _embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_files_and_contents(tmp_path, results):
    paths = write_report(results, tmp_path / "out")
    assert {"md", "html", "json", "png"} <= set(paths)
    for key, name in (("md", "report.md"), ("html", "report.html"), ("json", "results.json"), ("png", "pareto.png")):
        assert paths[key] == tmp_path / "out" / name and paths[key].stat().st_size > 0
    assert not list((tmp_path / "out").glob(".*.tmp")), "atomic_write left a temp file"
    assert json.loads(paths["json"].read_text()) == results
    assert paths["png"].read_bytes().startswith(PNG_SIG)

    md, page = paths["md"].read_text(), paths["html"].read_text()
    for text in (md, page):
        for v in results["variants"]:
            assert v["name"] in text
        assert "int8-qdq" in text and "Recommended" in text
        assert "Intel(R) Xeon(R) Platinum 8488C" in text
        assert "avx512_vnni" in text and "amx_int8" in text
        assert "without VNNI" in text
        assert "runs/optimize/exp/deploy" in text
        assert "266 s" in text or "4.4 min" in text  # time spent...
        assert "15.0 min" in text                      # ...vs the budget
        assert "time budget spent before fine-tuning" in text  # the skipped variant's reason
        assert "inference" in text and "QLinearConv" in text   # stages and top layers
    assert "](pareto.png)" in md
    # the recommended row is marked in the table, and the dominant stage after optimization is named
    assert re.search(r"\| int8-qdq \*\*\(recommended\)\*\* \|", md)
    assert "After optimization (int8-qdq) the dominant stage is inference" in md

    # html: self-contained (no fetches, no script), text escaped, PNGs embedded and decodable
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page, re.IGNORECASE)
    assert "<script" not in page.lower() and "@import" not in page
    assert "&lt;calibration&gt; produced NaN scales &amp; stopped" in page and "<calibration>" not in page
    assert 'id="variants"' in page
    img = re.search(r'<img[^>]*id="pareto"[^>]*>', page)
    assert img and "data:image/png;base64," in img.group(0)
    pngs = _embedded_pngs(page)
    assert len(pngs) == 2  # Pareto + stages
    assert pngs[0] == paths["png"].read_bytes()
    for png in pngs:
        assert png.startswith(PNG_SIG) and len(png) > 5000


def test_not_met_names_the_closest_and_by_how_much(tmp_path, results):
    results["recommendation"].update(variant=None, met=False, closest="fp32-512-rect")
    md = write_report(results, tmp_path)["md"].read_text()
    assert "No variant meets the budget" in md
    assert "Closest: fp32-512-rect" in md
    assert "0.0129 vs 0.0100 allowed (0.0029 over)" in md       # mAP drop over the limit
    assert "27.90 ms vs 25 ms allowed (2.90 ms, 12 % over)" in md  # latency over the limit


def test_missing_fields_render_a_dash(tmp_path, results):
    v = results["variants"][1]
    for k in ("latency_ms", "fps", "speedup", "map50_95", "map50", "drop", "params", "gflops", "size_mb", "seconds"):
        v[k] = None
    del results["variants"][3]["stages_ms"], results["variants"][3]["meets"]
    paths = write_report(results, tmp_path)
    row = next(line for line in paths["md"].read_text().splitlines() if line.startswith("| fp32-512-rect |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells.count("—") >= 10, row
    page = paths["html"].read_text()
    tr = re.search(r"<tr[^>]*>\s*<td>fp32-512-rect.*?</tr>", page, re.DOTALL).group(0)
    assert tr.count(">—<") >= 10, tr


def test_minimal_results_do_not_crash(tmp_path):
    """A run that failed early: almost nothing filled in."""
    results = {"version": 1, "model": "m.pt", "variants": [{"name": "fp32", "status": "failed", "reason": "boom"}],
               "recommendation": None, "profile": None, "per_scenario": None, "machine": None, "budget": None}
    paths = write_report(results, tmp_path)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert "fp32" in md and "boom" in md and "No variant meets the budget" in md
    assert "No deploy bundle" in page and "No bottleneck profile" in page
    assert paths["png"].read_bytes().startswith(PNG_SIG)
    assert "stages" not in paths


# ------------------------------------------------------------------------------------------- real browser

def _screenshot(html_path: Path, png: Path, profile_dir: Path) -> np.ndarray:
    import cv2

    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile_dir}", "--hide-scrollbars", "--window-size=1280,4000", f"--screenshot={png}",
           html_path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0 and png.exists(), f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    img = cv2.imread(str(png), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[:2] == (4000, 1280), None if img is None else img.shape
    return img


def _near(img: np.ndarray, hex_rgb: str, tol: int = 8) -> np.ndarray:
    rgb = [int(hex_rgb[i:i + 2], 16) for i in (1, 3, 5)]
    bgr = np.array(rgb[::-1], dtype=np.int16)
    return (np.abs(img.astype(np.int16) - bgr) <= tol).all(axis=2)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium not installed: `make test` installs it "
                                                   "(apt-get install chromium)")
def test_report_renders_in_chromium(tmp_path, results):
    page = write_report(results, tmp_path / "out")["html"]
    text = page.read_text()
    full = _screenshot(page, tmp_path / "full.png", tmp_path / "profile1")
    # the same page without the Pareto <img> and without the variants table
    stripped = re.sub(r'<img[^>]*id="pareto"[^>]*>', "", text)
    stripped = re.sub(r'<table id="variants".*?</table>', "", stripped, flags=re.DOTALL)
    assert stripped != text and 'id="variants"' not in stripped and 'id="pareto"' not in stripped
    bare_html = tmp_path / "out" / "bare.html"
    bare_html.write_text(stripped)
    bare = _screenshot(bare_html, tmp_path / "bare.png", tmp_path / "profile2")

    # not blank: real contrast and many colours (text anti-aliasing, the two charts)
    assert full.std() > 25, full.std()
    colours = np.unique(full.reshape(-1, 3), axis=0)
    assert len(colours) > 1000, len(colours)

    # the plot: the Pareto markers' colour appears only when the <img> is there, at least one marker's worth
    markers = _near(full, POINT_COLOR)
    assert markers.sum() > 4 * 300, markers.sum()          # 4 measured variants, each marker >= ~300 px
    assert _near(bare, POINT_COLOR).sum() == 0
    _, xs = np.nonzero(markers)
    assert xs.max() - xs.min() > 200, "markers should spread along the FPS axis"

    # the table: its header colour (#1d4e89, only the variants table has it) fills a header row's worth of
    # pixels, with the table's rows below it; gone when the table is removed
    header = _near(full, "#1d4e89", tol=4)
    assert header.sum() > 1100 * 20, header.sum()          # a ~1200 px wide, >= 20 px tall header row
    assert _near(bare, "#1d4e89", tol=4).sum() == 0
    top = int(np.nonzero(header.any(axis=1))[0].max())
    below = full[top + 5:top + 260, 30:1250]
    assert np.unique(below.reshape(-1, 3), axis=0).shape[0] > 50  # rows of text under the header
    assert (full != bare).any(axis=2).sum() > 100_000       # the two removals change a large area
