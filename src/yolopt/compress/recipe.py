"""The lossless compression recipe behind ``yolopt compress``: prune to a FLOPs target, then win the accuracy
back with distilled fine-tuning in stages, every choice made on a selection split carved from ``train``;
``val`` is scored once, at the end.

The stages are what the hand-made hardhat chain found (docs/compress.md, "The hardhat lossless point"):

1. ``prune``: group importance at ``target_flops`` (round-to 16: on AVX-512 CPUs ONNX Runtime runs a conv in its
   fast NCHWc layout only when its channels are multiples of 16; at round-to 8 the hardhat model pruned to 0.45x
   the FLOPs ran at 0.83x the base's latency on a Xeon, at round-to 16 and 0.40x at 0.55x), filled up to just under
   the target (``prune.fill_flops``: at round-to 16 the uniform ratio jumps from 0.503x to 0.403x; one group one
   step further lands at 0.4997x), no fine-tuning yet;
2. ``recover``: distilled fine-tuning from the unpruned model, cosine lr from 0.01, mosaic to the end, scale 0.7;
3. ``widen``: the output levels whose AP50 on the selection split fell most against the base get their C3 block's
   channels back (function-preserving :func:`~yolopt.compress.widen_c3`), as far as the FLOPs target allows;
   then distilled fine-tuning from lr 0.005, scale 0.8;
4. ``polish``: lr 0.002, scale 0.9, repeated while the selection score still rises and budget remains.

It stops when the selection score is within ``max_map_drop`` of the base after the widen stage ("target met"),
when a polish stage no longer raises it ("no longer rising") or when the budget is spent ("budget spent").
The run is one folder; the same call continues it after a kill (each stage is a training run that resumes from
its last finished epoch, and the plan is fixed in ``state.json`` when the run starts).

    >>> from yolopt.compress import CompressSpec, run_compress
    >>> rep = run_compress(CompressSpec("base.safetensors", "hardhat.yaml", target_flops=0.5, time_budget_s=3 * 3600))
    >>> rep.final.val, rep.stop
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..engine.trainer import Callback
from ..errors import YoloptError
from ..fileio import FolderLock, write_json
from .workflow import ARTIFACT_SUFFIXES

log = logging.getLogger("yolopt")

SCHEMA_VERSION = 1
METRICS = ("map50", "map50_95", "both")
SELECT_ON = ("split", "val")


@dataclass(frozen=True)
class StagePlan:
    """One training stage: its share of the epoch budget, start learning rate, scale augmentation, warm-up
    epochs (only the first stage warms up: the later ones continue from a trained model, and a warm-up of at
    least 100 iterations would be most of a short stage)."""

    name: str
    share: float
    lr0: float
    scale: float
    warmup: float = 0.0


#: the recipe (from the hand-made hardhat chain): recover, widen, then polish stages of this share each
RECIPE = (StagePlan("recover", 0.40, 0.01, 0.7, warmup=1.0), StagePlan("widen", 0.35, 0.005, 0.8))
POLISH = StagePlan("polish", 0.125, 0.002, 0.9)
RISING = 0.001  # a polish stage must raise the selection fitness by more than this to earn another
MIN_STAGE_EPOCHS = 2
DEFAULT_TIME_BUDGET_S = 3 * 3600.0  # neither budget given
EPOCH_OVERHEAD = 1.35  # measured epoch / (student fwd+bwd + teacher fwd) probe: loader, EMA, validation


@dataclass(frozen=True)
class CompressSpec:
    """One ``yolopt compress`` run. ``time_budget_s`` / ``epochs_budget``: the fine-tuning budget (either or
    both; neither: 3 h). ``select_on="val"`` chooses on ``val`` itself (the report then warns that its val
    score is biased). ``out``: the run folder (default ``runs/compress/<model stem>``)."""

    model: str | Path
    data: str | Path
    target_flops: float = 0.5
    max_map_drop: float = 0.01
    metric: str = "both"
    epochs_budget: int | None = None
    time_budget_s: float | None = None
    unlabeled: tuple = ()
    select_fraction: float = 0.1
    select_on: str = "split"
    imgsz: int | None = None  # None: the model's own training size, else 640
    batch: int = 16
    workers: int = 2
    device: str = "cpu"
    round_to: int = 16  # ONNX Runtime's NCHWc convs need multiples of 16 on AVX-512 (8 on AVX2)
    fill: bool = True  # the prune lands just under target_flops (one group a step further), not a rounding step below
    widen: bool = True
    seed: int = 0
    threads: int | None = None  # latency measurement threads (default: the usable cores)
    max_latency_ratio: float | None = None  # widening keeps the ORT FP32 latency under this x the base's
    latency: bool = True
    out: str | Path | None = None
    progress: bool = True

    def folder(self) -> Path:
        return Path(self.out) if self.out else Path("runs/compress") / Path(self.model).stem

    def check(self) -> "CompressSpec":
        """Raise :class:`YoloptError` (one line) for a spec that cannot run."""
        from ..data.dataset import load_data_config

        path = Path(self.model)
        if path.is_dir() or path.suffix.lower() in ARTIFACT_SUFFIXES:
            raise YoloptError(f"{path}: an exported artifact cannot be compressed (its graph is fixed); give the "
                              f".pt or .safetensors it was exported from", fields=("model",))
        if not path.is_file():
            raise YoloptError(f"{path}: model file not found", fields=("model",))
        if not 0.0 < self.target_flops < 1.0:
            raise YoloptError(f"target_flops {self.target_flops:g}: must be between 0 and 1 (the fraction of the "
                              f"base model's FLOPs to keep)", fields=("target_flops",))
        if not 0.0 <= self.max_map_drop < 1.0:
            raise YoloptError(f"max_map_drop {self.max_map_drop:g}: must be in [0, 1)", fields=("max_map_drop",))
        if self.metric not in METRICS:
            raise YoloptError(f"metric {self.metric!r}: choose one of {', '.join(METRICS)}", fields=("metric",))
        if self.select_on not in SELECT_ON:
            raise YoloptError(f"select_on {self.select_on!r}: choose split or val", fields=("select_on",))
        if self.epochs_budget is not None and self.epochs_budget < 2 * MIN_STAGE_EPOCHS:
            raise YoloptError(f"epochs_budget {self.epochs_budget}: the recipe needs at least {2 * MIN_STAGE_EPOCHS} "
                              f"epochs (two stages of {MIN_STAGE_EPOCHS})", fields=("epochs_budget",))
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise YoloptError(f"time budget {self.time_budget_s:g} s: must be positive", fields=("time_budget_s",))
        cfg = load_data_config(self.data)
        if "train" not in cfg.splits:
            raise YoloptError(f"{self.data}: no `train` split: the recipe fine-tunes on it and carves its selection "
                              f"split from it", fields=("data",))
        if "val" not in cfg.splits:
            raise YoloptError(f"{self.data}: no `val` split to score the result on", fields=("data",))
        return self

    def key(self) -> dict:
        """The fields a continued run must share with the one that started the folder: the model by content
        (SHA-256) and the dataset by its yaml's name and classes, so that a run folder continues on another
        machine where the files live elsewhere."""
        import hashlib

        from ..data.dataset import load_data_config

        h = hashlib.sha256()
        with open(self.model, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return {"model": h.hexdigest(), "data": [Path(self.data).name, load_data_config(self.data).names],
                "target_flops": self.target_flops, "metric": self.metric, "max_map_drop": self.max_map_drop,
                "select_fraction": self.select_fraction, "select_on": self.select_on, "round_to": self.round_to,
                **({} if self.fill else {"fill": False}),
                "widen": self.widen, "seed": self.seed, "unlabeled": [str(u) for u in self.unlabeled]}


# ----------------------------------------------------------------------------- records


@dataclass
class Scores:
    """mAPs of one model on one split (rect letterbox at the run's size)."""

    map50_95: float
    map50: float
    images: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StageRecord:
    """One finished stage. ``curve``: (epoch within the stage, selection mAP50-95, mAP50) per validation."""

    name: str
    epochs: int
    lr0: float
    scale: float
    seconds: float
    gflops: float
    params: int
    select: Scores | None
    fitness: float
    best: str
    curve: list = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["select"] = self.select and self.select.to_dict()
        return d


@dataclass
class WidenDecision:
    """The widen step: per-level AP50 of the base and the recovered model on the selection split, and the C3
    blocks widened (``{"layer", "level", "hidden", "out", "gflops"}``), or why none was."""

    levels_base: list
    levels_pruned: list
    widened: list = field(default_factory=list)
    reason: str = ""
    latency_ratio: float | None = None  # the recovered model's own ONNX Runtime latency / the base's (measured)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinalResult:
    """The result against the base: FLOPs, selection and val scores, paired-bootstrap SE of the val
    differences, latency ratios (interleaved, one run)."""

    gflops_base: float
    gflops: float
    select_base: Scores
    select: Scores
    val_base: Scores | None = None
    val: Scores | None = None
    val_diff_se: dict = field(default_factory=dict)  # metric -> SE of (final - base) on val
    latency: dict = field(default_factory=dict)  # runtime -> {"base_ms", "ms", "ratio"}
    latency_rounds: int = 0

    @property
    def flops_ratio(self) -> float:
        return self.gflops / self.gflops_base

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flops_ratio"] = self.flops_ratio
        return d


@dataclass
class CompressReport:
    """What a compress run did and measured; ``to_dict()`` is ``report.json`` (``schema_version`` 1)."""

    spec: dict
    split: dict
    machine: dict
    imgsz: int
    plan_epochs: int
    stages: list = field(default_factory=list)  # StageRecord
    widen: WidenDecision | None = None
    layers: list = field(default_factory=list)
    final: FinalResult | None = None
    stop: str = ""
    seconds: float = 0.0
    warnings: list = field(default_factory=list)
    further: list = field(default_factory=list)
    out: str = ""

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "spec": self.spec, "split": self.split, "machine": self.machine,
                "imgsz": self.imgsz, "plan_epochs": self.plan_epochs, "stages": [s.to_dict() for s in self.stages],
                "widen": self.widen and self.widen.to_dict(), "layers": self.layers,
                "final": self.final and self.final.to_dict(), "stop": self.stop, "seconds": self.seconds,
                "warnings": self.warnings, "further": self.further, "out": self.out}


