"""Which measured variant to recommend, per scenario, and the cost-benefit sentence that goes with it."""

from __future__ import annotations

from .spec import DEFAULT_DROP, OptimizeSpec


def _ok(r: dict) -> bool:
    return r.get("status") == "done" and r.get("fps") is not None and r.get("drop") is not None


def drop_bound(r: dict, spec: OptimizeSpec) -> float:
    """The drop a variant is held to: the measured drop plus ``spec.map_noise`` standard errors (paired
    bootstrap over the val images), so a drop just under the budget on a small val set does not pass as
    safe. Rows without a standard error (older caches) count with their measured drop."""
    return r["drop"] + spec.map_noise * (r.get("drop_se") or 0.0)


def violations(r: dict, spec: OptimizeSpec, drop_budget: float) -> list[str]:
    """What keeps variant ``r`` from meeting the budget (empty: it meets it)."""
    out = []
    bound = drop_bound(r, spec)
    if bound > drop_budget + 1e-9:
        noise = (f" + {spec.map_noise:g} x {r['drop_se'] * 100:.2f} standard error" if r.get("drop_se") and spec.map_noise
                 else "")
        out.append(f"mAP drop {r['drop'] * 100:.2f}{noise} > {drop_budget * 100:.2f} points")
    if spec.max_latency_ms is not None and r["latency_ms"]["p50"] > spec.max_latency_ms:
        out.append(f"latency {r['latency_ms']['p50']:.1f} > {spec.max_latency_ms:g} ms")
    if spec.max_size_mb is not None and (r.get("size_mb") or 0) > spec.max_size_mb:
        out.append(f"size {r['size_mb']:.1f} > {spec.max_size_mb:g} MB")
    return out


def _shortfall(r: dict, spec: OptimizeSpec, drop_budget: float) -> float:
    """How far a variant is from the budget, relative to each limit (0 = meets it)."""
    s = max(0.0, drop_bound(r, spec) - drop_budget) / max(drop_budget, 1e-3)
    if spec.max_latency_ms is not None:
        s += max(0.0, r["latency_ms"]["p50"] / spec.max_latency_ms - 1)
    if spec.max_size_mb is not None:
        s += max(0.0, (r.get("size_mb") or 0) / spec.max_size_mb - 1)
    return s


def choose(results: list[dict], spec: OptimizeSpec, scenario: str) -> dict:
    """``{"variant", "met", "closest", "why"}`` for one scenario.

    realtime: the highest end-to-end FPS within the mAP budget. accuracy: the smallest drop among the
    variants faster than the baseline (ties: the faster). edge: the smallest artifact (then the least
    memory) that meets the latency budget, among 1-thread variants.
    """
    budget = spec.max_map_drop if scenario == spec.scenario else DEFAULT_DROP[scenario]
    done = [r for r in results if _ok(r)]
    if scenario == "edge":
        done = [r for r in done if r["threads"] * r.get("streams", 1) == 1]
        if not done:
            return {"variant": None, "met": False, "closest": None,
                    "why": "no 1-thread variants in this run (rerun with --scenario edge)"}
    base = next((r for r in done if r["kind"] == "baseline"), None)
    meets = [r for r in done if not violations(r, spec, budget)]
    if scenario == "accuracy":
        meets = [r for r in meets if r["kind"] == "baseline" or (r.get("speedup") or 0) > 1.02]
        key = lambda r: (r["kind"] != "baseline" and 1 or 0, -round(drop_bound(r, spec), 4), r["fps"])  # noqa: E731
    elif scenario == "edge":
        key = lambda r: (-(r.get("size_mb") or 0), -(r.get("peak_mem_mb") or 0), r["fps"])  # noqa: E731
    else:
        key = lambda r: r["fps"]  # noqa: E731
    if meets:
        best = max(meets, key=key)
        return {"variant": best["name"], "met": True, "closest": None, "budget": budget, "why": ""}
    closest = min(done, key=lambda r: (_shortfall(r, spec, budget), -r["fps"])) if done else None
    return {"variant": None, "met": False, "closest": closest["name"] if closest else None, "budget": budget,
            "why": "; ".join(violations(closest, spec, budget)) if closest else "no variant was measured",
            "baseline": base["name"] if base else None}


