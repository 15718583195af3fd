"""The paired bootstrap of a mAP drop (evaluate.coco): re-weighting images reproduces pycocotools, and
optimize holds a variant to its drop plus the drop's standard error."""

from __future__ import annotations

import numpy as np
import pytest

from yolopt.evaluate.coco import ImageMatches, bootstrap_map, coco_map, paired_bootstrap

N_IMG, NC = 40, 5


def _scene(seed: int = 1, miss: float = 0.0):
    """Random labels on N_IMG images and noisy detections of them (a fraction ``miss`` of labels not
    detected), plus false positives. Boxes xywh in pixels, scores rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    drop_rng = np.random.default_rng(seed + 100)
    ims = [{"id": i, "width": 640, "height": 480} for i in range(N_IMG)]
    gts, dets = [], []
    for i in range(N_IMG):
        for _ in range(rng.integers(0, 6)):
            c = int(rng.integers(0, NC))
            x, y = rng.uniform(0, 500), rng.uniform(0, 380)
            w, h = rng.uniform(5, 120, 2)
            gts.append({"image_id": i, "category_id": c, "bbox": [x, y, w, h]})
            for _ in range(rng.integers(0, 3)):
                j = rng.normal(0, w * 0.1, 4)
                if drop_rng.random() < miss:
                    continue
                dets.append({"image_id": i, "category_id": c if rng.random() < 0.8 else int(rng.integers(0, NC)),
                             "bbox": [x + j[0], y + j[1], w + j[2], h + j[3]], "score": float(np.round(rng.random(), 2))})
        for _ in range(rng.integers(0, 4)):
            dets.append({"image_id": i, "category_id": int(rng.integers(0, NC)),
                         "bbox": [*rng.uniform(0, 300, 2), *rng.uniform(5, 100, 2)],
                         "score": float(np.round(rng.random(), 2))})
    return ims, gts, dets


def test_unit_weights_reproduce_pycocotools_exactly():
    ims, gts, dets = _scene()
    r = coco_map(ims, gts, dets, NC, keep_matches=True)
    assert 0.05 < r.map50_95 < r.map50 < 0.9
    ones = np.ones((1, N_IMG))
    assert bootstrap_map(r.matches, ones, "map50_95")[0] == pytest.approx(r.map50_95, abs=1e-12)
    assert bootstrap_map(r.matches, ones, "map50")[0] == pytest.approx(r.map50, abs=1e-12)


def test_weights_match_pycocotools_on_a_resampled_set():
    """Images 0-9 counted twice and 30-39 left out == pycocotools on that set built with copies (up to the
    order of tied scores)."""
    ims, gts, dets = _scene()
    m = coco_map(ims, gts, dets, NC, keep_matches=True).matches
    keep = [im for im in ims if im["id"] < 30] + [{**im, "id": 100 + im["id"]} for im in ims if im["id"] < 10]
    g2 = [g for g in gts if g["image_id"] < 30] + [{**g, "image_id": 100 + g["image_id"]} for g in gts if g["image_id"] < 10]
    d2 = [d for d in dets if d["image_id"] < 30] + [{**d, "image_id": 100 + d["image_id"]} for d in dets if d["image_id"] < 10]
    ref = coco_map(keep, g2, d2, NC)
    w = np.ones(N_IMG)
    w[:10], w[30:] = 2, 0
    assert bootstrap_map(m, w[None], "map50_95")[0] == pytest.approx(ref.map50_95, abs=1e-3)
    assert bootstrap_map(m, w[None], "map50")[0] == pytest.approx(ref.map50, abs=1e-3)
    assert abs(bootstrap_map(m, w[None])[0] - bootstrap_map(m, np.ones((1, N_IMG)))[0]) > 1e-3  # the weights matter


def test_paired_bootstrap_of_a_worse_model(tmp_path):
    ims, gts, dets = _scene()
    _, _, worse = _scene(miss=0.4)  # same labels, 40% of the true detections missing
    a = coco_map(ims, gts, dets, NC, keep_matches=True)
    b = coco_map(ims, gts, worse, NC, keep_matches=True)
    assert a.map50_95 > b.map50_95
    same = paired_bootstrap(a.matches, a.matches, n=50)
    assert np.all(same == 0)
    d = paired_bootstrap(a.matches, b.matches, n=100, seed=3)
    assert d.shape == (100,) and d.std() > 0
    assert abs(np.mean(d) - (a.map50_95 - b.map50_95)) < 3 * d.std()
    np.testing.assert_array_equal(d, paired_bootstrap(a.matches, b.matches, n=100, seed=3))  # seeded
    # saved and loaded (the optimize cache) it is the same
    a.matches.save(tmp_path / "new" / "a.npz")  # the folder is made
    back = ImageMatches.load(tmp_path / "new" / "a.npz")
    np.testing.assert_array_equal(paired_bootstrap(back, b.matches, n=100, seed=3), d)
    # not the same images: refused
    other = coco_map(ims[:30], [g for g in gts if g["image_id"] < 30], [d for d in dets if d["image_id"] < 30], NC,
                     keep_matches=True).matches
    with pytest.raises(ValueError, match="not of the same images"):
        paired_bootstrap(a.matches, other)


def test_no_detections_scores_zero_in_every_resample():
    ims, gts, _ = _scene()
    r = coco_map(ims, gts, [], NC, keep_matches=True)
    assert r.map50_95 == 0 and np.all(bootstrap_map(r.matches, np.ones((3, N_IMG))) == 0)


def test_selection_counts_the_drop_noise():
    from yolopt.pipeline.select import choose, violations
    from yolopt.pipeline.spec import OptimizeSpec

    from yolopt.pipeline.records import VariantResult

    def row(name, kind, drop, se, fps):
        return VariantResult.from_dict({"name": name, "kind": kind, "status": "done", "drop": drop, "drop_se": se,
                                        "fps": fps, "speedup": fps / 10, "size_mb": 8, "peak_mem_mb": 50, "threads": 2,
                                        "latency_ms": {"p50": 1000 / fps}})

    rows = [row("fp32", "baseline", 0.0, 0.0, 10), row("small", "imgsz", 0.009, 0.004, 20),
            row("rect", "rect", -0.002, 0.004, 12)]
    spec = OptimizeSpec("m.pt", "d.yaml", max_map_drop=0.01, threads=2, imgsz=[640])
    assert choose(rows, spec, "realtime").variant == "rect"  # 0.9 + 0.4 points > 1: within noise of the limit
    v = violations(rows[1], spec, 0.01)
    assert v and "standard error" in v[0]
    spec.map_noise = 0.0
    assert choose(rows, spec, "realtime").variant == "small"  # the measured drop alone
    with pytest.raises(Exception, match="map_noise -1") as e:
        OptimizeSpec("m.pt", "d.yaml", map_noise=-1).check()
    assert "map_noise" in e.value.fields  # the CLI shows it as --map-noise