def _scores(d: dict | None) -> Scores | None:
    return Scores(**d) if d else None


def within(scores: Scores, base: Scores, drop: float, metric: str) -> bool:
    """Whether ``scores`` is within ``drop`` of ``base`` in ``metric`` (``both``: in mAP50 and mAP50-95)."""
    keys = ("map50", "map50_95") if metric == "both" else (metric,)
    return all(getattr(scores, k) >= getattr(base, k) - drop for k in keys)


# ----------------------------------------------------------------------------- the run


class _Run:
    """The run folder: ``state.json`` (the plan, finished stages, decisions), the split, one folder per stage."""

    def __init__(self, spec: CompressSpec):
        self.spec = spec
        self.dir = spec.folder()
        self.state_path = self.dir / "state.json"
        self.state: dict = {}
        self.key = spec.key()  # hashes the model file: once per run

    def load(self) -> bool:
        if not self.state_path.is_file():
            return False
        try:
            self.state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            raise YoloptError(f"{self.state_path}: unreadable run state; choose another out folder") from None
        if self.state.get("schema_version") != SCHEMA_VERSION:
            raise YoloptError(f"{self.state_path}: run state version {self.state.get('schema_version')} is not "
                              f"{SCHEMA_VERSION}; choose another out folder", fields=("out",))
        if self.state.get("key") != self.key:
            diff = [k for k, v in self.key.items() if self.state.get("key", {}).get(k) != v]
            raise YoloptError(f"{self.dir}: holds a compress run with other settings ({', '.join(diff)}); continue it "
                              f"with its own settings or choose another out folder", fields=("out",))
        return True

    def save(self) -> None:
        write_json(self.state_path, self.state, quiet=True)

    def rel(self, path: Path) -> str:
        """A path inside the run folder as the state records it: relative to the folder (so it moves with it)."""
        return Path(path).resolve().relative_to(self.dir.resolve()).as_posix()

    def abs(self, recorded: str) -> Path:
        p = self.dir / recorded
        return p if p.exists() or not Path(recorded).exists() else Path(recorded)  # older states: cwd-relative


