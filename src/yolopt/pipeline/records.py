"""Typed results of ``yolopt optimize``: one :class:`VariantResult` per variant, :class:`OptimizeResults` for a run.

On disk (``OUT/variants/<name>.json``, ``OUT/results.json``) they are JSON objects with the keys below and a
``schema_version``; a key whose value was never measured (``None``) is left out of a variant's row, as the
files have always been written. Files written before ``schema_version`` existed read as version 1 when
their keys are a version-1 row / run; a newer version is refused with one line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import YoloptError
from .variants import Accuracy, BenchResult, Variant

SCHEMA_VERSION = 1


def check_schema(d: dict, where: str | Path, required: tuple[str, ...]) -> None:
    """Raise one :class:`YoloptError` line unless ``d`` is a version this yolopt reads (no version: 1 when
    the ``required`` keys are there)."""
    if not isinstance(d, dict):
        raise YoloptError(f"{where}: not an optimize results object")
    version = d.get("schema_version")
    if version is None:
        missing = [k for k in required if k not in d]
        if missing:
            raise YoloptError(f"{where}: no schema_version and not an optimize file of version 1 "
                              f"(missing {', '.join(missing)})")
        return
    if version != SCHEMA_VERSION:
        raise YoloptError(f"{where}: schema_version {version!r} is not one this yolopt reads ({SCHEMA_VERSION}); "
                          "use the yolopt that wrote it, or another output folder")


def _known(cls, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:
        raise YoloptError(f"{path}: not valid JSON ({e})") from None


# the keys every row has; the others are written only once they hold a value
_ALWAYS = ("name", "kind", "description", "variant", "runtime", "imgsz", "letterbox", "threads", "streams", "status",
           "reason")
VARIANT_KEYS = ("name", "kind", "status")  # a version-1 row without schema_version has at least these


@dataclass
class VariantResult:
    """One variant's row: what it is, how it was built, what was measured, and why it was not (``reason``)."""

    name: str
    kind: str = ""
    description: str = ""
    variant: Variant | None = None  # the configuration (for reruns and the cache check)
    runtime: str | None = None
    imgsz: int | None = None
    letterbox: str | None = None
    threads: int | None = None  # per pipeline: threads x streams = the spec's threads
    streams: int | None = None
    status: str = "skipped"  # skipped | done | failed
    reason: str | None = None  # why it failed, or was skipped (time budget, train/val overlap)
    failure: str | None = None  # failed: "variant" (its own property, remembered) or "environment" (retried)
    # the build
    artifact: str | None = None
    build_seconds: float | None = None  # what this variant paid for its artifact (0: built before)
    artifact_seconds: float | None = None  # what building the artifact cost, whichever variant paid it
    build: dict | None = None  # the build key and its details (float layers, QAT gains, prune summary)
    precision: str | None = None
    # accuracy
    map50_95: float | None = None
    map50: float | None = None
    val_images: int | None = None
    val_mode: str | None = None
    map_from: str | None = None  # the variant whose detections these are (same artifact and letterbox)
    # end to end
    fps: float | None = None
    latency_ms: dict | None = None
    stages_ms: dict | None = None
    peak_mem_mb: float | None = None
    size_mb: float | None = None
    threads_per_stream: int | None = None
    machine: dict | None = None
    measured_by: str | None = None  # "infer.py": its deploy bundle's own pipeline; "yolopt": yolopt's (no bundle)
    params: int | None = None
    gflops: float | None = None
    seconds: float | None = None  # build + measurement of this variant
    # against the baseline
    drop: float | None = None  # on the run's metric
    drop50: float | None = None
    drop50_95: float | None = None
    speedup: float | None = None
    drop_se: float | None = None  # paired-bootstrap standard error of ``drop``
    drop_se_of: str | None = None  # "metric/resamples" the standard error was computed for
    meets: bool | None = None  # within the run's budget
    misses: list[str] | None = None  # what keeps it from meeting the budget (``select.violations``), when it does not

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def spin(self) -> bool:
        return self.variant.spin if self.variant is not None else True

    def score(self, metric: str) -> float | None:
        """The mAP the run's drop is measured on (``map50_95`` or ``map50``)."""
        return {"map50_95": self.map50_95, "map50": self.map50}[metric]

    def set_accuracy(self, acc: Accuracy, map_from: str | None = None) -> None:
        self.map50_95, self.map50 = acc.map50_95, acc.map50
        self.val_images, self.val_mode = acc.val_images, acc.val_mode
        self.map_from = map_from

    def accuracy(self) -> Accuracy:
        return Accuracy(map50_95=self.map50_95, map50=self.map50, val_images=self.val_images, val_mode=self.val_mode)

    def set_bench(self, b: BenchResult) -> None:
        self.fps, self.latency_ms, self.stages_ms = b.fps, b.latency_ms, b.stages_ms
        self.peak_mem_mb, self.size_mb, self.threads_per_stream, self.machine = (b.peak_mem_mb, b.size_mb,
                                                                                 b.threads_per_stream, b.machine)
        self.measured_by = b.measured_by

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "variant" and v is not None:
                v = v.to_dict()
            if v is not None or f.name in _ALWAYS:
                out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "VariantResult":
        """A row as :meth:`to_dict` writes it (any missing key: not measured). Unknown keys are ignored."""
        kw = _known(cls, d)
        if isinstance(kw.get("variant"), dict):
            kw["variant"] = Variant.from_dict(kw["variant"])
        return cls(**kw)

    def save(self, path: Path) -> Path:
        from ..fileio import write_json

        return write_json(path, {"schema_version": SCHEMA_VERSION, **self.to_dict()}, quiet=True)

    @classmethod
    def load(cls, path: Path) -> "VariantResult":
        """``OUT/variants/<name>.json``; :class:`YoloptError` for a file of another schema version."""
        d = _read(path)
        check_schema(d, path, VARIANT_KEYS)
        return cls.from_dict(d)


