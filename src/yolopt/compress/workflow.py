"""The prune workflow behind ``yolopt prune``: checks, measurements before and after (params, FLOPs,
latency, mAP), the pruning steps (each optionally reconstructed and fine-tuned / distilled), the saved
model and its report (JSON + markdown).

    >>> from yolopt.compress import PruneWorkflowSpec, run_prune
    >>> rep = run_prune(PruneWorkflowSpec("yolov5n.pt", target_flops=0.5, data="coco128.yaml", finetune=4,
    ...                                   distill=True, out="runs/prune/half.safetensors"))
    >>> rep.summary.gflops.finetuned
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import YoloptError
from ..fileio import FolderLock, write_json

log = logging.getLogger("yolopt")

# exported artifacts (fixed graphs: nothing to prune or fine-tune); .param is NCNN's, .pte ExecuTorch's
ARTIFACT_SUFFIXES = {".onnx", ".xml", ".bin", ".torchscript", ".engine", ".ts", ".tflite", ".pb", ".mlmodel", ".param",
                     ".pte"}
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PruneWorkflowSpec:
    """Everything one prune run needs. Field names are the ``yolopt prune`` option names (``global_``
    for ``--global``, ``layer_ratios`` for ``--layer-ratio``; ``latency`` / ``progress`` are the opposite
    of ``--no-latency`` / ``--no-progress``). ``method="magnitude"`` is unstructured pruning (``sparsity``);
    the other methods are structured (see :class:`~yolopt.compress.prune.PruneSpec`)."""

    model: str | Path  # an Ultralytics .pt or a yolopt .safetensors (not an export)
    ratio: float | None = None
    target_flops: float | None = None
    target_latency_ms: float | None = None
    method: str = "group"
    sparsity: float | None = None  # method "magnitude": fraction of conv weights set to 0
    global_: bool = False
    round_to: int = 8
    ignore: tuple = ()  # layer indices ("9") or module names ("model.9.cv2")
    layer_ratios: tuple = ()  # ((conv module name, ratio), ...)
    fill: bool = False  # target_flops: land just under it (one group a round-to step further; prune.fill_flops)
    steps: int = 1
    data: str | None = None  # dataset yaml, or a folder of images without labels (distillation only)
    unlabeled: tuple = ()  # extra images without labels for distilled fine-tuning
    val_data: str | None = None  # mAP on this dataset instead of data
    val_every: int = 1
    reconstruct: int = 0  # images for the least-squares refit after each step (0: none)
    finetune: int = 0  # fine-tuning epochs in all
    distill: bool = False
    teacher: str | None = None  # default: the unpruned model
    feature_distill: bool = False
    backend: str = "onnxruntime"  # where latency is measured
    imgsz: int = 640
    threads: int | None = None
    latency: bool = True
    val_images: int | None = None
    match_classes: bool = False  # evaluate only the classes the model and the dataset share by name
    batch: int = 16
    workers: int = 2
    device: str = "auto"
    lr0: float | None = None
    safe_threshold: float = 0.01
    force: bool = False
    out: str | Path | None = None  # default runs/prune/<name>_pruned.safetensors
    progress: bool = True

    def out_path(self) -> Path:
        src = Path(self.model)
        return Path(self.out) if self.out else Path("runs/prune") / f"{src.stem}_pruned.safetensors"

    def map_data(self) -> str | None:
        """The labelled dataset mAP is measured on: ``val_data``, else ``data`` when it is a yaml."""
        from ..data.dataset import is_image_source

        if self.val_data:
            return str(self.val_data)
        return str(self.data) if self.data and not is_image_source(self.data) else None

    def prune_spec(self):
        from .prune import PruneSpec

        ignore = self.ignore.split(",") if isinstance(self.ignore, str) else self.ignore
        return PruneSpec(ratio=self.ratio, target_flops=self.target_flops, target_latency_ms=self.target_latency_ms,
                         method=self.method, global_=self.global_, round_to=self.round_to,
                         ignore=tuple(str(x).strip() for x in ignore if str(x).strip()), steps=self.steps,
                         imgsz=self.imgsz,
                         layer_ratios=tuple(self.layer_ratios), backend=self.backend, threads=self.threads,
                         fill=self.fill).check()

    def check(self) -> "PruneWorkflowSpec":
        """Raise :class:`YoloptError` for a spec that cannot run; returns it with ``distill`` set when a
        teacher or feature distillation asks for it."""
        path = Path(self.model)
        if path.is_dir() or path.suffix.lower() in ARTIFACT_SUFFIXES:
            raise YoloptError(f"{path}: an exported artifact cannot be pruned (its graph is fixed); prune the .pt or "
                              f".safetensors it was exported from, then export the pruned model", fields=("model",))
        out = self.out_path()
        if out.suffix != ".safetensors":
            raise YoloptError(f"out {out}: the pruned model is written as a yolopt .safetensors file", fields=("out",))
        if self.finetune and not self.data:
            raise YoloptError("fine-tuning needs a dataset (the images to fine-tune on)", fields=("finetune", "data"))
        if (self.distill or self.teacher or self.feature_distill) and not self.finetune:
            raise YoloptError("distillation and a teacher apply while fine-tuning: give fine-tuning epochs and a "
                              "dataset", fields=("distill", "teacher", "finetune", "data"))
        if self.unlabeled and not self.finetune:
            raise YoloptError("unlabeled images are for fine-tuning with distillation",
                              fields=("unlabeled", "finetune", "distill"))
        spec = replace(self, distill=True) if (self.feature_distill or self.teacher) else self
        from ..data.dataset import is_image_source

        if spec.data and (spec.unlabeled or is_image_source(spec.data)) and spec.finetune and not spec.distill:
            raise YoloptError("images without labels (a data folder, unlabeled images) are learnt from the teacher: "
                              "fine-tune with distillation", fields=("data", "unlabeled", "distill"))
        if spec.method == "magnitude":
            if spec.sparsity is None:
                raise YoloptError("magnitude pruning needs a sparsity (the fraction of conv weights set to 0)",
                                  fields=("method", "sparsity"))
            if spec.ratio or spec.target_flops or spec.target_latency_ms or spec.finetune or spec.steps > 1:
                raise YoloptError("magnitude pruning takes only a sparsity (no ratio, targets, fine-tuning or steps)",
                                  fields=("method", "sparsity"))
        elif spec.sparsity is not None:
            raise YoloptError("a sparsity is for magnitude (unstructured) pruning; structured pruning takes a ratio, "
                              "a FLOPs target or a latency target (BN sparsity training is train's sparsity)",
                              fields=("sparsity", "method", "ratio", "target_flops", "target_latency_ms"))
        return spec


# ----------------------------------------------------------------------------- the report


@dataclass
class MapScore:
    map50_95: float
    map50: float
    images: int
    mode: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Trio:
    """One summary row: the value before pruning, right after pruning, after fine-tuning (None: not done)."""

    before: float | int | None = None
    pruned: float | int | None = None
    finetuned: float | int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PruneSummary:
    params: Trio
    gflops: Trio
    latency_ms: Trio
    map50_95: Trio
    map50: Trio

    def to_dict(self) -> dict:
        return {k: getattr(self, k).to_dict() for k in ("params", "gflops", "latency_ms", "map50_95", "map50")}


@dataclass
class ReconstructRow:
    images: int
    seconds: float
    err_before: float
    err_after: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PruneStep:
    """One pruning step: params after it, the refit (when reconstructing), mAP right after it and after
    its fine-tuning (``finetuned``: whether it was fine-tuned)."""

    step: int
    params: int
    reconstruct: ReconstructRow | None = None
    map: MapScore | None = None
    map_finetuned: MapScore | None = None
    finetuned: bool = False

    def to_dict(self) -> dict:
        d: dict = {"step": self.step, "params": self.params}
        if self.reconstruct is not None:
            d["reconstruct"] = self.reconstruct.to_dict()
        d["map"] = self.map and self.map.to_dict()
        if self.finetuned:
            d["map_finetuned"] = self.map_finetuned and self.map_finetuned.to_dict()
        return d


UNSTRUCTURED_NOTE = ("Unstructured pruning shrinks nothing: the zeros stay in dense tensors, so the parameter count, "
                     "file size and FLOPs are unchanged and dense runtimes (PyTorch, ONNX Runtime, OpenVINO on CPU) "
                     "run it no faster. Use a structured method for a smaller, faster model.")


@dataclass
class PruneReport:
    """What a prune run did and measured; ``to_dict()`` is the JSON report (``schema_version`` 1).
    Structured runs fill ratio .. ignore, ``search``, ``steps_log``, ``layers``, ``seconds``; magnitude
    runs fill ``sparsity``, ``zeros``, ``prunable`` and ``note``."""

    model: str
    method: str
    imgsz: int
    backend: str
    threads: int | None
    data: str | None
    unlabeled: list
    map_data: str | None
    machine: dict
    out: str
    warnings: list = field(default_factory=list)
    summary: PruneSummary | None = None
    ratio: float | None = None
    safe_prune_ratio: float | None = None
    safe_threshold: float | None = None
    global_: bool = False
    round_to: int | None = None
    steps: int | None = None
    ignore: list = field(default_factory=list)
    search: list = field(default_factory=list)  # the target search's candidates (records of prune.search_*)
    steps_log: list = field(default_factory=list)  # PruneStep
    latency_before: dict | None = None  # bench records (BenchRecord.to_dict())
    latency_after: dict | None = None
    layers: list = field(default_factory=list)  # channel_table rows
    seconds: float | None = None
    sparsity: float | None = None
    params: int | None = None
    zeros: int | None = None
    prunable: int | None = None
    note: str | None = None

    @property
    def structured(self) -> bool:
        return self.method != "magnitude"

    def to_dict(self) -> dict:
        d = {"schema_version": SCHEMA_VERSION, "model": self.model, "method": self.method, "imgsz": self.imgsz,
             "backend": self.backend, "threads": self.threads, "data": self.data, "unlabeled": list(self.unlabeled),
             "map_data": self.map_data, "warnings": list(self.warnings), "machine": self.machine}
        if self.structured:
            d.update({"ratio": self.ratio, "safe_prune_ratio": self.safe_prune_ratio,
                      "safe_threshold": self.safe_threshold, "global": self.global_, "round_to": self.round_to,
                      "steps": self.steps, "ignore": list(self.ignore), "search": self.search,
                      "steps_log": [s.to_dict() for s in self.steps_log]})
        else:
            d.update({"sparsity": self.sparsity, "params_before": self.params, "params_after": self.params,
                      "zeros": self.zeros, "prunable": self.prunable, "note": self.note})
        d["summary"] = self.summary.to_dict() if self.summary else None
        d["latency"] = {"before": self.latency_before, "after": self.latency_after}
        if self.structured:
            d["layers"] = self.layers
        d["out"] = self.out
        if self.structured:
            d["seconds"] = self.seconds
        return d


# ----------------------------------------------------------------------------- the workflow


def run_prune(spec: PruneWorkflowSpec) -> PruneReport:
    """Prune ``spec.model`` as ``spec`` says, save it to ``spec.out_path()`` and write the report next to it
    (``.json``, ``.md``). Raises :class:`YoloptError` for a spec or model that cannot be pruned."""
    spec = spec.check()
    if spec.finetune:  # one run per fine-tune folder, refused at start (the trainer locks each step's folder)
        out = spec.out_path()
        with FolderLock(out.with_name(f"{out.stem}_finetune"), "prune run"):
            return _run_prune(spec)
    return _run_prune(spec)


def _run_prune(spec: PruneWorkflowSpec) -> PruneReport:
    from ..machine import machine_info
    from ..models.checkpoint import load_model

    src = Path(spec.model)
    model = load_model(src)
    if model.is_fused:
        raise YoloptError(f"{src}: the model is stored fused (Conv+BN folded); prune the unfused weights",
                          fields=("model",))
    t_start = time.perf_counter()
    rep = PruneReport(model=str(src), method=spec.method, imgsz=spec.imgsz, backend=spec.backend,
                      threads=spec.threads, data=spec.data and str(spec.data),
                      unlabeled=[str(u) for u in spec.unlabeled], map_data=spec.map_data(), machine=machine_info(),
                      out=str(spec.out_path()))
    if spec.method == "magnitude":
        return _run_unstructured(model, spec, rep)
    return _run_structured(model, spec, rep, t_start)


def _run_structured(model, spec: PruneWorkflowSpec, rep: PruneReport, t_start: float) -> PruneReport:
    from ..models.checkpoint import load_model, save_model
    from .prune import (
        ChannelPruner,
        channel_table,
        layer_channels,
        model_flops,
        search_flops_target,
        search_ratio_latency,
    )
    from .report import calibration_batch, write_report

    src, out = Path(spec.model), spec.out_path()
    pspec = spec.prune_spec()
    teacher = None
    if spec.distill:
        from ..engine.distill import check_teacher

        teacher = load_model(spec.teacher) if spec.teacher else copy.deepcopy(model)
        check_teacher(model, teacher)
    map_data = spec.map_data()
    if pspec.method == "taylor" and not map_data:
        raise YoloptError("method taylor needs a labelled dataset (a calibration batch with labels)",
                          fields=("method", "data"))
    calib_src = map_data if pspec.method == "taylor" else (spec.data or spec.val_data)
    calib = calibration_batch(calib_src, min(spec.imgsz, 640)) if calib_src else None

    if pspec.ratio is not None:  # before any measurement: a refusal costs nothing
        _check_safe(model, pspec.ratio, spec, rep)
    log.info("before pruning: %s", src)
    before = {"params": model.num_params(), "gflops": model_flops(model, spec.imgsz)}
    log.info("  %s params, %.2f GFLOPs at %d", f"{before['params']:,}", before["gflops"], spec.imgsz)
    map_before = _evaluate(model, spec)  # first: a class mismatch is refused before any timing
    lat_before = _latency(model, spec)

    search: list = []
    if pspec.target_flops is not None:
        log.info("searching the ratio for %.0f%% of the FLOPs ...", 100 * pspec.target_flops)
        ratio, pspec = search_flops_target(model, pspec, calib, record=search)
        if pspec.layer_ratios:
            log.info("  filled to %.4f of the FLOPs: %s pruned further", search[-1]["value"],
                     ", ".join(f"{n} at {r:.3f}" for n, r in pspec.layer_ratios))
    elif pspec.target_latency_ms is not None:
        log.info("searching the ratio for %.2f ms on %s (each candidate measured) ...", pspec.target_latency_ms,
                 pspec.backend)
        ratio = search_ratio_latency(model, pspec, calib, record=search)
    else:
        ratio = pspec.ratio if pspec.ratio is not None else 0.0  # layer ratios only
    _check_safe(model, max([ratio, *(r for _, r in pspec.layer_ratios)]), spec, rep)
    rep.ratio = ratio  # the uniform ratio (layer ratios, a fill's included, are in the provenance)
    rep.search = search

    pruned = copy.deepcopy(model).eval()
    chans0 = layer_channels(model)
    pruner = ChannelPruner(pruned, pspec, ratio=ratio, calib=calib)
    recon_images = _reconstruct_images(spec) if spec.reconstruct else None
    per_step = max(1, spec.finetune // pspec.steps) if spec.finetune else 0
    for k in range(pspec.steps):
        ref = copy.deepcopy(pruned) if recon_images is not None else None
        prev = {n: v.clone() for n, v in pruner.kept_outputs.items()} if ref is not None else None
        pruner.step()
        row = PruneStep(step=k + 1, params=pruned.num_params())
        log.info("pruning step %d/%d: %s params", k + 1, pspec.steps, f"{row.params:,}")
        if ref is not None:
            row.reconstruct = _refit(pruned, ref, recon_images, pruner, prev, chans0, spec)
        row.map = _evaluate(pruned, spec)
        if per_step:
            epochs = per_step if k < pspec.steps - 1 else max(1, spec.finetune - per_step * (pspec.steps - 1))
            pruned = _finetune(pruned, spec, epochs, out.with_name(f"{out.stem}_finetune") / f"step{k + 1}", teacher)
            row.finetuned, row.map_finetuned = True, _evaluate(pruned, spec)
        rep.steps_log.append(row)
    after = {"params": pruned.num_params(), "gflops": model_flops(pruned, spec.imgsz)}
    lat_after = _latency(pruned, spec)
    map_pruned = rep.steps_log[-1].map  # right after the last pruning step, before its fine-tuning
    map_final = rep.steps_log[-1].map_finetuned
    if map_before and map_pruned and map_pruned.map50_95 < 0.5 * map_before.map50_95:
        msg = (f"mAP50-95 fell from {map_before.map50_95:.4f} to {map_pruned.map50_95:.4f} right after pruning"
               + ("" if spec.finetune else "; fine-tune it (with distillation) before using it"))
        log.warning("!" * 20 + " " + msg)
        rep.warnings.append(msg)

    pruned.provenance = {**(getattr(model, "provenance", None) or {}),
                         "pruned": {"from": str(src), "method": pspec.method, "ratio": round(ratio, 4),
                                    "global": pspec.global_, "round_to": pspec.round_to, "steps": pspec.steps,
                                    "finetune_epochs": spec.finetune, "distill": bool(spec.distill),
                                    **({"layer_ratios": [list(x) for x in pspec.layer_ratios]}
                                       if pspec.layer_ratios else {})}}
    save_model(pruned, out, imgsz=spec.imgsz)

    ft = bool(spec.finetune)
    lb = lat_before["latency_ms"]["p50"] if lat_before else None
    la = lat_after["latency_ms"]["p50"] if lat_after else None
    rep.summary = PruneSummary(
        params=Trio(before["params"], after["params"], after["params"] if ft else None),
        gflops=Trio(before["gflops"], after["gflops"], after["gflops"] if ft else None),
        latency_ms=Trio(lb, la, la if ft else None),
        map50_95=Trio(map_before and map_before.map50_95, map_pruned and map_pruned.map50_95,
                      map_final and map_final.map50_95),
        map50=Trio(map_before and map_before.map50, map_pruned and map_pruned.map50, map_final and map_final.map50))
    rep.latency_before, rep.latency_after = lat_before, lat_after
    rep.layers = channel_table(chans0, layer_channels(pruned))
    rep.seconds = round(time.perf_counter() - t_start, 1)
    write_report(rep.to_dict(), out.with_suffix(".json"), out.with_suffix(".md"))
    return rep


def _run_unstructured(model, spec: PruneWorkflowSpec, rep: PruneReport) -> PruneReport:
    from ..models.checkpoint import save_model
    from .prune import model_flops
    from .report import write_report
    from .unstructured import magnitude_prune

    out = spec.out_path()
    log.info("before pruning: %s", spec.model)
    map_before = _evaluate(model, spec)  # first: a class mismatch is refused before any timing
    lat_before = _latency(model, spec)
    res = magnitude_prune(model, spec.sparsity)
    log.info("zeroed %.1f%% of the conv weights (they stay in dense tensors)", 100 * res.sparsity)
    lat_after = _latency(res.model, spec)
    map_after = _evaluate(res.model, spec)
    fl = model_flops(model, spec.imgsz)
    save_model(res.model, out, imgsz=spec.imgsz)
    lb = lat_before["latency_ms"]["p50"] if lat_before else None
    la = lat_after["latency_ms"]["p50"] if lat_after else None
    rep.sparsity, rep.params, rep.zeros, rep.prunable = res.sparsity, res.params, res.zeros, res.prunable
    rep.summary = PruneSummary(
        params=Trio(res.params, res.model.num_params()), gflops=Trio(fl, model_flops(res.model, spec.imgsz)),
        latency_ms=Trio(lb, la), map50_95=Trio(map_before and map_before.map50_95, map_after and map_after.map50_95),
        map50=Trio(map_before and map_before.map50, map_after and map_after.map50))
    rep.latency_before, rep.latency_after = lat_before, lat_after
    rep.note = UNSTRUCTURED_NOTE
    write_report(rep.to_dict(), out.with_suffix(".json"), out.with_suffix(".md"))
    log.warning(rep.note)
    return rep


def _evaluate(model, spec: PruneWorkflowSpec) -> MapScore | None:
    data = spec.map_data()
    if not data:
        return None
    from ..evaluate import EvalSpec, evaluate

    t0 = time.perf_counter()
    r = evaluate(model, data, EvalSpec(match_classes=spec.match_classes), imgsz=spec.imgsz, max_images=spec.val_images,
                 progress=False)
    log.info("  mAP50-95 %.4f, mAP50 %.4f (%d images, %.0f s)", r.map50_95, r.map50, r.images, time.perf_counter() - t0)
    return MapScore(r.map50_95, r.map50, r.images, r.mode)


def _latency(model, spec: PruneWorkflowSpec) -> dict | None:
    if not spec.latency:
        return None
    from .prune import measure_latency

    rec = measure_latency(model, spec.imgsz, spec.backend, spec.threads)
    log.info("  latency p50 %.2f ms (%s, %s threads)", rec["latency_ms"]["p50"], spec.backend,
             rec["threads"] or "runtime-default")
    return rec


def _finetune(model, spec: PruneWorkflowSpec, epochs: int, out: Path, teacher):
    """Fine-tune ``model`` into the run folder ``out``; a run left there by a killed process with this same
    model (tensor shapes) and settings is continued from its last finished epoch, or reused when it finished."""
    from ..engine import train
    from ..engine.trainer import BEST, LAST
    from ..models.checkpoint import load_model

    callbacks = []
    if spec.distill:
        from ..engine.distill import OutputDistillation

        callbacks.append(OutputDistillation(features=spec.feature_distill))
    hyp = None
    if spec.lr0 is not None:
        from ..engine.trainer import load_hyp

        hyp = {**load_hyp(None), "lr0": spec.lr0}
    kw = dict(epochs=epochs, imgsz=spec.imgsz, batch=spec.batch, hyp=hyp, unlabeled=[str(u) for u in spec.unlabeled],
              val_data=spec.val_data and str(spec.val_data), val_every=spec.val_every)
    summary = _weights_summary(model)
    earlier = _earlier_finetune(model, summary, spec.data, kw, out)
    if earlier == "finished":
        log.info("fine-tuning: %s finished before; using its weights", out)
        res = None
    elif earlier == "resume":
        res = train(resume=out, callbacks=callbacks, teacher=teacher if spec.distill else None, device=spec.device,
                    workers=spec.workers, progress=spec.progress)
    else:
        log.info("fine-tuning %d epoch(s) on %s%s%s -> %s", epochs, spec.data,
                 f" + {', '.join(map(str, spec.unlabeled))} (unlabelled)" if spec.unlabeled else "",
                 " with distillation" if spec.distill else "", out)
        out.mkdir(parents=True, exist_ok=True)
        for f in (LAST, BEST):  # an earlier run's files; the marker below describes the run written from here on
            (out / f).unlink(missing_ok=True)
        write_json(out / _PRUNED, {"model": str(spec.model), "weights": summary}, quiet=True)
        res = train(str(spec.data), model=model, workers=spec.workers, device=spec.device, out=str(out), exist_ok=True,
                    teacher=teacher if spec.distill else None, callbacks=callbacks, progress=spec.progress,
                    source=f"the pruned {spec.model}", **kw)
    best = out / BEST
    tuned = load_model(best if best.exists() else out / LAST) if res is None else load_model(res.best or res.last)
    model.load_state_dict(tuned.state_dict())  # the EMA weights
    return model.cpu().float().eval()


_PRUNED = "pruned_model.json"  # in a fine-tune run folder: a summary of the pruned weights it started from


def _weights_summary(model) -> dict[str, list[float]]:
    """Per tensor: its sum and its sum of magnitudes. Pruning is deterministic up to float rounding (its mean
    compensation runs the model, and the thread count changes the rounding), so compare with a tolerance."""
    return {k: [float(v.double().sum()), float(v.double().abs().sum())] for k, v in model.state_dict().items()}


def _same_weights(a: dict, b: dict) -> bool:
    import math

    return a.keys() == b.keys() and all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-5)
                                        for k in a for x, y in zip(a[k], b[k]))


def _earlier_finetune(model, summary: dict, data, kw: dict, out: Path) -> str | None:
    """What a fine-tune run already in ``out`` offers: ``"resume"`` (the same pruned weights, settings and tensor
    shapes, epochs left), ``"finished"`` (all epochs done) or None (none, or not this one: a warning, and it
    starts over)."""
    import json

    from ..engine.checkpoint import prefixed, read_train_checkpoint
    from ..engine.trainer import LAST
    from ..errors import CheckpointError

    if not (out / LAST).is_file():
        return None
    try:
        tensors, _, state = read_train_checkpoint(out / LAST)
    except CheckpointError as e:
        log.warning("%s; the fine-tune starts over", e)
        return None
    cfg = state.get("config") or {}
    want = {**kw, "data": str(Path(data).resolve()) if Path(data).exists() else str(data)}
    want["unlabeled"] = [str(Path(u).resolve()) if Path(u).exists() else str(u) for u in want["unlabeled"]]
    if want["val_data"] and Path(want["val_data"]).exists():
        want["val_data"] = str(Path(want["val_data"]).resolve())
    changed = [k for k, v in want.items() if cfg.get(k) != v]
    try:
        started = json.loads((out / _PRUNED).read_text()).get("weights") or {}
    except (OSError, ValueError, AttributeError):
        started = {}
    ema = prefixed(tensors, "model.")
    shapes = [k for k, v in model.state_dict().items() if k not in ema or tuple(ema[k].shape) != tuple(v.shape)]
    why = (f"its tensor shapes differ from the pruned model's ({len(shapes)} tensors, e.g. {shapes[0]})" if shapes
           else f"its settings differ ({', '.join(changed)})" if changed
           else "it started from other pruned weights" if not _same_weights(started, summary) else None)
    if why:
        log.warning("%s: the fine-tune there is not this one: %s; it starts over", out, why)
        return None
    return "finished" if int(state["epoch"]) + 1 >= int(cfg["epochs"]) else "resume"


def _refit(pruned, ref, images, pruner, prev: dict, chans0: dict, spec: PruneWorkflowSpec) -> ReconstructRow:
    """Least-squares refit of ``pruned``'s convs to reproduce ``ref`` (the model before this step)."""
    import torch

    from .reconstruct import reconstruct

    kept = {n: torch.searchsorted(prev.get(n, torch.arange(chans0[n][1])), v)  # relative to ref
            for n, v in pruner.kept_outputs.items()}
    st = reconstruct(pruned, ref, images, progress=spec.progress, kept=kept)
    row = ReconstructRow(images=len(images), seconds=round(st.seconds, 1), err_before=st.mean_error("err_before"),
                         err_after=st.mean_error("err_after"))
    log.info("  reconstructed %d convs on %d images (%.0f s): mean output error %.4f -> %.4f",
             len(st.layers), len(images), st.seconds, row.err_before, row.err_after)
    return row