def run_compress(spec: CompressSpec) -> CompressReport:
    """Run (or continue) the recipe; write ``final.safetensors`` and ``report.json`` / ``.md`` / ``.png`` in the
    run folder. Raises :class:`YoloptError` for bad input (one line)."""
    spec = spec.check()
    run = _Run(spec)
    run.dir.mkdir(parents=True, exist_ok=True)
    with FolderLock(run.dir, "compress run"):
        return _Recipe(spec, run).execute()


class _Recipe:
    def __init__(self, spec: CompressSpec, run: _Run):
        from ..machine import usable_cpus
        from ..models.checkpoint import load_model

        self.spec, self.run = spec, run
        self.base = load_model(spec.model)
        if self.base.is_fused:
            raise YoloptError(f"{spec.model}: the model is stored fused (Conv+BN folded); compress the unfused "
                              f"weights", fields=("model",))
        self.base.source_file = str(Path(spec.model).resolve())
        self.imgsz = spec.imgsz or int(getattr(self.base, "imgsz", None) or 640)
        self.threads = spec.threads or min(2, usable_cpus())
        self.bar = None

    # -------------------------------------------------------------- steps
    def execute(self) -> CompressReport:
        from ..data.split import carve_selection
        from ..machine import machine_info
        from .prune import model_flops

        spec = self.spec
        resumed = self.run.load()
        st = self.run.state
        if resumed:
            log.info("continuing the compress run in %s", self.run.dir)
        else:
            st.update({"schema_version": SCHEMA_VERSION, "key": self.run.key, "spec": _spec_dict(spec),
                       "imgsz": self.imgsz, "stages": [], "started": time.time(), "overhead_s": 0.0})
        split = carve_selection(spec.data, self.run.dir / "split", spec.select_fraction, spec.seed)
        if spec.select_on == "val":
            split = replace(split, train_yaml=Path(spec.data).resolve(), select_yaml=Path(spec.data).resolve())
        self.split = split
        if "base" not in st:
            t0 = time.perf_counter()
            st["base"] = {"gflops": model_flops(self.base, self.imgsz), "params": self.base.num_params(),
                          "select": self._score(self.base, split.select_yaml).to_dict()}
            st["overhead_s"] += time.perf_counter() - t0
            self.run.save()
        if "plan_epochs" not in st:  # before pruning: a budget too small is refused at once
            st["plan_epochs"] = self._plan_epochs()
            self.run.save()
        if "pruned" not in st:
            self._prune()
        rep = CompressReport(spec=_spec_dict(spec), split=split.to_dict(), machine=machine_info(), imgsz=self.imgsz,
                             plan_epochs=st["plan_epochs"])
        if spec.select_on == "val":
            rep.warnings.append("every choice was made on val (select_on val): the val score is biased upwards; "
                                "judge the result on images no choice has seen")
        self._open_bar()
        try:
            self._stages()
        finally:
            if self.bar is not None:
                self.bar.close()
        return self._finish(rep)

    def _prune(self) -> None:
        from .workflow import PruneWorkflowSpec, run_prune

        t0 = time.perf_counter()
        out = self.run.dir / "pruned.safetensors"
        prep = run_prune(PruneWorkflowSpec(model=self.spec.model, target_flops=self.spec.target_flops,
                                           data=str(self.split.train_yaml), round_to=self.spec.round_to,
                                           fill=self.spec.fill,
                                           imgsz=self.imgsz, latency=False, force=True, out=out,
                                           progress=self.spec.progress))
        s = prep.summary
        self.run.state["pruned"] = {"path": self.run.rel(out), "gflops": s.gflops.pruned, "params": s.params.pruned,
                                    "ratio": prep.ratio, "select": {"map50_95": s.map50_95.pruned or 0.0,
                                                                    "map50": s.map50.pruned or 0.0}}
        self.run.state["overhead_s"] += time.perf_counter() - t0
        self.run.save()

    def _plan_epochs(self) -> int:
        """The epoch budget: ``epochs_budget``, or what the time budget (default 3 h) buys at the probed epoch time."""
        spec = self.spec
        if spec.epochs_budget and not spec.time_budget_s:
            return spec.epochs_budget
        budget = self._time_budget_s() - self.run.state["overhead_s"] - self._final_cost_s()
        epoch_s = self._probe_epoch_s()
        self.run.state["probe_epoch_s"] = epoch_s
        n = int(budget // epoch_s)
        if n < 2 * MIN_STAGE_EPOCHS:
            raise YoloptError(f"time budget {self._time_budget_s():.0f} s buys {max(n, 0)} fine-tuning epochs "
                              f"(about {epoch_s:.0f} s each here); the recipe needs at least {2 * MIN_STAGE_EPOCHS}",
                              fields=("time_budget_s",))
        return min(n, spec.epochs_budget) if spec.epochs_budget else n

    def _final_cost_s(self) -> float:
        return 120.0 if self.spec.latency else 30.0

    def _probe_epoch_s(self) -> float:
        """Seconds per fine-tuning epoch here, before pruning: the teacher's forward pass plus the base's
        forward+backward scaled to the FLOPs target (the student's share), at the training batch, times the
        batches per epoch, times :data:`EPOCH_OVERHEAD`."""
        import torch

        from ..data.dataset import image_files, load_data_config

        n_img = len(image_files(load_data_config(self.split.train_yaml), "train"))
        net = copy.deepcopy(self.base)
        x = torch.rand(self.spec.batch, 3, self.imgsz, self.imgsz)
        fwd, step = [], []
        for _ in range(3):
            net.eval()
            t0 = time.perf_counter()
            with torch.no_grad():
                net(x)
            t1 = time.perf_counter()
            net.train()
            sum(o.float().mean() for o in net(x)).backward()
            fwd.append(t1 - t0)
            step.append(time.perf_counter() - t1)
        per_batch = sorted(fwd)[1] + self.spec.target_flops * sorted(step)[1]
        batches = -(-n_img // self.spec.batch)
        return per_batch * batches * EPOCH_OVERHEAD

    # -------------------------------------------------------------- stages
    def _stage_list(self) -> list[StagePlan]:
        plan = list(RECIPE)
        left = 1.0 - sum(p.share for p in plan)
        while left > 1e-6:
            plan.append(replace(POLISH, name=f"polish{len(plan) - 1}", share=min(POLISH.share, left)))
            left -= POLISH.share
        return plan

    def _stage_epochs(self, plan: list[StagePlan], k: int) -> int:
        """Epochs of stage ``k``: its share of the plan, rounded so that the stages add up to the budget."""
        total = self.run.state["plan_epochs"]
        edges = [round(total * sum(p.share for p in plan[:i])) for i in range(len(plan) + 1)]
        return edges[k + 1] - edges[k]

    def _stages(self) -> None:
        st = self.run.state
        plan = self._stage_list()
        done = st["stages"]
        while "stop" not in st:
            k = len(done)
            if k >= len(plan):
                st["stop"] = "budget spent"
                break
            epochs = self._stage_epochs(plan, k)
            started = (self.run.dir / plan[k].name / "last.safetensors").is_file()  # its epochs are fixed
            left = self._time_left_s()
            if not started and left is not None and epochs * self._epoch_s() > left:
                epochs = int(left // self._epoch_s())
            if not started and epochs < MIN_STAGE_EPOCHS:
                st["stop"] = "budget spent"
                break
            start = self._start_model(plan[k])
            rec = self._train_stage(plan[k], epochs, start)
            done.append(rec.to_dict())
            self.run.save()
            self._decide_stop(plan, k)
        self.run.save()

    def _start_model(self, stage: StagePlan) -> Path:
        st = self.run.state
        if not st["stages"]:
            return self.run.abs(st["pruned"]["path"])
        prev = self.run.abs(self._best_stage()["best"])
        if stage.name == "widen" and self.spec.widen:
            return self._widen(prev)
        return prev

    def _best_stage(self) -> dict:
        return max(self.run.state["stages"], key=lambda s: s["fitness"])

    def _decide_stop(self, plan: list[StagePlan], k: int) -> None:
        st = self.run.state
        rec = st["stages"][-1]
        base = _scores(st["base"]["select"])
        if k >= 1 and within(_scores(self._best_stage()["select"]), base, self.spec.max_map_drop, self.spec.metric):
            st["stop"] = "target met"
        elif k >= 2 and rec["fitness"] <= max(s["fitness"] for s in st["stages"][:-1]) + RISING:
            st["stop"] = "no longer rising"
        elif k + 1 >= len(plan):
            st["stop"] = "budget spent"

    def _epoch_s(self) -> float:
        """Seconds per epoch measured so far (the probe before the first stage)."""
        secs = [s["seconds"] / max(s["epochs"], 1) for s in self.run.state["stages"]]
        return secs[-1] if secs else float(self.run.state.get("probe_epoch_s") or 60.0)

    def _time_budget_s(self) -> float | None:
        """The time budget: the given one, else 3 h when no epoch budget is given either."""
        return self.spec.time_budget_s or (None if self.spec.epochs_budget else DEFAULT_TIME_BUDGET_S)

    def _time_left_s(self) -> float | None:
        budget = self._time_budget_s()
        if budget is None:
            return None
        used = self.run.state["overhead_s"] + sum(s["seconds"] for s in self.run.state["stages"])
        return budget - used - self._final_cost_s()

    def _train_stage(self, stage: StagePlan, epochs: int, start: Path) -> StageRecord:
        from ..engine import train
        from ..engine.checkpoint import read_train_checkpoint
        from ..engine.distill import OutputDistillation
        from ..engine.trainer import LAST, load_hyp
        from ..models.checkpoint import load_model
        from .prune import model_flops

        spec, d = self.spec, self.run.dir / stage.name
        callbacks = [OutputDistillation(), _Progress(self, stage.name)]
        hyp = {**load_hyp(None), "lr0": stage.lr0, "scale": stage.scale, "warmup_epochs": stage.warmup,
               "warmup_bias_lr": 0.01}
        finished = None
        if (d / LAST).is_file():
            _, _, state = read_train_checkpoint(d / LAST)
            if int(state["epoch"]) + 1 >= int(state["config"]["epochs"]):
                finished = state["history"]
        if finished is None and (d / LAST).is_file():
            log.info("%s: continuing from its last finished epoch", d)
            res = train(resume=d, callbacks=callbacks, teacher=self.base, device=spec.device, workers=spec.workers,
                        progress=spec.progress)
            history = res.history
        elif finished is None:
            log.info("stage %s: %d distilled epochs from %s (lr0 %g, scale %g) -> %s", stage.name, epochs, start,
                     stage.lr0, stage.scale, d)
            model = load_model(start)
            res = train(str(self.split.train_yaml), model=model, teacher=self.base, callbacks=callbacks,
                        epochs=epochs, imgsz=self.imgsz, batch=spec.batch, workers=spec.workers, device=spec.device,
                        hyp=hyp, cos_lr=True, close_mosaic=0, val_every=max(1, epochs // 8), out=str(d),
                        exist_ok=True, seed=spec.seed, unlabeled=[str(u) for u in spec.unlabeled],
                        progress=spec.progress)
            history = res.history
        else:
            history = finished
        best = d / "best.safetensors"
        model = load_model(best)
        curve = [(h["epoch"], h["metrics/mAP50-95"], h["metrics/mAP50"]) for h in history if "metrics/mAP50" in h]
        sel = self._score(model, self.split.select_yaml)
        return StageRecord(name=stage.name, epochs=len(history), lr0=stage.lr0, scale=stage.scale,
                           seconds=round(sum(h.get("epoch_s", 0.0) for h in history), 1),
                           gflops=model_flops(model, self.imgsz), params=model.num_params(), select=sel,
                           fitness=0.1 * sel.map50 + 0.9 * sel.map50_95, best=self.run.rel(best), curve=curve)

    def _widen(self, prev: Path) -> Path:
        """Measure per-level AP50 of the base and ``prev`` on the selection split; widen the C3 blocks of the
        levels that lost the most, within the FLOPs target. Returns the model to train next."""
        from ..evaluate.levels import level_ap50
        from ..models.checkpoint import load_model, save_model
        from .prune import model_flops

        st = self.run.state
        out = self.run.dir / "widened.safetensors"
        if "widen" in st and out.is_file():
            return out
        t0 = time.perf_counter()
        model = load_model(prev)
        lv_base = level_ap50(self._evaluate(self.base, self.split.select_yaml), self.split.select_yaml, self.base,
                             self.imgsz)
        lv = level_ap50(self._evaluate(model, self.split.select_yaml), self.split.select_yaml, model, self.imgsz)
        total = max(sum(b.instances for b in lv_base), 1)
        loss = [((b.ap50 - s.ap50) * b.instances / total, b.level) for b, s in zip(lv_base, lv) if b.instances > 0]
        dec = WidenDecision([b.to_dict() for b in lv_base], [s.to_dict() for s in lv])
        limit = self.spec.target_flops * st["base"]["gflops"]
        if self.spec.max_latency_ratio:
            dec.latency_ratio = round(self._latency_ratio(model), 4)
            log.info("  the recovered model runs at %.3fx the base's ONNX Runtime latency", dec.latency_ratio)
        det = model.model[-1]
        for lost, level in sorted(loss, reverse=True):
            if lost <= 0.002:
                break
            idx = det.f[level]
            grown = self._grow(model, idx, limit)
            if grown is None:
                what = "FLOPs target" + (f" and latency ratio {self.spec.max_latency_ratio:g}"
                                         if self.spec.max_latency_ratio else "")
                dec.reason += f"level {level} (model.{idx}) lost {lost:.4f} weighted AP50 but no width fits the {what}; "
                continue
            model, hidden, outc, ratio = grown
            dec.widened.append({"layer": idx, "level": level, "stride": int(det.stride[level]), "hidden": hidden,
                                "out": outc, "lost_ap50_weighted": round(lost, 4),
                                "gflops": model_flops(model, self.imgsz), "latency_ratio": ratio})
        if not dec.widened and not dec.reason:
            dec.reason = "no level lost more than 0.002 weighted AP50 against the base"
        save_model(model, out, imgsz=self.imgsz)
        st["widen"] = dec.to_dict()
        st["overhead_s"] += time.perf_counter() - t0
        self.run.save()
        return out

    def _grow(self, model, idx: int, limit: float):
        """``(widened copy, hidden, out, latency ratio or None)``: block ``idx`` grown towards the base's widths, the
        widest that keeps the FLOPs under ``limit`` (and, with ``max_latency_ratio``, its measured ONNX Runtime
        latency under that fraction of the base's); None when not even one step of ``round_to`` fits."""
        from .prune import model_flops
        from .widen import widen_c3

        ref, cur = self.base.model[idx], model.model[idx]
        h0, o0 = cur.cv1.conv.out_channels, cur.cv3.conv.out_channels
        h1, o1 = ref.cv1.conv.out_channels, ref.cv3.conv.out_channels
        r = self.spec.round_to
        steps = max((h1 - h0) // r, (o1 - o0) // r, 0)
        for k in range(steps, 0, -1):
            h = min(h1, h0 + k * r)
            o = min(o1, o0 + k * r)
            try:
                cand = widen_c3(copy.deepcopy(model), idx, hidden=h, out=o, seed=self.spec.seed)
            except YoloptError:  # cv1 and cv2 pruned to different widths: grow the output only
                h = h0
                cand = widen_c3(copy.deepcopy(model), idx, out=o, seed=self.spec.seed)
            if model_flops(cand, self.imgsz) > limit:
                continue
            if not self.spec.max_latency_ratio:
                return cand, h, o, None
            ratio = self._latency_ratio(cand)
            log.info("  widening model.%d to %d / %d channels: %.3fx the base's ONNX Runtime latency", idx, h, o, ratio)
            if ratio <= self.spec.max_latency_ratio:
                return cand, h, o, round(ratio, 4)
        return None

    def _latency_ratio(self, model) -> float:
        """Median over 5 interleaved rounds of ``model``'s / the base's ONNX Runtime FP32 latency (batch 1)."""
        import tempfile

        from ..bench.measure import interleaved
        from ..export import ExportSpec, export

        with tempfile.TemporaryDirectory(prefix="yolopt-widen-") as tmp:
            arts = {k: export(copy.deepcopy(m).eval(), ExportSpec(format="onnx", imgsz=self.imgsz,
                                                                   out=Path(tmp) / f"{k}.onnx", verify=False)).path
                    for k, m in (("base", self.base), ("cand", model))}
            t = interleaved(arts, self.imgsz, threads=self.threads, rounds=5, iters=20)
        rounds = [c / b for c, b in zip(t["cand"]["rounds_p50_ms"], t["base"]["rounds_p50_ms"])]
        return sorted(rounds)[len(rounds) // 2]

    # -------------------------------------------------------------- measuring
    def _evaluate(self, model, data, split: str = "val"):
        from ..evaluate import EvalSpec, evaluate

        return evaluate(model, data, EvalSpec(split=split, imgsz=self.imgsz, progress=False, mode="rect",
                                              device="cpu"))

    def _score(self, model, data) -> Scores:
        r = self._evaluate(model, data)
        return Scores(round(r.map50_95, 5), round(r.map50, 5), r.images)

    def _open_bar(self) -> None:
        if not self.spec.progress:
            return
        from tqdm import tqdm

        done = sum(s["epochs"] for s in self.run.state["stages"])
        plan = self._stage_list()
        k = len(self.run.state["stages"])
        if k < len(plan):  # the epochs the stage in progress has finished (a continued run)
            csv = self.run.dir / plan[k].name / "results.csv"
            done += max(len(csv.read_text().splitlines()) - 1, 0) if csv.is_file() else 0
        self.bar = tqdm(total=self.run.state["plan_epochs"], initial=done, desc="compress", unit="epoch",
                        position=0, leave=True, dynamic_ncols=True)

    # -------------------------------------------------------------- the end
    def _finish(self, rep: CompressReport) -> CompressReport:
        from ..evaluate.coco import paired_bootstrap
        from ..models.checkpoint import load_model, save_model
        from .prune import channel_table, layer_channels
        from .recipe_report import further, write_recipe_report

        st, spec = self.run.state, self.spec
        rep.stages = [StageRecord(**{**s, "select": _scores(s["select"])}) for s in st["stages"]]
        rep.widen = WidenDecision(**st["widen"]) if "widen" in st else None
        rep.stop = st["stop"]
        final_path = self.run.dir / "final.safetensors"
        if "final" not in st:
            best = self._best_stage()
            model = load_model(self.run.abs(best["best"]))
            model.provenance = {"compressed": {"from": str(spec.model), "recipe": [s["name"] for s in st["stages"]],
                                               "target_flops": spec.target_flops, "best_stage": best["name"],
                                               "epochs": sum(s["epochs"] for s in st["stages"])}}
            save_model(model, final_path, imgsz=self.imgsz)
            t0 = time.perf_counter()
            fin = FinalResult(gflops_base=st["base"]["gflops"], gflops=best["gflops"],
                              select_base=_scores(st["base"]["select"]), select=_scores(best["select"]))
            rb = self._evaluate(self.base, spec.data)  # val: scored once, here
            rf = self._evaluate(model, spec.data)
            fin.val_base = Scores(round(rb.map50_95, 5), round(rb.map50, 5), rb.images)
            fin.val = Scores(round(rf.map50_95, 5), round(rf.map50, 5), rf.images)
            if rb.matches is not None and rf.matches is not None:
                for m in ("map50_95", "map50"):
                    fin.val_diff_se[m] = round(float(paired_bootstrap(rf.matches, rb.matches, m, n=200).std()), 5)
            if spec.latency:
                fin.latency, fin.latency_rounds = self._latency(model)
            st["overhead_s"] += time.perf_counter() - t0
            st["final"] = fin.to_dict()
            st["layers"] = channel_table(layer_channels(self.base), layer_channels(model))
            self.run.save()
        f = dict(st["final"])
        f.pop("flops_ratio", None)
        rep.final = FinalResult(**{**f, "select_base": _scores(f["select_base"]), "select": _scores(f["select"]),
                                   "val_base": _scores(f["val_base"]), "val": _scores(f["val"])})
        rep.layers = st["layers"]
        rep.seconds = round(st["overhead_s"] + sum(s["seconds"] for s in st["stages"]), 1)
        rep.further = further(rep, spec)
        rep.out = str(final_path)
        write_recipe_report(rep, self.run.dir)
        return rep

    def _latency(self, model) -> tuple[dict, int]:
        """Fused FP32 base and result on ONNX Runtime and OpenVINO, timed in interleaved rounds in one run."""
        from ..bench.measure import interleaved
        from ..export import ExportSpec, export

        folder = self.run.dir / "latency"
        arts = {}
        for name, m in (("base", self.base), ("final", model)):
            for fmt, rel in (("onnx", f"{name}.onnx"), ("openvino", f"{name}_openvino/{name}.xml")):
                try:
                    res = export(copy.deepcopy(m).eval(), ExportSpec(format=fmt, imgsz=self.imgsz, out=folder / rel,
                                                                     verify=False))
                    arts[f"{name}/{fmt}"] = res.path
                except YoloptError as e:
                    log.warning("latency on %s skipped: %s", fmt, e)
        rounds = 7
        t = interleaved(arts, self.imgsz, threads=self.threads, rounds=rounds, iters=20)
        out = {}
        for fmt, runtime in (("onnx", "onnxruntime"), ("openvino", "openvino")):
            b, f = t.get(f"base/{fmt}"), t.get(f"final/{fmt}")
            if b and f:
                out[runtime] = {"base_ms": round(b["p50_ms"], 3), "ms": round(f["p50_ms"], 3),
                                "ratio": round(f["p50_ms"] / b["p50_ms"], 4), "threads": f["threads"],
                                "precision": f["precision"]}
        return out, rounds


class _Progress(Callback):
    """Trainer callback: advance the recipe's bar (stage, epoch, selection mAP so far, ETA) each epoch."""

    def __init__(self, recipe: _Recipe, stage: str):
        self.recipe, self.stage = recipe, stage

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None:
        bar = self.recipe.bar
        if bar is None:
            return
        bar.update(1)
        if "metrics/mAP50" in metrics:
            bar.set_postfix_str(f"{self.stage} epoch {epoch + 1}/{trainer.cfg.epochs}, selection mAP50 "
                                f"{metrics['metrics/mAP50']:.4f} mAP50-95 {metrics['metrics/mAP50-95']:.4f}")
        else:
            bar.set_postfix_str(f"{self.stage} epoch {epoch + 1}/{trainer.cfg.epochs}")


def _spec_dict(spec: CompressSpec) -> dict:
    d = asdict(spec)
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