def describe(rec: dict, results: list[dict], spec: OptimizeSpec) -> str:
    """The cost-benefit of a recommendation in words."""
    by = {r["name"]: r for r in results}
    base = next(r for r in results if r["kind"] == "baseline")
    name = rec.get("variant") or rec.get("closest")
    if name is None:
        return rec.get("why") or "nothing to recommend"
    r = by[name]
    metric = "mAP50-95" if spec.metric == "map50_95" else "mAP50"
    gain = r["fps"] / base["fps"] if base.get("fps") else None
    parts = []
    if rec.get("variant"):
        parts.append(f"Deploy {name}: {r['description']}.")
    else:
        parts.append(f"No variant meets the budget ({rec.get('why')}); the closest is {name}: {r['description']}.")
    if gain:
        parts.append(f"End to end it runs at {r['fps']:.1f} images/s against {base['fps']:.1f} for the FP32 "
                     f"baseline ({gain:.2f}x), {r['latency_ms']['p50']:.1f} ms per image at p50.")
    pipe = [x for x in results if _ok(x) and x["kind"] in ("streams", "threads")]
    if gain and pipe and r["kind"] not in ("baseline", "streams", "threads"):
        p = max(pipe, key=lambda x: x["fps"])
        parts.append(f"Part of that is the pipeline setting alone: the unchanged FP32 model reaches {p['fps']:.1f} "
                     f"images/s as {p['name']} ({p['fps'] / base['fps']:.2f}x); the variant is {r['fps'] / p['fps']:.2f}x "
                     f"that.")
    se = f", ±{r['drop_se'] * 100:.2f} standard error by bootstrap" if r.get("drop_se") else ""
    parts.append(f"It costs {r['drop'] * 100:+.2f} {metric} points ({r[spec.metric]:.4f} vs {base[spec.metric]:.4f}"
                 f" on {r.get('val_images', '?')} val images{se}).")
    if r.get("size_mb") and base.get("size_mb"):
        parts.append(f"The artifact is {r['size_mb']:.1f} MB (baseline {base['size_mb']:.1f} MB); the runtime held "
                     f"{r.get('peak_mem_mb') or 0:.0f} MB at peak (baseline {base.get('peak_mem_mb') or 0:.0f} MB).")
    if r.get("seconds") is not None:
        build = r.get("artifact_seconds") or 0.0
        parts.append(f"Building its artifact took {build / 60:.1f} min of compute and measuring it "
                     f"{(r['seconds'] - (r.get('build_seconds') or 0.0)) / 60:.1f} min.")
    st = r.get("stages_ms") or {}
    if st:
        top = max(st, key=st.get)
        parts.append(f"The pipeline's largest stage is now {top} ({st[top]:.1f} of {sum(st.values()):.1f} ms).")
    return " ".join(parts)


def next_steps(rec: dict, results: list[dict], spec: OptimizeSpec, machine: dict) -> list[str]:
    """What to try next, from what this run saw."""
    out = []
    by = {r["name"]: r for r in results}
    name = rec.get("variant") or rec.get("closest")
    r = by.get(name) if name else None
    st = (r or {}).get("stages_ms") or {}
    total = sum(st.values()) or 1.0
    if st and st.get("decode", 0) / total > 0.25:
        out.append("JPEG decoding is a large share: decode at reduced size (cv2.IMREAD_REDUCED_COLOR_2) when the "
                   "images are much larger than the input, or decode on another core/process.")
    if st and st.get("inference", 0) / total > 0.6:
        out.append("Inference still dominates: a pruned and distilled model (yolopt prune --distill) with more "
                   "fine-tuning epochs, or a smaller input size if the objects allow it.")
    skipped = [x for x in results if x.get("status") == "skipped"]
    if skipped:
        out.append("Skipped for lack of time or data: " + ", ".join(x["name"] for x in skipped) +
                   " (a larger --time-budget, or --resume later, runs them).")
    if not machine.get("vnni"):
        out.append("This CPU has no VNNI: INT8 gains little here; on a CPU with VNNI (or on a GPU with TensorRT) "
                   "re-run optimize, the INT8 variants will likely rank higher.")
    failed = [x for x in results if x.get("status") == "failed"]
    if failed:
        out.append("Failed: " + "; ".join(f"{x['name']} ({x.get('reason')})" for x in failed))
    return out