def _reconstruct_images(spec: PruneWorkflowSpec):
    """``spec.reconstruct`` letterboxed images (uint8, imgsz square, at most 640) from ``data`` (its train
    split, or the folder) and ``unlabeled``, spread evenly over the files."""
    import numpy as np

    from ..data.dataset import image_files, is_image_source, load_data_config
    from ..data.images import list_images, read_image
    from ..data.preprocess import preprocess

    files = []
    for src in [spec.data, *spec.unlabeled]:
        if not src:
            continue
        files += list_images(src) if is_image_source(src) else image_files(load_data_config(src), "train")
    if not files:
        raise YoloptError("reconstruction needs images: a dataset (yaml or folder) or unlabeled images",
                          fields=("reconstruct", "data", "unlabeled"))
    pick = np.linspace(0, len(files) - 1, min(spec.reconstruct, len(files))).round().astype(int)
    ims = [im for im in (read_image(files[i]) for i in pick) if im is not None]
    if not ims:
        raise YoloptError(f"reconstruction: none of the {len(pick)} images picked from {spec.data} could be read",
                          fields=("reconstruct", "data"))
    return preprocess(ims, min(spec.imgsz, 640), pixels=True)[0]


def _check_safe(model, ratio: float, spec: PruneWorkflowSpec, rep: PruneReport) -> None:
    """Compare the ratio with the model's safe prune ratio: refuse far past it without fine-tuning
    (unless ``force``), warn loudly otherwise."""
    from .sparsity import safe_prune_ratio

    pspec = spec.prune_spec()
    safe = safe_prune_ratio(model, spec.safe_threshold)
    rep.ratio, rep.safe_prune_ratio, rep.safe_threshold = ratio, safe, spec.safe_threshold
    rep.global_, rep.round_to, rep.steps, rep.ignore = pspec.global_, pspec.round_to, pspec.steps, list(pspec.ignore)
    if ratio <= max(2 * safe, safe + 0.1) or any("far past" in w for w in rep.warnings):
        return
    msg = (f"channel ratio {ratio:.2f} is far past the safe prune ratio {safe:.2f} of this model (fraction of BN "
           f"channels with |gamma| < {spec.safe_threshold:g}); expect a large mAP drop before fine-tuning. "
           f"Sparsity-train first (train with BN sparsity, e.g. 1e-4) and/or fine-tune with distillation")
    if not spec.finetune and not spec.force:
        raise YoloptError(msg.replace("expect a large", "refusing to prune without fine-tuning (a large")
                          .replace("before fine-tuning.", "is expected; force to prune anyway)."),
                          fields=("finetune", "force"))
    log.warning("!" * 20 + " " + msg)
    rep.warnings.append(msg)
