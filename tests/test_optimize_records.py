"""optimize's typed results on disk (pipeline/records.py): schema_version written, old files (no version) still
read on resume, newer versions refused in one line naming the file. Tiny JSON files only; no model is run."""

from __future__ import annotations

import json

import pytest

from yolopt.errors import YoloptError
from yolopt.pipeline.records import SCHEMA_VERSION, OptimizeResults, VariantResult
from yolopt.pipeline.run import Optimizer
from yolopt.pipeline.variants import Variant

# a variant row as the code before schema_version wrote it (OUT/variants/fp32-96.json)
OLD_ROW = {
    "name": "fp32-96", "kind": "imgsz",
    "description": "FP32, 96 square letterbox",
    "variant": {"name": "fp32-96", "kind": "imgsz", "description": "FP32, 96 square letterbox",
                "build": "fp32-96-fixed", "imgsz": 96, "letterbox": "square", "streams": 1, "spin": True,
                "estimate_s": 12.5},
    "runtime": "onnxruntime", "imgsz": 96, "letterbox": "square", "threads": 1, "streams": 1, "status": "done",
    "reason": None, "artifact": "o/artifacts/fp32-96-fixed/model.onnx", "build_seconds": 1.2, "artifact_seconds": 1.2,
    "build": {"key": "fp32-96-fixed"}, "map50_95": 0.41, "map50": 0.7, "val_images": 24, "val_mode": "square",
    "fps": 250.0, "latency_ms": {"p50": 3.9, "p99": 5.0}, "stages_ms": {"decode": 0.5, "inference": 3.0},
    "peak_mem_mb": 30.0, "size_mb": 7.1, "threads_per_stream": 1, "machine": {"cpu": "x"}, "params": 1_000_000,
    "gflops": 0.1, "seconds": 5.0, "drop": 0.02, "drop50": 0.01, "drop50_95": 0.02, "speedup": 1.6,
    "drop_se": 0.004, "drop_se_of": "map50_95/200",
}
VARIANT = Variant("fp32-96", "imgsz", "FP32, 96 square letterbox", "fp32-96-fixed", 96, estimate_s=99.0)


def _optimizer(out):
    opt = Optimizer.__new__(Optimizer)  # only the cache lookup is used: no model, no data
    opt.out = out
    return opt


def _write(path, d):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return path


def test_variant_row_round_trip_keeps_the_keys_and_adds_schema_version(tmp_path):
    r = VariantResult.from_dict(OLD_ROW)
    assert r.variant == Variant.from_dict(OLD_ROW["variant"]) and r.latency_ms["p50"] == 3.9
    assert r.to_dict() == OLD_ROW  # the same keys as before, nothing added for unmeasured fields
    f = r.save(tmp_path / "v.json")
    on_disk = json.loads(f.read_text())
    assert on_disk == {"schema_version": SCHEMA_VERSION, **OLD_ROW}
    assert VariantResult.load(f) == r
    skipped = VariantResult(name="x", kind="int8", status="skipped", reason="time budget").to_dict()
    assert "fps" not in skipped and "drop" not in skipped and skipped["reason"] == "time budget"


def test_old_variant_file_without_schema_version_is_reused_on_resume(tmp_path):
    older = {**OLD_ROW, "variant": {k: v for k, v in OLD_ROW["variant"].items() if k != "spin"}}  # before spin
    _write(tmp_path / "variants" / "fp32-96.json", older)
    r = _optimizer(tmp_path)._cached(VARIANT)
    assert isinstance(r, VariantResult) and r.fps == 250.0 and r.drop_se == 0.004
    assert r.variant == VARIANT  # the current estimate, same configuration
    # a row that is not a version-1 row is measured again, not trusted
    _write(tmp_path / "variants" / "fp32-96.json", {"fps": 3})
    assert _optimizer(tmp_path)._cached(VARIANT) is None
    with pytest.raises(YoloptError, match="fp32-96.json: no schema_version"):
        VariantResult.load(tmp_path / "variants" / "fp32-96.json")


def test_newer_variant_file_is_refused_in_one_line(tmp_path):
    f = _write(tmp_path / "variants" / "fp32-96.json", {"schema_version": SCHEMA_VERSION + 1, **OLD_ROW})
    with pytest.raises(YoloptError) as e:
        _optimizer(tmp_path)._cached(VARIANT)
    msg = str(e.value)
    assert str(f) in msg and "schema_version 2" in msg and "\n" not in msg