@dataclass
class Budget:
    time_budget_s: float | None = None
    max_map_drop: float | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    max_memory_mb: float | None = None
    map_noise: float | None = None  # the noise rule: a variant meets the mAP budget when drop + map_noise x SE does


@dataclass
class Recommendation:
    """The variant picked for the run's scenario, or the closest one and why none met the budget."""

    scenario: str | None = None
    variant: str | None = None
    met: bool = False
    closest: str | None = None
    why: str | None = None
    summary: str = ""
    next: list[str] = field(default_factory=list)


@dataclass
class ScenarioPick:
    variant: str | None = None
    text: str = ""


@dataclass
class Confirm:
    """The recommended variant and the baseline timed again in interleaved rounds."""

    variant: str
    rounds: int
    fps: dict  # name -> FPS of each round
    median_fps: dict  # name -> median FPS (baseline first)
    speedup: float
    pipeline: str | None = None  # the fastest FP32 pipeline setting (2 pipelines, no spin-wait), timed alongside
    speedup_vs_pipeline: float | None = None  # the recommendation against it: what the model change adds


@dataclass
class StageProfile:
    """Per-stage end-to-end times and the runtime's slowest layers of one variant's artifact."""

    variant: str | None = None
    stages_ms: dict | None = None
    layers: list[dict] = field(default_factory=list)  # {name, type, ms, share}, slowest first
    model_ms: float | None = None
    error: str | None = None  # why the layer profile is missing

    def to_dict(self) -> dict:
        out = {"variant": self.variant, "stages_ms": self.stages_ms, "layers": self.layers}
        out.update({k: v for k, v in (("model_ms", self.model_ms), ("error", self.error)) if v is not None})
        return out


RESULT_KEYS = ("model", "variants", "recommendation")  # a version-1 results.json has at least these


