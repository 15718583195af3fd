"""Which measured variant to recommend, per scenario, and the cost-benefit sentence that goes with it."""

from __future__ import annotations

from dataclasses import dataclass

from .records import VariantResult
from .spec import DEFAULT_DROP, OptimizeSpec


@dataclass
class Choice:
    """What :func:`choose` picked for one scenario: ``variant`` (None: none meets the budget), else the
    ``closest`` one and ``why`` it misses."""

    variant: str | None
    met: bool
    closest: str | None = None
    why: str = ""
    budget: float | None = None  # the mAP-drop budget it was held to
    baseline: str | None = None


def _ok(r: VariantResult) -> bool:
    return r.done and r.fps is not None and r.drop is not None


def drop_bound(r: VariantResult, spec: OptimizeSpec) -> float:
    """The drop a variant is held to: the measured drop plus ``spec.map_noise`` standard errors (paired
    bootstrap over the val images), so a drop just under the budget on a small val set does not pass as
    safe. Rows without a standard error (older caches) count with their measured drop."""
    return r.drop + spec.map_noise * (r.drop_se or 0.0)


def violations(r: VariantResult, spec: OptimizeSpec, drop_budget: float) -> list[str]:
    """What keeps variant ``r`` from meeting the budget (empty: it meets it)."""
    out = []
    bound = drop_bound(r, spec)
    if bound > drop_budget + 1e-9:
        noise = (f" + {spec.map_noise:g} x {r.drop_se * 100:.2f} standard error" if r.drop_se and spec.map_noise
                 else "")
        out.append(f"mAP drop {r.drop * 100:.2f}{noise} > {drop_budget * 100:.2f} points")
    if spec.max_latency_ms is not None and r.latency_ms["p50"] > spec.max_latency_ms:
        out.append(f"latency {r.latency_ms['p50']:.1f} > {spec.max_latency_ms:g} ms")
    if spec.max_size_mb is not None and (r.size_mb or 0) > spec.max_size_mb:
        out.append(f"size {r.size_mb:.1f} > {spec.max_size_mb:g} MB")
    return out


def _shortfall(r: VariantResult, spec: OptimizeSpec, drop_budget: float) -> float:
    """How far a variant is from the budget, relative to each limit (0 = meets it)."""
    s = max(0.0, drop_bound(r, spec) - drop_budget) / max(drop_budget, 1e-3)
    if spec.max_latency_ms is not None:
        s += max(0.0, r.latency_ms["p50"] / spec.max_latency_ms - 1)
    if spec.max_size_mb is not None:
        s += max(0.0, (r.size_mb or 0) / spec.max_size_mb - 1)
    return s


def choose(results: list[VariantResult], spec: OptimizeSpec, scenario: str) -> Choice:
    """The :class:`Choice` for one scenario.

    realtime: the highest end-to-end FPS within the mAP budget. accuracy: the smallest drop among the
    variants faster than the baseline (ties: the faster). edge: the smallest artifact (then the least
    memory) that meets the latency budget, among 1-thread variants.
    """
    budget = spec.max_map_drop if scenario == spec.scenario else DEFAULT_DROP[scenario]
    done = [r for r in results if _ok(r)]
    if scenario == "edge":
        done = [r for r in done if (r.threads or 1) * (r.streams or 1) == 1]
        if not done:
            return Choice(None, False, why="no 1-thread variants in this run (rerun with --scenario edge)")
    base = next((r for r in done if r.kind == "baseline"), None)
    meets = [r for r in done if not violations(r, spec, budget)]
    if scenario == "accuracy":
        meets = [r for r in meets if r.kind == "baseline" or (r.speedup or 0) > 1.02]
        key = lambda r: (r.kind != "baseline" and 1 or 0, -round(drop_bound(r, spec), 4), r.fps)  # noqa: E731
    elif scenario == "edge":
        key = lambda r: (-(r.size_mb or 0), -(r.peak_mem_mb or 0), r.fps)  # noqa: E731
    else:
        key = lambda r: r.fps  # noqa: E731
    if meets:
        best = max(meets, key=key)
        return Choice(best.name, True, budget=budget)
    closest = min(done, key=lambda r: (_shortfall(r, spec, budget), -r.fps)) if done else None
    return Choice(None, False, closest=closest.name if closest else None, budget=budget,
                  why="; ".join(violations(closest, spec, budget)) if closest else "no variant was measured",
                  baseline=base.name if base else None)