def test_results_json_old_layout_loads_and_newer_is_refused(tmp_path):
    old = {"version": 1, "model": "m.pt", "data": "d.yaml", "scenario": "realtime", "target": "onnxruntime",
           "threads": 1, "conf": 0.25, "metric": "map50_95",
           "budget": {"time_budget_s": 600.0, "max_map_drop": 0.5, "max_latency_ms": None, "max_size_mb": None},
           "machine": {"cpu": "x", "vnni": False}, "baseline": "fp32", "variants": [OLD_ROW],
           "recommendation": {"scenario": "realtime", "variant": "fp32-96", "met": True, "closest": None, "why": "",
                              "summary": "Deploy fp32-96.", "next": []},
           "per_scenario": {"realtime": {"variant": "fp32-96", "text": "Deploy fp32-96."}},
           "time_spent_s": 60.0, "deploy": "o/deploy",
           "confirm": {"variant": "fp32-96", "rounds": 5, "fps": {"fp32": [1.0], "fp32-96": [2.0]},
                       "median_fps": {"fp32": 1.0, "fp32-96": 2.0}, "speedup": 2.0},
           "profile": {"before": {"variant": "fp32", "stages_ms": {"inference": 3.0}, "layers": []}, "after": None}}
    res = OptimizeResults.load(_write(tmp_path / "results.json", old))
    assert res.recommendation.variant == "fp32-96" and res.variant("fp32-96").speedup == 1.6
    assert res.budget.max_map_drop == 0.5 and res.confirm.speedup == 2.0 and res.profile["after"] is None
    assert res.per_scenario["realtime"].variant == "fp32-96"
    assert res.to_dict() == {"schema_version": SCHEMA_VERSION, **old}
    assert OptimizeResults.from_dict(res.to_dict()) == res

    newer = _write(tmp_path / "new" / "results.json", {**old, "schema_version": 7})
    with pytest.raises(YoloptError, match="schema_version 7 is not one this yolopt reads") as e:
        OptimizeResults.load(newer)
    assert str(newer) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(YoloptError, match="missing variants"):
        OptimizeResults.load(_write(tmp_path / "other.json", {"model": "m.pt", "recommendation": None}))


@pytest.mark.parametrize("vnni", [True, False])
def test_int8_weight_range_follows_the_cpu(tmp_path, monkeypatch, vnni):
    """ONNX Runtime INT8 builds use full-range (8-bit) weights on VNNI CPUs and 7-bit ones elsewhere; OpenVINO's
    are left as they were. A cached INT8 build or row made with the other range is not reused. No quantization is
    run: only the spec the builder hands to quantize is checked."""
    from yolopt import machine
    from yolopt.pipeline import variants
    from yolopt.pipeline.spec import OptimizeSpec

    monkeypatch.setattr(machine, "has_vnni", lambda: vnni)
    spec = OptimizeSpec(model="m.pt", data="d.yaml", max_map_drop=0.01)
    q = variants.quantize_spec(spec, tmp_path / "model.onnx", 160, mixed=True)
    assert q.backend == "onnxruntime" and q.imgsz == 160 and q.max_map_drop == 0.005
    assert q.reduce_range is (not vnni)
    spec.target = "openvino"
    assert variants.quantize_spec(spec, tmp_path / "model.xml", 160, mixed=False).reduce_range is True
    spec.target = "onnxruntime"
    # the cache: a build (and the variant row made from it) with the other range is stale
    made_here = {"calibration": {}, "reduce_range": not vnni, "raw_head": True}
    made_elsewhere = {"calibration": {}, "reduce_range": vnni, "raw_head": True}
    assert variants.stale_int8(made_here, "onnxruntime", spec) is False
    assert variants.stale_int8({**made_here, "raw_head": False}, "onnxruntime", spec)  # graph decode: rebuilt
    assert variants.quantize_spec(spec, tmp_path / "model.onnx", 160, mixed=False).raw_head is True
    before_the_choice = {"calibration": {}}  # 7-bit, always
    assert not variants.stale_weight_range(made_here, "onnxruntime")
    assert variants.stale_weight_range(made_elsewhere, "onnxruntime")
    assert variants.stale_weight_range(before_the_choice, "onnxruntime") is vnni
    assert not variants.stale_weight_range({"key": "fp32-160-fixed"}, "onnxruntime")
    _write(tmp_path / "artifacts" / "int8-160-fixed" / "build.json",
           {"key": "int8-160-fixed", "artifact": str(tmp_path / "model.onnx"), "seconds": 1.0,
            "details": made_elsewhere})
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert variants.Builder(spec, tmp_path / "artifacts", None).info("int8-160-fixed") is None
    _write(tmp_path / "artifacts" / "int8-160-fixed" / "build.json",
           {"key": "int8-160-fixed", "artifact": str(tmp_path / "model.onnx"), "seconds": 1.0, "details": made_here})
    assert variants.Builder(spec, tmp_path / "artifacts", None).info("int8-160-fixed").details == made_here
    v = Variant("int8-96", "int8", "INT8, 96 square letterbox", "int8-96-fixed", 96, estimate_s=99.0)
    row = {**OLD_ROW, "name": "int8-96", "kind": "int8", "variant": v.to_dict()}
    opt = _optimizer(tmp_path)
    opt.spec = spec
    for details, reused in ((made_here, True), (made_elsewhere, False)):
        _write(tmp_path / "variants" / "int8-96.json", {**row, "build": {"key": "int8-96-fixed", **details}})
        assert (opt._cached(v) is not None) is reused, details