@dataclass
class OptimizeResults:
    """One optimize run: settings, machine, every variant in the order tried, the recommendation."""

    model: str
    data: str | None = None
    scenario: str | None = None
    target: str | None = None
    runtime_choice: dict | None = None  # --target auto: pipeline.auto.RuntimeChoice.to_dict()
    threads: int | None = None
    conf: float | None = None
    metric: str | None = None
    budget: Budget | None = None
    machine: dict | None = None  # the machine block (:func:`yolopt.machine.machine_info`)
    baseline: str | None = "fp32"
    variants: list[VariantResult] = field(default_factory=list)
    recommendation: Recommendation | None = None
    per_scenario: dict[str, ScenarioPick] | None = None
    time_spent_s: float | None = None
    deploy: str | None = None  # the deploy bundle's folder
    confirm: Confirm | None = None
    profile: dict[str, StageProfile | None] | None = None  # "before" (baseline), "after" (recommended)
    deploy_error: str | None = None
    files: dict[str, str] | None = None  # the report's files (not in results.json itself)
    version: int = 1  # the results layout's own version (kept as it was)

    def variant(self, name: str | None) -> VariantResult | None:
        return next((v for v in self.variants if name is not None and v.name == name), None)

    def to_dict(self) -> dict:
        d: dict = {"schema_version": SCHEMA_VERSION, "version": self.version}
        for k in ("model", "data", "scenario", "target", "threads", "conf", "metric"):
            d[k] = getattr(self, k)
        d["budget"] = None if self.budget is None else vars(self.budget).copy()
        for k in ("map_noise", "max_memory_mb"):  # a results.json from before they were recorded
            if d["budget"] and d["budget"][k] is None:
                del d["budget"][k]
        d["machine"], d["baseline"] = self.machine, self.baseline
        d["variants"] = [v.to_dict() for v in self.variants]
        d["recommendation"] = None if self.recommendation is None else vars(self.recommendation).copy()
        d["per_scenario"] = (None if self.per_scenario is None else
                             {k: vars(p).copy() for k, p in self.per_scenario.items()})
        d["time_spent_s"], d["deploy"] = self.time_spent_s, self.deploy
        if self.confirm is not None:
            d["confirm"] = {k: v for k, v in vars(self.confirm).items()
                            if v is not None or k not in ("pipeline", "speedup_vs_pipeline")}
        if self.profile is not None:
            d["profile"] = {k: (p.to_dict() if p is not None else None) for k, p in self.profile.items()}
        if self.deploy_error is not None:
            d["deploy_error"] = self.deploy_error
        if self.runtime_choice is not None:
            d["runtime_choice"] = self.runtime_choice
        if self.files is not None:
            d["files"] = dict(self.files)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OptimizeResults":
        """A run as :meth:`to_dict` writes it; missing parts are ``None`` (a run that stopped early)."""
        kw = _known(cls, d)
        kw.pop("variants", None)
        obj = cls(**{**kw, "model": d.get("model")})

        def sub(klass, x):
            return klass(**_known(klass, x)) if isinstance(x, dict) else None

        obj.variants = [VariantResult.from_dict(v) for v in d.get("variants") or [] if isinstance(v, dict)]
        obj.budget = sub(Budget, d.get("budget"))
        obj.recommendation = sub(Recommendation, d.get("recommendation"))
        obj.confirm = sub(Confirm, d.get("confirm"))
        ps = d.get("per_scenario")
        obj.per_scenario = {k: sub(ScenarioPick, p) or ScenarioPick() for k, p in ps.items()} \
            if isinstance(ps, dict) else None
        prof = d.get("profile")
        obj.profile = {k: sub(StageProfile, p) for k, p in prof.items()} if isinstance(prof, dict) else None
        return obj

    @classmethod
    def load(cls, path: str | Path) -> "OptimizeResults":
        """``OUT/results.json``; :class:`YoloptError` for a file of another schema version."""
        d = _read(Path(path))
        check_schema(d, path, RESULT_KEYS)
        return cls.from_dict(d)