def describe(rec: Choice, results: list[VariantResult], spec: OptimizeSpec) -> str:
    """The cost-benefit of a recommendation in words."""
    by = {r.name: r for r in results}
    base = next(r for r in results if r.kind == "baseline")
    name = rec.variant or rec.closest
    if name is None:
        return rec.why or "nothing to recommend"
    r = by[name]
    metric = "mAP50-95" if spec.metric == "map50_95" else "mAP50"
    gain = r.fps / base.fps if base.fps else None
    parts = []
    if rec.variant:
        parts.append(f"Deploy {name}: {r.description}.")
    else:
        parts.append(f"No variant meets the budget ({rec.why}); the closest is {name}: {r.description}.")
    if gain:
        parts.append(f"End to end it runs at {r.fps:.1f} images/s against {base.fps:.1f} for the FP32 "
                     f"baseline ({gain:.2f}x), {r.latency_ms['p50']:.1f} ms per image at p50.")
    pipe = [x for x in results if _ok(x) and x.kind in ("streams", "threads")]
    if gain and pipe and r.kind not in ("baseline", "streams", "threads"):
        p = max(pipe, key=lambda x: x.fps)
        parts.append(f"Part of that is the pipeline setting alone: the unchanged FP32 model reaches {p.fps:.1f} "
                     f"images/s as {p.name} ({p.fps / base.fps:.2f}x); the variant is {r.fps / p.fps:.2f}x "
                     f"that.")
    se = f", ±{r.drop_se * 100:.2f} standard error by bootstrap" if r.drop_se else ""
    change = (f"It costs {r.drop * 100:.2f} {metric} points" if r.drop > 0 else
              f"It gains {-r.drop * 100:.2f} {metric} points" if r.drop < 0 else f"It keeps the {metric}")
    parts.append(f"{change} ({r.score(spec.metric):.4f} vs "
                 f"{base.score(spec.metric):.4f} on {'?' if r.val_images is None else r.val_images} val images{se}).")
    if r.size_mb and base.size_mb:
        parts.append(f"The artifact is {r.size_mb:.1f} MB (baseline {base.size_mb:.1f} MB); the runtime held "
                     f"{r.peak_mem_mb or 0:.0f} MB at peak (baseline {base.peak_mem_mb or 0:.0f} MB).")
    if r.seconds is not None:
        build = r.artifact_seconds or 0.0
        parts.append(f"Building its artifact took {build / 60:.1f} min of compute and measuring it "
                     f"{(r.seconds - (r.build_seconds or 0.0)) / 60:.1f} min.")
    st = r.stages_ms or {}
    if st:
        top = max(st, key=st.get)
        parts.append(f"The pipeline's largest stage is now {top} ({st[top]:.1f} of {sum(st.values()):.1f} ms).")
    return " ".join(parts)


def next_steps(rec: Choice, results: list[VariantResult], spec: OptimizeSpec, machine: dict) -> list[str]:
    """What to try next, from what this run saw."""
    out = []
    by = {r.name: r for r in results}
    name = rec.variant or rec.closest
    r = by.get(name) if name else None
    st = (r.stages_ms if r is not None else None) or {}
    total = sum(st.values()) or 1.0
    if st and st.get("decode", 0) / total > 0.25:
        out.append("JPEG decoding is a large share: decode at reduced size (cv2.IMREAD_REDUCED_COLOR_2) when the "
                   "images are much larger than the input, or decode on another core/process.")
    if st and st.get("inference", 0) / total > 0.6:
        out.append("Inference still dominates: a pruned and distilled model (yolopt prune --distill) with more "
                   "fine-tuning epochs, or a smaller input size if the objects allow it.")
    skipped = [x for x in results if x.status == "skipped" and not (x.runtime == "ncnn" and x.kind == "int8")]
    if skipped:
        out.append("Skipped for lack of time or data: " + ", ".join(x.name for x in skipped) +
                   " (a larger --time-budget, or --resume later, runs them).")
    if not machine.get("vnni") and spec.target != "ncnn":  # no INT8 on ncnn
        out.append("This CPU has no VNNI: INT8 gains little here; on a CPU with VNNI (or on a GPU with TensorRT) "
                   "re-run optimize, the INT8 variants will likely rank higher.")
    failed = [x for x in results if x.status == "failed"]
    if failed:
        out.append("Failed: " + "; ".join(f"{x.name} ({x.reason})" for x in failed))
    return out
