"""``optimize``: measure the baseline, try the candidates cheapest first within the time budget, pick
one per scenario, and write the report and the deploy bundle.

Every variant is measured the same way: mAP on the val split with the letterbox it is deployed with
(batch 1), and the end-to-end pipeline (decode -> letterbox -> model -> NMS at the deployment
threshold -> boxes) timed in a child process on val images, with the same total threads. At the end
the recommended variant and the baseline are timed again in interleaved rounds, so the headline
speed-up is a ratio taken in one run.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..data.dataset import image_files, load_data_config
from ..errors import YoloptError, is_transient
from ..fileio import FolderLock, write_json
from ..machine import machine_info
from . import costs
from .records import (SCHEMA_VERSION, Budget, Confirm, OptimizeResults, Recommendation, ScenarioPick, StageProfile,
                      VariantResult)
from .select import choose, describe, next_steps, violations
from .spec import AUTO, OptimizeError, OptimizeSpec, runtime_installed
from .variants import Builder, Variant, bench_variant, build_key, evaluate_variant, stale_int8

log = logging.getLogger("yolopt")


class _Budget:
    """Compute time spent on this output folder, across resumed runs (``OUT/state.json``)."""

    def __init__(self, out: Path, spec: OptimizeSpec):
        self.file = out / "state.json"
        self.limit = spec.time_budget_s
        self.before = 0.0
        key = spec.key()
        if self.file.exists():
            try:
                st = json.loads(self.file.read_text())
            except ValueError:
                st = {}
            diff = sorted(k for k in key if st.get("key") and st["key"].get(k) != key[k])
            if diff:
                raise OptimizeError(f"{out}: holds an optimize run with other settings (differs in {', '.join(diff)});"
                                    " use another output folder or remove it", fields=("out",))
            self.before = float(st.get("spent_s", 0.0))
        self.key = key
        self.t0 = time.perf_counter()
        self.save()

    @property
    def spent(self) -> float:
        return self.before + time.perf_counter() - self.t0

    @property
    def left(self) -> float:
        return self.limit - self.spent

    def save(self) -> None:
        write_json(self.file, {"key": self.key, "spent_s": self.spent}, quiet=True)


_CONSOLE = None


def _say(spec: OptimizeSpec, msg: str) -> None:
    global _CONSOLE
    if spec.progress:
        if _CONSOLE is None:
            from rich.console import Console

            _CONSOLE = Console(stderr=True, highlight=False)
        _CONSOLE.print(msg)
    else:
        log.debug("%s", msg)


def _aspect_shapes(files: list[Path], n: int = 200) -> list[tuple[int, int]]:
    """(h, w) of (up to ``n``) images, decoded at 1/8 size: only their aspect ratios are used."""
    import cv2

    shapes = []
    for f in files[:n]:
        im = cv2.imread(str(f), cv2.IMREAD_REDUCED_GRAYSCALE_8)
        if im is not None:
            shapes.append(im.shape[:2])
    return shapes


def _rect_gain(shapes: list[tuple[int, int]], imgsz: int, stride: int = 32) -> float:
    """Mean rect-letterbox area / square area over images of these shapes: < 1 when rect input pays off."""
    from ..data.preprocess import rect_shape

    areas = [np.prod(rect_shape([hw], imgsz, stride)) / imgsz ** 2 for hw in shapes]
    return float(np.mean(areas)) if areas else 1.0


def _overlap(train: list[Path], val: list[Path]) -> float:
    """Fraction of val images that are also train images (fine-tuning on them would grade itself)."""
    if not train:
        return 1.0
    train_set = {p.resolve() for p in train}
    return sum(p.resolve() in train_set for p in val) / max(1, len(val))


class Optimizer:
    def __init__(self, spec: OptimizeSpec):
        from ..models.checkpoint import load_model

        self.model = load_model(spec.model)
        spec.check(getattr(self.model, "imgsz", None))
        self.spec = spec
        self.out = Path(spec.out)
        self.cfg = load_data_config(spec.data)
        self.val = image_files(self.cfg, "val")
        if not self.val:
            raise OptimizeError(f"{spec.data}: the val split has no images")
        if spec.val_images:
            self.val = self.val[:spec.val_images]
        if self.model.nc != self.cfg.nc:
            raise OptimizeError(f"{spec.model}: the model has {self.model.nc} classes but {spec.data} has "
                                f"{self.cfg.nc}; optimize needs the model's own dataset")
        self.lock = FolderLock(self.out, "optimize run").__enter__()  # one run per folder, released on any exit
        try:
            self.budget = _Budget(self.out, spec)
        except BaseException:
            self.release()
            raise
        self.runtime_choice = None
        if spec.target == AUTO:  # time the FP32 model on each installed CPU runtime; build on the fastest
            from .auto import choose_runtime

            try:
                self.runtime_choice = choose_runtime(self.model, spec.imgsz[0], spec.threads, self.out)
            except BaseException:
                self.release()
                raise
            spec.target = self.runtime_choice.chosen
            _say(spec, f"--target auto: {spec.target} (FP32 model-only p50 at {spec.imgsz[0]}, {spec.threads} "
                       f"thread(s): " + ", ".join(f"{k} {v:.2f} ms" for k, v in self.runtime_choice.p50_ms.items())
                 + ")")
        self.builder = Builder(spec, self.out / "artifacts", self.model)
        self.bench_images = [str(p) for p in self.val[:spec.bench_images]]
        self.shapes = _aspect_shapes(self.val)  # the val images' aspect ratios (rect letterbox sizes)
        self.results: dict[str, VariantResult] = {}
        self.order: list[str] = []
        self.machine = machine_info()

    def release(self) -> None:
        """Let another run use the output folder (the lock also goes when this process ends, however it ends)."""
        self.lock.__exit__(None, None, None)

    # --- one variant ---------------------------------------------------------------------------------
    def _variant_file(self, name: str) -> Path:
        return self.out / "variants" / f"{name}.json"

    def _cached(self, v: Variant) -> VariantResult | None:
        """The variant's row from an earlier run, when it was measured with this same configuration. A file
        of another schema version is refused (:class:`YoloptError`); an unreadable one is measured again."""
        f = self._variant_file(v.name)
        if f.exists():
            try:
                d = json.loads(f.read_text())
            except ValueError:
                return None
            if isinstance(d, dict) and d.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
                VariantResult.load(f)  # raises the one-line error naming the file
            try:
                r = VariantResult.from_dict(d)
                old = Variant.from_dict(d["variant"], estimate_s=v.estimate_s)  # fields added later take defaults
                if r.status == "failed" and r.failure != "variant":
                    return None  # a full disk, a killed worker: try again (only the variant's own failures stay)
                if old == v and not ("calibration" in (r.build or {}) and  # INT8: as this run would build it
                                     stale_int8(r.build, v.runtime or self.spec.target, self.spec)):
                    r.variant = v
                    return r
            except (KeyError, TypeError, AttributeError):
                pass
        return None

    def run_variant(self, v: Variant, same_map_as: str | None = None) -> VariantResult:
        if v.name in self.results:
            return self.results[v.name]
        self.order.append(v.name)
        cached = self._cached(v)
        if cached is not None:
            _say(self.spec, f"[dim]reusing {v.name} (measured before)[/]")
            self.results[v.name] = cached
            return cached
        rec = self._record(v)
        need = costs.still_to_pay(v.estimate_s, built=self.builder.info(v.build) is not None)
        # the baseline is always measured; any other variant must leave time to confirm, profile and report
        left = self.budget.left - (0.0 if v.kind == "baseline" else costs.finish_s(self.spec.bench_seconds))
        if need > left:
            rec.reason = (f"time budget: needs about {need / 60:.1f} min, {max(0, left) / 60:.1f} min left after "
                          f"the time kept for confirming and reporting")
            _say(self.spec, f"[yellow]skip[/] {v.name}: {rec.reason}")
            self.results[v.name] = rec  # not cached: a rerun with more budget tries it
            return rec
        _say(self.spec, f"[bold]{v.name}[/]: {v.description} (about {need / 60:.1f} min; "
                        f"{self.budget.left / 60:.1f} min of budget left)")
        t0 = time.perf_counter()
        try:
            b = self.builder.get(v.build)
            rec.artifact = b.artifact
            rec.build_seconds = 0.0 if b.cached else b.seconds
            rec.artifact_seconds = b.seconds  # what building the artifact cost, whichever variant paid it
            rec.build = {"key": v.build, **(b.details or {})}
            src = self.results.get(same_map_as) if same_map_as else None
            if src is not None and src.done:
                rec.set_accuracy(src.accuracy(), map_from=same_map_as)  # same artifact, same letterbox: same boxes
            else:
                acc, matches = evaluate_variant(b.artifact, v, self.spec)
                rec.set_accuracy(acc)
                if matches is not None:
                    matches.save(self._matches_file(v.name))
            rec.set_bench(bench_variant(b.artifact, v, self.spec, self.bench_images))
            rec.params, rec.gflops = self._size_info(b.artifact, v)
            rec.status = "done"
        except YoloptError as e:
            rec.status, rec.reason = "failed", str(e).splitlines()[0]
            rec.failure = "environment" if is_transient(e) else "variant"
            if rec.failure == "environment":
                rec.reason += " (a cause outside the variant: tried again on the next run)"
            _say(self.spec, f"[red]failed[/] {v.name}: {rec.reason}")
        rec.seconds = time.perf_counter() - t0
        self._finish(rec)
        self.results[v.name] = rec
        rec.save(self._variant_file(v.name))  # done or failed
        self.budget.save()
        if rec.done:
            drop = "" if rec.drop is None else f" (drop {rec.drop * 100:+.2f} pt)"
            _say(self.spec, f"  {v.name}: {self.spec.metric} {rec.score(self.spec.metric):.4f}{drop}, "
                            f"{rec.fps:.1f} img/s end to end, p50 {rec.latency_ms['p50']:.1f} ms")
        return rec

    def _record(self, v: Variant, reason: str | None = None) -> VariantResult:
        """A variant's result row before it is measured (status ``skipped`` until it is)."""
        return VariantResult(name=v.name, kind=v.kind, description=v.description, variant=v,
                             runtime=v.runtime or self.spec.target,
                             imgsz=v.imgsz, letterbox=v.letterbox,
                             threads=max(1, self.spec.threads // v.streams),  # per pipeline: x streams = spec.threads
                             streams=v.streams, status="skipped", reason=reason)

    def _finish(self, rec: VariantResult) -> None:
        """Drop and speed-up against the baseline (once it is measured)."""
        base = self.results.get("fp32") if rec.name != "fp32" else rec
        if not rec.done or not base or not base.done:
            return
        metric = self.spec.metric
        rec.drop = base.score(metric) - rec.score(metric)
        rec.drop50 = base.map50 - rec.map50
        rec.drop50_95 = base.map50_95 - rec.map50_95
        rec.speedup = rec.fps / base.fps
        what = f"{metric}/{self.spec.bootstrap}"
        if rec.drop_se_of != what:
            se = self._drop_se(base, rec)
            rec.drop_se = None
            if se is not None:
                rec.drop_se, rec.drop_se_of = se, what

    def _matches_file(self, name: str) -> Path:
        return self.out / "variants" / f"{name}.matches.npz"

    def _drop_se(self, base: VariantResult, rec: VariantResult) -> float | None:
        """Standard error of ``rec``'s mAP drop: a paired bootstrap over the val images (the same resampled
        images score both models), so how much of the drop the choice of val images could explain.
        None when either model's per-image matches are missing (results cached by an older version)."""
        from ..evaluate.coco import ImageMatches, paired_bootstrap

        src_b, src_r = base.map_from or base.name, rec.map_from or rec.name
        if src_b == src_r:
            return 0.0  # the same detections
        fb, fr = self._matches_file(src_b), self._matches_file(src_r)
        if not (fb.exists() and fr.exists()):
            return None
        try:
            a, b = ImageMatches.load(fb), ImageMatches.load(fr)
            diffs = paired_bootstrap(a, b, self.spec.metric, n=self.spec.bootstrap, seed=0)
        except (ValueError, OSError, KeyError) as e:
            log.warning("no bootstrap of %s's mAP drop: %s", rec.name, e)
            return None
        return float(np.std(diffs, ddof=1))

    def _size_info(self, artifact: str, v: Variant) -> tuple[int, float]:
        """(parameters, GFLOPs at the variant's input; rect: scaled by the data's mean rect area)."""
        from ..compress.prune import model_flops
        from ..profile.runtime_layers import onnx_params

        params = None
        try:
            if artifact.endswith(".onnx"):
                params = onnx_params(Path(artifact))
        except Exception:  # noqa: BLE001 - informative only
            pass
        model = self.model
        if v.kind == "prune" or v.build.startswith("prune"):
            from ..models.checkpoint import load_model

            pruned = Path(artifact).parent / "pruned.safetensors"
            if pruned.exists():
                model = load_model(pruned)
        g = model_flops(model, v.imgsz)
        if v.letterbox == "rect":
            g *= _rect_gain(self.shapes, v.imgsz)
        return (model.num_params() if params is None else params), g

    # --- the search ------------------------------------------------------------------------------------
    def plan_and_run(self) -> None:
        spec = self.spec
        s0 = spec.imgsz[0]
        t = spec.threads
        tgt = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tensorrt": "TensorRT",
               "ncnn": "NCNN", "litert": "LiteRT"}[spec.target]
        n = len(self.val)
        c_bench = costs.bench_s(spec.bench_seconds)
        base_est = costs.baseline_s(n, s0, spec.bench_seconds)  # rough (val measured below)
        if self._cached(Variant("fp32", "baseline", "", build_key("fp32", s0), s0)) is None and \
                base_est > self.budget.left:
            raise OptimizeError(f"a time budget of {spec.time_budget_s:g}s is too small to measure the baseline: it "
                                f"needs about {base_est:.0f} s (export, val on {n} images, end-to-end benchmark)",
                                fields=("time_budget_s", "time_budget"))
        base = self.run_variant(Variant("fp32", "baseline", f"FP32 {tgt}, {s0} square letterbox, {t} thread(s)",
                                        build_key("fp32", s0), s0, estimate_s=base_est))
        if not base.done:
            raise OptimizeError(f"the baseline could not be measured: {base.reason}")
        c0 = costs.measure_s(base.seconds, base.build_seconds)  # val + bench of one variant, measured
        c_exp = costs.export_s(base.build_seconds)

        # 1) pipeline setting: two pipelines with half the threads each (decode of one overlaps inference of the other)
        if t >= 2:
            self.run_variant(Variant("fp32-2streams", "streams", f"FP32, {s0} square, 2 pipelines x {t // 2} thread(s)",
                                     build_key("fp32", s0), s0, streams=2, estimate_s=c_bench * 2), same_map_as="fp32")
        # 1b) pipeline setting: ONNX Runtime's idle threads sleep instead of spin-waiting, so the decode, letterbox
        #     and NMS between two calls get a core
        if t >= 2 and spec.target == "onnxruntime":
            self.run_variant(Variant("fp32-nospin", "threads", f"FP32, {s0} square, {t} threads that sleep when idle "
                                     "(no spin-wait)", build_key("fp32", s0), s0, spin=False, estimate_s=c_bench),
                             same_map_as="fp32")
        # 2) rect input for the data's aspect ratio
        gain = _rect_gain(self.shapes, s0)
        rect_ok = gain < 0.9 and spec.target not in ("ncnn", "litert")  # they export a fixed input size only
        if rect_ok:
            self.run_variant(Variant(f"rect{s0}", "rect", f"FP32, {s0} rect letterbox (dynamic input, {gain:.0%} of the "
                                     "square area on this data)", build_key("fp32", s0, True), s0, "rect",
                                     estimate_s=c0 + c_exp))
        # 3) smaller inputs
        for s in spec.imgsz[1:]:
            self.run_variant(Variant(f"fp32-{s}", "imgsz", f"FP32, {s} square letterbox", build_key("fp32", s), s,
                                     estimate_s=c0 * (s / s0) ** 2 + c_exp))
            if rect_ok:
                self.run_variant(Variant(f"rect{s}", "rect", f"FP32, {s} rect letterbox", build_key("fp32", s, True), s,
                                         "rect", estimate_s=c0 * (s / s0) ** 2 + c_exp))
        # 4) INT8 (the quantized graph is dynamic: square and rect variants share it); ncnn: fp16 weights instead
        if spec.target in ("ncnn", "litert"):
            self._edge_fp16(s0, c0, c_exp)
        elif spec.quantize:
            q_est = costs.ptq_s(c0, s0)
            for s in self._sizes_within_budget(spec.imgsz):
                int8 = self.run_variant(Variant(f"int8-{s}", "int8", f"INT8 PTQ ({spec.target}), {s} square"
                                                + (", uint8 input" if spec.target == "onnxruntime" else ""),
                                                build_key("int8", s, True), s, estimate_s=q_est * (s / s0) ** 2))
                if rect_ok and int8.done:
                    self.run_variant(Variant(f"int8-rect{s}", "int8", f"INT8 PTQ, {s} rect letterbox",
                                             build_key("int8", s, True), s, "rect", estimate_s=c0 * (s / s0) ** 2))
        # 4b) INT8 on OpenVINO too, when it is installed and the runtime is not pinned (--target not given): its
        #     INT8 (nncf) kept more accuracy than ONNX Runtime's on the COCO model at a similar speed-up
        if spec.quantize and spec.target == "onnxruntime" and not spec.pin_target and runtime_installed("openvino"):
            q_est = costs.ptq_s(c0, s0)
            for s in self._sizes_within_budget(spec.imgsz):
                self.run_variant(Variant(f"openvino-int8-{s}", "int8", f"INT8 PTQ (OpenVINO, nncf), {s} square",
                                         build_key("int8", s, runtime="openvino"), s, runtime="openvino",
                                         estimate_s=q_est * (s / s0) ** 2))
        # 5) the best so far, with two pipelines
        self._stack_streams(c_bench)
        # 6) mixed precision, where plain INT8 misses the budget
        if spec.quantize and spec.target == "onnxruntime":
            for s in self._sizes_within_budget(spec.imgsz):
                q = self.results.get(f"int8-{s}")
                if not q or not q.done or q.drop <= spec.max_map_drop:
                    continue
                f = (s / s0) ** 2
                mixed = self.run_variant(Variant(f"mixed-{s}", "mixed", f"INT8 with the most sensitive layers float "
                                                 f"(accuracy control at half the budget), {s} square",
                                                 build_key("mixed", s, True), s, estimate_s=costs.mixed_s(c0, s0) * f))
                if rect_ok and mixed.done:  # the rect variant shares the build: a failed one is not tried twice
                    self.run_variant(Variant(f"mixed-rect{s}", "mixed", f"mixed INT8, {s} rect letterbox",
                                             build_key("mixed", s, True), s, "rect", estimate_s=c0 * f))
        # 6b) QAT, where plain INT8 misses the budget (needs training time, like pruning)
        if spec.quantize and spec.target == "onnxruntime" and spec.qat_epochs:
            self._qat(s0, c0, rect_ok)
        # 7) pruning + distilled fine-tuning (needs training time, and train images that are not the val images)
        if spec.prune:
            self._prune(s0, c0)
        self._stack_streams(c_bench)

    def _sizes_within_budget(self, sizes: list[int]) -> list[int]:
        """Sizes whose FP32 variant stayed within the mAP budget (INT8 only loses more)."""
        out = []
        for s in sizes:
            rs = [self.results.get("fp32" if s == sizes[0] else f"fp32-{s}"), self.results.get(f"rect{s}")]
            if any(r and r.done and (r.drop or 0) <= self.spec.max_map_drop for r in rs):
                out.append(s)
        return out or sizes[:1]

    def _stack_streams(self, c_bench: float) -> None:
        """The pipeline settings that helped the baseline (two pipelines, no spin-wait), on the fastest model
        variant within budget."""
        ok = [r for r in self.results.values() if r.done and r.streams == 1 and r.spin and
              r.kind not in ("baseline", "streams", "threads", "combined") and
              not violations(r, self.spec, self.spec.max_map_drop)]
        if self.spec.threads < 2 or not ok:
            return
        best = max(ok, key=lambda r: r.fps)
        settings = (("fp32-2streams", "-2streams", {"streams": 2}, f", 2 pipelines x {self.spec.threads // 2} thread(s)"),
                    ("fp32-nospin", "-nospin", {"spin": False}, ", threads sleep when idle"))
        for ref, suffix, change, words in settings:
            st = self.results.get(ref)
            if not st or not st.done or (st.speedup or 0) < 1.03:
                continue
            if "spin" in change and (best.variant.runtime or self.spec.target) != "onnxruntime":
                continue  # spin-waiting is ONNX Runtime's setting
            v = Variant.from_dict(best.variant.to_dict(), **change, name=best.name + suffix, kind="combined",
                                  description=best.description + words, estimate_s=c_bench * 2)
            self.run_variant(v, same_map_as=best.name)

    @functools.cached_property
    def _train_split(self) -> tuple[float, int]:
        """(fraction of val images that are train images, train image count), listed once per run."""
        train = image_files(self.cfg, "train") if "train" in self.cfg.splits else []
        return _overlap(train, image_files(self.cfg, "val")), len(train)

    def _train_overlap_reason(self, what: str) -> tuple[str | None, int]:
        """Why a fine-tuned candidate is skipped (its val images are its train images), and the train image count."""
        overlap, n_train = self._train_split
        if overlap > 0.5:
            return (f"{overlap:.0%} of the val images are train images: {what} would be graded on its own training "
                    "set (give a data yaml whose val split is held out)"), n_train
        return None, n_train

    def _edge_fp16(self, s0: int, c0: float, c_exp: float) -> None:
        """NCNN and LiteRT: fp16 weights (half the file, widened to fp32 at load) at the sizes within the mAP
        budget. LiteRT: full-integer INT8 (head float) at those sizes too, exported with its calibration; NCNN:
        no INT8 (its wheels have no INT8 tools), recorded as a skipped row with that reason."""
        spec = self.spec
        rt = {"ncnn": "NCNN", "litert": "LiteRT"}[spec.target]
        sizes = self._sizes_within_budget(spec.imgsz)
        for s in sizes:
            self.run_variant(Variant(f"fp16-{s}", "fp16", f"FP16 weights ({rt}, computed in FP32), {s} square",
                                     build_key("fp16", s), s, estimate_s=c0 * (s / s0) ** 2 + c_exp))
        if spec.quantize and spec.target == "litert":
            for s in sizes:
                self.run_variant(Variant(f"int8-{s}", "int8", f"INT8 (LiteRT full integer, head float), {s} square",
                                         build_key("int8", s), s, estimate_s=costs.ptq_s(c0, s0) * (s / s0) ** 2))
        elif spec.quantize:
            from ..export.edge import NCNN_INT8

            v = Variant(f"int8-{s0}", "int8", f"INT8, {s0} square", build_key("int8", s0, True), s0)
            self.order.append(v.name)
            self.results[v.name] = self._record(v, f"not available on ncnn: {NCNN_INT8}")

    def _qat(self, s0: int, c0: float, rect_ok: bool) -> None:
        spec = self.spec
        for s in self._sizes_within_budget(spec.imgsz):
            q = self.results.get(f"int8-{s}")
            if not q or not q.done or q.drop <= spec.max_map_drop:
                continue
            f = (s / s0) ** 2
            v = Variant(f"qat-{s}", "qat", f"INT8 after {spec.qat_epochs} epochs of QAT (float model as teacher), "
                        f"{s} square", build_key(f"qat{spec.qat_epochs}", s, True), s)
            reason, n_train = self._train_overlap_reason("QAT")
            if reason:
                self.order.append(v.name)
                self.results[v.name] = self._record(v, reason)
                return
            v.estimate_s = costs.qat_s(spec.qat_epochs, n_train, c0, f)
            done = self.run_variant(v)
            if rect_ok and done.done:
                self.run_variant(Variant(f"qat-rect{s}", "qat", f"QAT INT8, {s} rect letterbox", v.build, s, "rect",
                                         estimate_s=c0 * f))

    def _prune(self, s0: int, c0: float) -> None:
        spec = self.spec
        v = Variant(f"pruned75-{s0}", "prune", "channels pruned to 75% of the FLOPs, distilled fine-tune, FP32, "
                    f"{s0} square", build_key("prune0.75", s0), s0)
        reason, n_train = self._train_overlap_reason("a fine-tune")
        if reason:
            self.order.append(v.name)
            self.results[v.name] = self._record(v, reason)
            return
        v.estimate_s = costs.prune_s(spec.finetune_epochs or costs.PRUNE_DEFAULT_EPOCHS, n_train, c0, s0)
        self.run_variant(v)

    # --- selection, confirmation, outputs ------------------------------------------------------------
    def best_pipeline(self, name: str) -> str | None:
        """The fastest FP32 pipeline setting (the unchanged model with 2 pipelines or without spin-wait) that beat
        the baseline, unless ``name`` is one: the second reference the recommendation is confirmed against."""
        base = self.results.get("fp32")
        pipe = [r for r in self.results.values() if r.done and r.kind in ("streams", "threads") and base and
                base.done and r.fps > base.fps and r.name != name]
        return max(pipe, key=lambda r: r.fps).name if pipe else None

    def confirm(self, name: str, rounds: int = 5, pipeline: str | None = None) -> Confirm:
        """Baseline, ``name`` (and the ``pipeline`` setting) timed again end to end, interleaved; medians and the
        recommendation's ratios to the baseline (at the runtime's defaults) and to the pipeline setting."""
        order = ["fp32", *([pipeline] if pipeline else []), name]
        fps: dict[str, list[float]] = {n: [] for n in order}
        for k in range(rounds):
            for n in (order if k % 2 == 0 else order[::-1]):
                r = self.results[n]
                fps[n].append(bench_variant(r.artifact, r.variant, self.spec, self.bench_images).fps)
        med = {k: float(np.median(v)) for k, v in fps.items()}
        return Confirm(variant=name, rounds=rounds, fps=fps, median_fps=med, speedup=med[name] / med["fp32"],
                       pipeline=pipeline, speedup_vs_pipeline=med[name] / med[pipeline] if pipeline else None)

    def summarize(self) -> OptimizeResults:
        """The run so far as :class:`OptimizeResults` (drops, budget checks, recommendation per scenario)."""
        spec = self.spec
        rows = [self.results[n] for n in self.order]
        for r in rows:
            self._finish(r)
            if r.done:
                r.misses = violations(r, spec, spec.max_map_drop) or None
                r.meets = not r.misses
        rec = choose(rows, spec, spec.scenario)
        per = {}
        for sc in ("realtime", "accuracy", "edge"):
            c = choose(rows, spec, sc)
            per[sc] = ScenarioPick(c.variant, describe(c, rows, spec) if (c.variant or c.closest) else c.why)
        return OptimizeResults(
            model=str(spec.model), data=str(spec.data), scenario=spec.scenario, target=spec.target,
            runtime_choice=self.runtime_choice.to_dict() if self.runtime_choice else None,
            threads=spec.threads, conf=spec.conf, metric=spec.metric,
            budget=Budget(time_budget_s=spec.time_budget_s, max_map_drop=spec.max_map_drop,
                          max_latency_ms=spec.max_latency_ms, max_size_mb=spec.max_size_mb,
                          max_memory_mb=spec.max_memory_mb,
                          map_noise=spec.map_noise),
            machine=self.machine, baseline="fp32", variants=rows,
            recommendation=Recommendation(scenario=spec.scenario, variant=rec.variant, met=rec.met, closest=rec.closest,
                                          why=rec.why, summary=describe(rec, rows, spec),
                                          next=next_steps(rec, rows, spec, self.machine)),
            per_scenario=per, time_spent_s=self.budget.spent, deploy=None)

    def layer_profile(self, name: str) -> StageProfile | None:
        """Per-stage and top per-layer times of a variant's artifact (the runtime's own profiler)."""
        r = self.results.get(name)
        if not r or not r.done:
            return None
        out = StageProfile(variant=name, stages_ms=r.stages_ms, layers=[])
        try:
            from ..profile.runtime_layers import profile_onnxruntime, profile_openvino
            from ..runtime import open as open_backend

            art = Path(r.artifact)
            if art.suffix == ".param":
                out.error = "no per-layer profile: ncnn's Python binding has no per-layer timing"
                return out
            if art.suffix == ".tflite":
                out.error = "no per-layer profile: ai-edge-litert's Python interpreter has no per-op timing"
                return out
            b = open_backend(str(art), threads=self.spec.threads)
            h = w = r.imgsz
            if r.letterbox == "rect" and self.shapes:
                from ..data.preprocess import rect_shape

                h, w = rect_shape(self.shapes[:1], r.imgsz, 32)
            x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
            if b.uint8_input:
                x = (x * 255).astype(np.uint8)
            prof = (profile_onnxruntime if art.suffix == ".onnx" else profile_openvino)(art, x, max(1, self.spec.threads),
                                                                                         repeats=10)
            layers = sorted(prof["layers"], key=lambda d: -d["latency_ms"])[:10]
            for d in layers:
                out.layers.append({"name": d["name"], "type": self._layer_type(d["name"]), "ms": d["latency_ms"],
                                   "share": d["share"]})
            out.model_ms = prof["latency_ms"]
        except Exception as e:  # noqa: BLE001 - the profile is extra information; say why it is missing
            out.error = str(e).splitlines()[0] if str(e) else type(e).__name__
        return out

    def _layer_type(self, name: str) -> str:
        digits = "".join(c if c.isdigit() else " " for c in name).split()
        if digits and int(digits[0]) < len(self.model.model):
            return type(self.model.model[int(digits[0])]).__name__
        return ""


def optimize(spec: OptimizeSpec) -> OptimizeResults:
    """Run the search (see the module doc); returns the results also written to ``OUT/results.json``."""
    opt = Optimizer(spec)
    try:
        return _optimize(opt)
    finally:
        opt.release()


def _optimize(opt: Optimizer) -> OptimizeResults:
    spec = opt.spec
    opt.plan_and_run()
    res = opt.summarize()
    name = res.recommendation.variant
    pipeline = opt.best_pipeline(name) if name else None
    rounds = costs.confirm_rounds(opt.budget.left, spec.bench_seconds, per_round=3 if pipeline else 2)
    if name and name != "fp32" and rounds:
        _say(spec, f"confirming {name} against the baseline" + (f" and {pipeline}" if pipeline else "")
             + f" ({rounds} interleaved end-to-end rounds)")
        res.confirm = opt.confirm(name, rounds, pipeline)
    elif name and name != "fp32":
        _say(spec, "[yellow]not confirmed[/]: the time budget has no room left for a confirmation round")
    res.profile = {"before": opt.layer_profile("fp32"), "after": opt.layer_profile(name) if name else None}
    if name:
        from .deploy import BundleSpec, write_bundle

        r = opt.results[name]
        summary = {k: getattr(r, k) for k in ("name", "description", "map50_95", "map50", "drop", "fps", "speedup",
                                               "latency_ms", "size_mb", "threads", "streams")}
        if res.confirm is not None:
            summary["speedup_confirmed"] = res.confirm.speedup
            # the bundle's throughput: the median of the interleaved rounds, not the one first-pass window (which
            # a shared machine moves by 15-25%); the first pass stays beside it
            summary["fps_first_pass"], summary["fps"] = r.fps, res.confirm.median_fps[name]
            summary["fps_rounds"] = res.confirm.rounds
        summary["cpu"] = (r.machine or {}).get("cpu")
        bundle = BundleSpec(letterbox=r.letterbox, conf=spec.conf, iou=spec.iou, report=summary, threads=r.threads,
                            spin=r.spin, workers=r.streams or 1)
        try:
            res.deploy = str(write_bundle(r.artifact, opt.out / "deploy", bundle))
        except YoloptError as e:
            res.deploy_error = str(e).splitlines()[0]
    res.time_spent_s = opt.budget.spent
    opt.budget.save()
    from .report import write_report

    res.files = {k: str(v) for k, v in write_report(res, opt.out).items()}
    return res
