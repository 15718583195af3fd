"""The report of ``yolopt optimize``: ``results.json``, ``pareto.png``, ``report.md`` and ``report.html``.

:func:`write_report` takes the results of one optimize run (:class:`~yolopt.pipeline.records.OptimizeResults`,
or a dict of its JSON) and writes, atomically, the JSON (a dict: as given), the Pareto plot (FPS vs mAP50-95,
point size = MB),
the per-stage bottleneck chart, and the same report twice: markdown (links the PNGs) and one self-contained
HTML page (inline CSS, PNGs as base64 data URIs, no script, nothing fetched). Every optional field may be
``None`` or missing (a failed or skipped variant): it is shown as "—".
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from ..bench import STAGES
from ..fileio import atomic_write, write_json
from .records import Budget, OptimizeResults, Recommendation, StageProfile, VariantResult

DASH = "—"
STAGE_COLORS = {"decode": "#8c9bb0", "preprocess": "#f2b134", "inference": "#2f7ebc", "nms": "#6bb26b",
                "postprocess": "#b07aa1"}
# Pareto markers: one colour found nowhere else in the page (the browser test looks for it)
POINT_COLOR = "#e6007e"
REC_COLOR = "#0a8f3c"
VNNI_NOTE = ("INT8 speed-ups depend on VNNI (avx512_vnni / avx_vnni / amx_int8): a recommendation made on a "
             "VNNI CPU may not hold on a CPU without VNNI, and the reverse; re-run `yolopt optimize` on the "
             "deployment CPU.")
SHOWN_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve")


# ---------------------------------------------------------------------------------------------- formatting

def _num(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _f(v, spec: str = ".4f", suffix: str = "") -> str:
    x = _num(v)
    return DASH if x is None else format(x, spec) + suffix


def _s(v) -> str:
    return DASH if v is None or v == "" else str(v)


def _params(v) -> str:
    x = _num(v)
    if x is None:
        return DASH
    return f"{x / 1e6:.2f} M" if x >= 1e5 else f"{int(x):,d}"


def _dur(v) -> str:
    x = _num(v)
    if x is None:
        return DASH
    if x < 120:
        return f"{x:.0f} s"
    if x < 7200:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.1f} h"


def _lat(v: VariantResult, key: str) -> str:
    lat = v.latency_ms if isinstance(v.latency_ms, dict) else {}
    return _f(lat.get(key), ".2f")


def _row(v: VariantResult) -> dict[str, str]:
    """One variant as display strings (same cells in md and html)."""
    rt = " / ".join(x for x in (v.runtime, v.precision) if x) or DASH
    size = " / ".join(x for x in (str(v.imgsz) if v.imgsz else "", v.letterbox or "") if x) or DASH
    ts = f"{_s(v.threads)}×{_s(v.streams)}" if v.threads or v.streams else DASH
    meets = v.meets
    return {"name": _s(v.name), "status": _s(v.status), "meets": DASH if meets is None else
            ("yes" if meets else "no"), "runtime": rt, "imgsz": size, "ts": ts, "params": _params(v.params),
            "gflops": _f(v.gflops, ".2f"), "size": _f(v.size_mb, ".2f"),
            "p50": _lat(v, "p50"), "p99": _lat(v, "p99"), "fps": _f(v.fps, ".1f"),
            "speedup": _f(v.speedup, ".2f", "×"), "map": _f(v.map50_95), "map50": _f(v.map50),
            "drop": _f(v.drop, "+.4f") + (f" ± {v.drop_se:.4f}" if _num(v.drop_se) else ""),
            "seconds": _dur(v.seconds),
            "reason": _s(v.reason) if v.status in ("failed", "skipped") or v.reason else
            "misses: " + "; ".join(v.misses) if v.meets is False and v.misses else ""}


COLUMNS = (("name", "variant"), ("status", "status"), ("meets", "meets budget"), ("runtime", "runtime / precision"),
           ("imgsz", "imgsz / letterbox"), ("ts", "threads × streams"), ("params", "params"), ("gflops", "GFLOPs"),
           ("size", "size MB"), ("p50", "p50 ms"), ("p99", "p99 ms"), ("fps", "FPS"), ("speedup", "speed-up"),
           ("map", "mAP50-95"), ("map50", "mAP50"), ("drop", "drop ± SE"), ("seconds", "time spent"),
           ("reason", "reason"))


# ---------------------------------------------------------------------------------------------- content

def _variants(results: OptimizeResults) -> list[VariantResult]:
    return list(results.variants)


def _by_name(results: OptimizeResults, name) -> VariantResult | None:
    return results.variant(name)


def _budget(results: OptimizeResults) -> Budget:
    return results.budget or Budget()


def _budget_text(results: OptimizeResults) -> str:
    b = _budget(results)
    parts = [f"time {_dur(b.time_budget_s)}"]
    if _num(b.max_map_drop) is not None:
        parts.append(f"mAP50-95 drop ≤ {b.max_map_drop:.4f}")
    if _num(b.max_latency_ms) is not None:
        parts.append(f"p50 latency ≤ {b.max_latency_ms:g} ms")
    if _num(b.max_size_mb) is not None:
        parts.append(f"size ≤ {b.max_size_mb:g} MB")
    if _num(getattr(b, "max_memory_mb", None)) is not None:
        parts.append(f"peak memory ≤ {b.max_memory_mb:g} MB")
    return ", ".join(parts)


def _time_text(results: OptimizeResults) -> str:
    spent, budget = _num(results.time_spent_s), _num(_budget(results).time_budget_s)
    text = f"{_dur(spent)} of {_dur(budget)}"
    if spent is not None and budget:
        text += f" ({100 * spent / budget:.0f} % of the time budget)"
    return text


def _noise(budget: Budget) -> float:
    """The noise rule's number of standard errors (0: the measured drop alone)."""
    return _num(budget.map_noise) or 0.0


def noise_rule(results: OptimizeResults) -> str | None:
    """The rule that decides whether a drop is within the budget or may be noise, in words (None: no mAP budget)."""
    budget = _budget(results)
    lim, k = _num(budget.max_map_drop), _noise(budget)
    if lim is None or _num(budget.map_noise) is None:  # results written before the rule was recorded
        return None
    if not k:
        return f"A variant meets the mAP budget when its measured drop is at most {lim:.4f}."
    return (f"Noise rule: a variant meets the mAP budget when its drop + {k:g} × its standard error (paired "
            f"bootstrap over the val images) is at most {lim:.4f}, so one above the max-drop line can still miss "
            f"it when the val set cannot tell its drop from noise.")


def _shortfall(v: VariantResult | None, budget: Budget) -> list[str]:
    """How far ``v`` is from each budget limit it misses (the mAP drop by the noise rule)."""
    if v is None:
        return []
    out = []
    drop, lim, k, se = _num(v.drop), _num(budget.max_map_drop), _noise(budget), _num(v.drop_se)
    bound = drop + k * se if drop is not None and se else drop
    if bound is not None and lim is not None and bound > lim + 1e-9:
        rule = (f" + {k:g} × {se:.4f} standard error = {bound:.4f}" if bound != drop else "")
        out.append(f"mAP50-95 drop {drop:.4f}{rule} vs {lim:.4f} allowed ({bound - lim:.4f} over)")
    p50 = _num(v.latency_ms.get("p50")) if isinstance(v.latency_ms, dict) else None
    lim = _num(budget.max_latency_ms)
    if p50 is not None and lim is not None and p50 > lim:
        out.append(f"p50 latency {p50:.2f} ms vs {lim:g} ms allowed ({p50 - lim:.2f} ms, "
                   f"{100 * (p50 / lim - 1):.0f} % over)")
    size, lim = _num(v.size_mb), _num(budget.max_size_mb)
    if size is not None and lim is not None and size > lim:
        out.append(f"size {size:.2f} MB vs {lim:g} MB allowed ({size - lim:.2f} MB over)")
    mem, lim = _num(v.peak_mem_mb), _num(getattr(budget, "max_memory_mb", None))
    if mem is not None and lim is not None and mem > lim:
        out.append(f"peak memory {mem:.0f} MB vs {lim:g} MB allowed ({mem - lim:.0f} MB over)")
    return out


def _headline(v: VariantResult | None) -> str:
    """The key numbers of one variant in one line."""
    if v is None:
        return ""
    bits = []
    if _num(v.fps) is not None:
        bits.append(f"{v.fps:.1f} FPS")
    if _num(v.speedup) is not None:
        bits.append(f"{v.speedup:.2f}× the baseline")
    if _num(v.map50_95) is not None:
        bits.append(f"mAP50-95 {v.map50_95:.4f}" + (f" (drop {v.drop:+.4f})" if _num(v.drop) is not None else ""))
    if _num(v.size_mb) is not None:
        bits.append(f"{v.size_mb:.2f} MB")
    return ", ".join(bits)


def _recommendation(results: OptimizeResults) -> dict:
    """The recommendation box as plain strings (rendered by md and html alike)."""
    rec = results.recommendation or Recommendation()
    budget = _budget(results)
    name = rec.variant
    met = bool(rec.met)
    lines = []
    if name and met:
        title = f"Recommended: {name}"
        scenario = rec.scenario or results.scenario
        lines.append(f"Meets the {scenario + ' ' if scenario else ''}budget ({_budget_text(results)}).")
    elif name:
        title = f"Recommended: {name} (budget not met)"
    else:
        title = "No variant meets the budget"
    if not met:
        closest = rec.closest
        cv = _by_name(results, closest)
        if closest:
            miss = _shortfall(cv, budget)
            lines.append(f"Closest: {closest}" + (": " + "; ".join(miss) if miss else
                                                   " (no measured limit exceeded)" if cv else "") + ".")
        else:
            lines.append("No variant came close enough to name one.")
    head = _headline(_by_name(results, name))
    conf = results.confirm
    if name and conf is not None and conf.variant == name and _num(conf.speedup) is not None:
        med = conf.median_fps or {}
        lines.append(f"Confirmed in {_s(conf.rounds)} interleaved rounds against the baseline: "
                     f"{conf.speedup:.2f}x the end-to-end throughput (medians "
                     + " vs ".join(f"{_num(v):.1f}" for v in med.values() if _num(v) is not None)
                     + " images/s, baseline first).")
        if conf.pipeline and _num(conf.speedup_vs_pipeline) is not None:
            lines.append(f"Against the FP32 model at its best pipeline setting ({conf.pipeline}, timed in the same "
                         f"rounds): {conf.speedup_vs_pipeline:.2f}x.")
    return {"title": title, "met": met, "variant": name, "numbers": head, "lines": lines,
            "summary": rec.summary or "", "next": [str(x) for x in rec.next or []]}


def _per_scenario(results: OptimizeResults) -> list[tuple[str, str, str]]:
    ps = results.per_scenario or {}
    return [(sc, _s(d.variant), d.text or "") for sc, d in ps.items()]


def _profiles(results: OptimizeResults) -> dict[str, StageProfile | None]:
    return results.profile or {}


def _stage_rows(prof: StageProfile | None) -> list[tuple[str, float | None, float | None]]:
    st = (prof.stages_ms if prof is not None else None) or {}
    keys = [k for k in STAGES if k in st] + [k for k in st if k not in STAGES]
    total = sum(x for x in (_num(st[k]) for k in keys) if x is not None)
    return [(k, _num(st[k]), (_num(st[k]) / total if total and _num(st[k]) is not None else None)) for k in keys]


def _dominant(prof: StageProfile | None) -> str | None:
    rows = [(k, ms, sh) for k, ms, sh in _stage_rows(prof) if ms is not None]
    if not rows:
        return None
    k, ms, sh = max(rows, key=lambda r: r[1])
    return f"{k} ({ms:.2f} ms, {100 * sh:.0f} % of the end-to-end time)" if sh is not None else k


def _profile_sentence(results: OptimizeResults) -> str:
    prof = _profiles(results)
    before, after = prof.get("before"), prof.get("after")
    if after and _dominant(after):
        text = f"After optimization ({_s(after.variant)}) the dominant stage is {_dominant(after)}"
        if _dominant(before):
            text += f"; before ({_s(before.variant)}) it was {_dominant(before)}"
        return text + "."
    if _dominant(before):
        return (f"No profile after optimization; before ({_s(before.variant)}) the dominant stage is "
                f"{_dominant(before)}.")
    return "No bottleneck profile was recorded."


def _machine(results: OptimizeResults) -> list[tuple[str, str]]:
    m = results.machine or {}
    isa = m.get("isa") or {}
    flags = [k for k in SHOWN_ISA if isa.get(k)] + [k for k, on in isa.items() if on and k not in SHOWN_ISA]
    cores = m.get("cores") or m.get("logical_cpus")
    if m.get("usable_cpus") and m.get("usable_cpus") != cores:
        cores = f"{cores} ({m['usable_cpus']} usable)"
    versions = m.get("versions") or {}
    rows = [("CPU", _s(m.get("cpu"))), ("arch / OS", " / ".join(str(x) for x in (m.get("arch"), m.get("os")) if x)
                                       or DASH),
            ("cores", _s(cores)), ("ISA flags", " ".join(flags) or DASH),
            ("VNNI", DASH if m.get("vnni") is None else ("yes" if m["vnni"] else "no")),
            ("native bf16 / fp16", f"{_yn(m.get('native_bf16'))} / {_yn(m.get('native_fp16'))}"),
            ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or DASH)]
    return rows


def _yn(v) -> str:
    return DASH if v is None else ("yes" if v else "no")


def _deploy_text(results: OptimizeResults) -> tuple[str, str | None]:
    d = results.deploy
    return ("Deploy bundle: ", str(d)) if d else ("No deploy bundle was written.", None)


# ---------------------------------------------------------------------------------------------- plots

def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both FPS and mAP, by rising FPS."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return sorted(front)


def _label_points(fig, ax, done, xs, ys, area, base, rec) -> None:
    """Name each point, trying the four sides of its marker until the label overlaps no other label."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    taken = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
    for v, x, y, a in sorted(zip(done, xs, ys, area), key=lambda t: t[0].name not in (base, rec)):
        name = v.name
        tag = " (baseline)" if name == base else " (recommended)" if name == rec else ""
        r = math.sqrt(a * (1.9 if name in (base, rec) else 1.0)) / 2 + 2  # marker (or ring) radius, points
        for dx, dy, ha, va in ((r, r * 0.5, "left", "bottom"), (r, -r * 0.5, "left", "top"),
                               (-r, r * 0.5, "right", "bottom"), (-r, -r * 0.5, "right", "top"),
                               (0, r, "center", "bottom"), (0, -r, "center", "top")):
            t = ax.annotate(f"{name}{tag}", (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                            fontsize=8.5, color=REC_COLOR if name == rec else "black",
                            fontweight="bold" if name in (base, rec) else "normal", zorder=5)
            box = t.get_window_extent(renderer)
            if not any(box.overlaps(o) for o in taken) and ax.get_window_extent(renderer).contains(box.x1, box.y1) \
                    and ax.get_window_extent(renderer).contains(box.x0, box.y0):
                break
            t.remove()
        else:
            t = ax.annotate(f"{name}{tag}", (x, y), xytext=(r, r * 0.5), textcoords="offset points", fontsize=8.5,
                            zorder=5)
            box = t.get_window_extent(renderer)
        taken.append(box)


def pareto_png(results: OptimizeResults) -> bytes:
    """The Pareto plot as PNG bytes: x = end-to-end FPS, y = mAP50-95, size = MB."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    done = [v for v in _variants(results) if v.done and _num(v.fps) is not None and _num(v.map50_95) is not None]
    base, rec = results.baseline, (results.recommendation or Recommendation()).variant
    fig, ax = plt.subplots(figsize=(9, 5.2))
    if not done:
        ax.text(0.5, 0.5, "no variant was measured (FPS and mAP)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        data = _fig_png(fig)
        plt.close(fig)
        return data
    sizes = [_num(v.size_mb) for v in done]
    smax = max((s for s in sizes if s is not None), default=None)
    area = [60 + 540 * s / smax if s is not None and smax else 60 for s in sizes]
    xs, ys = [float(v.fps) for v in done], [float(v.map50_95) for v in done]
    front = _pareto_front(list(zip(xs, ys)))
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="pre", color="#555", lw=1.3, zorder=1)
    ax.scatter(xs, ys, s=area, color=POINT_COLOR, edgecolors="white", linewidths=0.8, zorder=3)
    for v, x, y, a in zip(done, xs, ys, area):
        ring = {"s": a * 1.9, "facecolors": "none", "zorder": 4}
        if v.name == base:
            ax.scatter([x], [y], edgecolors="black", linewidths=2, **ring)
        if v.name == rec:
            ax.scatter([x], [y], edgecolors=REC_COLOR, linewidths=2.6, **ring)
    handles = [Line2D([], [], ls="", marker="o", color=POINT_COLOR, markersize=8, label="variant (area ∝ size MB)"),
               Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="black", markeredgewidth=2,
                      markersize=11, label="baseline"),
               Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor=REC_COLOR,
                      markeredgewidth=2.6, markersize=11, label="recommended")]
    if len(front) > 1:
        handles.append(Line2D([], [], color="#555", lw=1.3, label="Pareto front"))
    bv, lim = _by_name(results, base), _num(_budget(results).max_map_drop)
    if bv is not None and _num(bv.map50_95) is not None and lim is not None:
        floor = float(bv.map50_95) - lim
        ax.axhline(floor, color="#c0392b", ls="--", lw=1.2, zorder=2)
        handles.append(Line2D([], [], color="#c0392b", ls="--", lw=1.2, label=f"baseline − max drop ({floor:.4f})"))
        ys = ys + [floor]
        ys = ys + _noise_whiskers(ax, results, done, handles)
    missed = [(x, y) for v, x, y in zip(done, xs, ys) if v.meets is False]
    if missed:
        ax.scatter(*zip(*missed), marker="x", s=28, color="black", linewidths=1.2, zorder=4)
        handles.append(Line2D([], [], ls="", marker="x", color="black", markersize=6,
                              label="misses the budget (reason: report table)"))
    pad = (max(ys) - min(ys)) or 0.01
    ax.set_ylim(min(ys) - 0.25 * pad, max(ys) + 0.3 * pad)
    xpad = (max(xs) - min(xs)) or max(xs) * 0.1 or 1
    ax.set_xlim(max(0.0, min(xs) - 0.15 * xpad), max(xs) + 0.3 * xpad)
    ax.set_xlabel("end-to-end throughput (images / s)")
    ax.set_ylabel("mAP50-95")
    ax.set_title(f"{results.model or ''}: accuracy vs speed ({results.target or ''}, "
                 f"{'?' if results.threads is None else results.threads} threads)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # never over a point
    _label_points(fig, ax, done, xs, ys, area, base, rec)
    data = _fig_png(fig)
    plt.close(fig)
    return data


def _noise_whiskers(ax, results: OptimizeResults, done: list[VariantResult], handles: list) -> list[float]:
    """The noise rule on the plot: a whisker from each point down to mAP − k × its standard error (what is held
    to the max-drop line), and a legend entry that states the rule. Returns the whiskers' lower ends."""
    from matplotlib.lines import Line2D

    k = _noise(_budget(results))
    if _num(_budget(results).map_noise) is None:
        return []
    if not k:
        handles.append(Line2D([], [], ls="", label="meets the mAP budget: measured drop ≤ max drop"))
        return []
    same_metric = (results.metric or "map50_95") == "map50_95"  # the SE is of the run's metric; the y axis is 50-95
    pts = [(float(v.fps), float(v.map50_95), k * float(v.drop_se)) for v in done
           if same_metric and _num(v.drop_se) and v.name != results.baseline]
    if pts:
        x, y, e = zip(*pts)
        ax.errorbar(x, y, yerr=[e, [0.0] * len(e)], fmt="none", ecolor="#c0392b", elinewidth=1.2, capsize=4,
                    zorder=2)
    handles.append(Line2D([], [], color="#c0392b", lw=1.2, marker="_", markersize=8,
                          label=f"noise rule: mAP − {k:g}×SE must stay above the line"
                          if pts else f"noise rule: drop + {k:g}×SE ≤ max drop"))
    return [y - e for _, y, e in pts]


def stages_png(results: OptimizeResults) -> bytes | None:
    """Per-stage ms before / after as horizontal stacked bars (None without a profile)."""
    prof = _profiles(results)
    bars = [(f"{lbl}\n{_s(p.variant)}", {k: ms for k, ms, _ in _stage_rows(p) if ms is not None})
            for lbl, p in (("before", prof.get("before")), ("after", prof.get("after"))) if p]
    bars = [b for b in bars if b[1]]
    if not bars:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.8 + 0.75 * len(bars)))
    labels = [b[0] for b in bars][::-1]
    keys = [k for k in STAGES if any(k in b[1] for b in bars)] + sorted(
        {k for b in bars for k in b[1] if k not in STAGES})
    left = [0.0] * len(bars)
    for k in keys:
        vals = [b[1].get(k, 0.0) for b in bars][::-1]
        ax.barh(labels, vals, left=left, color=STAGE_COLORS.get(k, "#999"), label=k, height=0.6)
        for i, (l0, w) in enumerate(zip(left, vals)):
            total = sum(bars[::-1][i][1].values())
            if total and w / total > 0.07:
                ax.text(l0 + w / 2, i, f"{100 * w / total:.0f}%", ha="center", va="center", fontsize=8, color="white")
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("ms per image (end to end)")
    ax.legend(ncol=len(keys), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.set_xlim(0, max(left) * 1.05 or 1)
    data = _fig_png(fig)
    plt.close(fig)
    return data


# ---------------------------------------------------------------------------------------------- markdown

def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(results: OptimizeResults, pareto: str = "pareto.png", stages: str | None = "stages.png") -> str:
    r = results
    rec = _recommendation(r)
    lines = [f"# yolopt optimize: {_s(r.model)}", "",
             (f"data **{_s(r.data)}**, scenario **{_s(r.scenario)}**, target "
              f"**{_s(r.target)}**, {_s(r.threads)} threads, conf {_f(r.conf, 'g')}"), "",
             f"Budget: {_budget_text(r)}. Time spent: {_time_text(r)}.", ""]
    if isinstance(r.runtime_choice, dict) and r.runtime_choice.get("p50_ms"):
        rc = r.runtime_choice
        lines += [f"Target chosen by `--target auto`: **{_s(rc.get('chosen'))}**, the fastest FP32 model here "
                  f"(model-only p50 at {_s(rc.get('imgsz'))}, {_s(rc.get('threads'))} thread(s), median of "
                  f"{_s(rc.get('rounds'))} interleaved rounds: "
                  + ", ".join(f"{k} {_f(v, '.2f')} ms" for k, v in rc["p50_ms"].items()) + ")"
                  + "".join(f"; {k} left out: {_md_cell(v)}" for k, v in (rc.get("skipped") or {}).items()) + ".",
                  ""]
    lines += [f"## {rec['title']}", ""]
    if rec["numbers"]:
        lines += [f"**{rec['numbers']}**", ""]
    lines += [f"> {x}" for x in rec["lines"]]
    if rec["summary"]:
        lines += ["", rec["summary"]]
    if rec["next"]:
        lines += ["", "Next steps:", ""] + [f"- {x}" for x in rec["next"]]
    ps = _per_scenario(r)
    if ps:
        lines += ["", "### Per scenario", "", "| scenario | variant | why |", "|---|---|---|"]
        lines += [f"| {_md_cell(sc)}{' (this run)' if sc == r.scenario else ''} | {_md_cell(v)} | "
                  f"{_md_cell(t or DASH)} |" for sc, v, t in ps]
    lines += ["", "## Pareto front", "", f"![Pareto plot: FPS vs mAP50-95]({pareto})", "",
              "## Variants", "", "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for v in _variants(r):
        cells = _row(v)
        tag = " (baseline)" if v.name == r.baseline else ""
        tag += " **(recommended)**" if v.name == rec["variant"] else ""
        cells["name"] = cells["name"] + tag
        lines.append("| " + " | ".join(_md_cell(cells[k]) for k, _ in COLUMNS) + " |")
    rule = noise_rule(r)
    if rule:
        lines += ["", rule]
    descs = [(v.name, v.description) for v in _variants(r) if v.description]
    if descs:
        lines += [""] + [f"- **{_md_cell(n)}**: {d}" for n, d in descs]
    lines += ["", "## Bottleneck profile", "", _profile_sentence(r)]
    if stages:
        lines += ["", f"![per-stage time]({stages})"]
    prof = _profiles(r)
    for lbl in ("before", "after"):
        p = prof.get(lbl)
        if not p:
            continue
        lines += ["", f"### {lbl.capitalize()}: {_s(p.variant)}", "", "| stage | ms | share |", "|---|---|---|"]
        lines += [f"| {k} | {_f(ms, '.2f')} | {_f(None if sh is None else 100 * sh, '.0f', ' %')} |"
                  for k, ms, sh in _stage_rows(p)]
        layers = p.layers or []
        if layers:
            lines += ["", "| layer | type | ms | share |", "|---|---|---|---|"]
            lines += [f"| {_md_cell(_s(x.get('name')))} | {_md_cell(_s(x.get('type')))} | {_f(x.get('ms'), '.3f')} | "
                      f"{_f(None if _num(x.get('share')) is None else 100 * x['share'], '.1f', ' %')} |"
                      for x in layers[:10]]
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_md_cell(v)} |" for k, v in _machine(r)]
    lines += ["", VNNI_NOTE, "", "## Deploy", ""]
    text, path = _deploy_text(r)
    lines.append(text + (f"`{path}`" if path else ""))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- html

CSS = """
body{font-family:"DejaVu Sans","Liberation Sans",Arial,sans-serif;color:#1c2330;background:#fff;margin:0}
main{max-width:1240px;margin:0 auto;padding:18px 20px 40px}
h1{font-size:24px;margin:4px 0 6px}h2{font-size:19px;margin:28px 0 10px;border-bottom:2px solid #dde3ec;
padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.meta{color:#4a5568;font-size:14px;line-height:1.6}.meta b{color:#1c2330}
.rec{border-left:8px solid #0a8f3c;background:#eaf6ee;padding:12px 18px;margin:16px 0;border-radius:4px}
.rec.miss{border-left-color:#d98c00;background:#fff5e0}
.rec h2{border:0;margin:0 0 6px;font-size:20px}.rec .num{font-weight:bold;font-size:15px}
.rec p,.rec li{font-size:14px;line-height:1.5}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px}
th,td{border:1px solid #cfd6e0;padding:4px 7px;text-align:right;vertical-align:top}
th{background:#2b3a55;color:#fff;font-weight:600}
td:first-child,th:first-child{text-align:left}
tbody tr:nth-child(even){background:#f3f6fa}
.wide{overflow-x:auto}
#variants{width:100%;font-size:12px}#variants th{background:#1d4e89}#variants th,#variants td{padding:4px 5px}
#variants .reason{text-align:left}#variants td.reason{color:#8a3b12;min-width:150px}
#variants tr.rec td{background:#dff3e6;font-weight:600}#variants tr.base td:first-child{border-left:4px solid #000}
#variants tr.failed td,#variants tr.skipped td{color:#7b8494}
#variants .desc{display:block;font-weight:normal;color:#5f6b7a;font-size:11px}
.left td,.left th{text-align:left}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.note{font-size:13px;color:#4a5568;background:#f3f6fa;padding:8px 12px;border-radius:4px}
code{background:#eef1f5;padding:1px 4px;border-radius:3px}
"""


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(results: OptimizeResults, pareto: bytes, stages: bytes | None = None) -> str:
    r = results
    rec = _recommendation(r)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>yolopt optimize: {_e(r.model or '')}</title>", f"<style>{CSS}</style></head><body><main>",
           f"<h1>yolopt optimize: {_e(_s(r.model))}</h1>",
           ('<div class="meta">'
            f"data <b>{_e(_s(r.data))}</b> · scenario <b>{_e(_s(r.scenario))}</b> · target "
            f"<b>{_e(_s(r.target))}</b> · {_e(_s(r.threads))} threads · "
            f"conf {_e(_f(r.conf, 'g'))}"
            f"<br>budget: {_e(_budget_text(r))}<br>time spent: {_e(_time_text(r))}</div>"),
           f'<section class="rec{"" if rec["met"] else " miss"}" id="recommendation"><h2>{_e(rec["title"])}</h2>']
    if rec["numbers"]:
        out.append(f'<div class="num">{_e(rec["numbers"])}</div>')
    out += [f"<p>{_e(x)}</p>" for x in rec["lines"]]
    if rec["summary"]:
        out.append(f"<p>{_e(rec['summary'])}</p>")
    if rec["next"]:
        out.append("<p><b>Next steps</b></p><ul>" + "".join(f"<li>{_e(x)}</li>" for x in rec["next"]) + "</ul>")
    out.append("</section>")
    ps = _per_scenario(r)
    if ps:
        out.append('<h3>Per scenario</h3><table class="left"><thead><tr><th>scenario</th><th>variant</th><th>why</th>'
                   "</tr></thead><tbody>")
        out += [f"<tr><td>{_e(sc)}{' <b>(this run)</b>' if sc == r.scenario else ''}</td><td>{_e(v)}</td>"
                f"<td>{_e(t or DASH)}</td></tr>" for sc, v, t in ps]
        out.append("</tbody></table>")
    out += ["<h2>Pareto front</h2>",
            (f'<img id="pareto" alt="Pareto plot: end-to-end FPS vs mAP50-95, point area = size MB" '
             f'src="{_data_uri(pareto)}">'),
            "<h2>Variants</h2>", '<div class="wide"><table id="variants"><thead><tr>'
            + "".join(f'<th class="{k}">{_e(h)}</th>' for k, h in COLUMNS) + "</tr></thead><tbody>"]
    for v in _variants(r):
        cells = _row(v)
        cls = [c for c, on in (("base", v.name == r.baseline), ("rec", v.name == rec["variant"]),
                               (str(v.status), v.status in ("failed", "skipped"))) if on]
        tds = []
        for k, _ in COLUMNS:
            if k == "name":
                tag = " (baseline)" if "base" in cls else ""
                tag += " ★ recommended" if "rec" in cls else ""
                desc = f'<span class="desc">{_e(v.description)}</span>' if v.description else ""
                tds.append(f"<td>{_e(cells[k] + tag)}{desc}</td>")
            else:
                tds.append(f'<td class="{k}">{_e(cells[k])}</td>')
        out.append(f'<tr class="{" ".join(cls)}">' + "".join(tds) + "</tr>")
    out.append("</tbody></table></div>")
    rule = noise_rule(r)
    if rule:
        out.append(f'<p class="note" id="noise-rule">{_e(rule)}</p>')
    out += ["<h2>Bottleneck profile</h2>", f"<p>{_e(_profile_sentence(r))}</p>"]
    if stages:
        out.append(f'<img id="stages" alt="per-stage time before and after" src="{_data_uri(stages)}">')
    prof = _profiles(r)
    for lbl in ("before", "after"):
        p = prof.get(lbl)
        if not p:
            continue
        out.append(f"<h3>{lbl.capitalize()}: {_e(_s(p.variant))}</h3>"
                   '<div style="display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start">'
                   "<table><thead><tr><th>stage</th><th>ms</th><th>share</th></tr></thead><tbody>")
        out += [f"<tr><td>{_e(k)}</td><td>{_f(ms, '.2f')}</td><td>{_f(None if sh is None else 100 * sh, '.0f', ' %')}"
                "</td></tr>" for k, ms, sh in _stage_rows(p)]
        out.append("</tbody></table>")
        layers = p.layers or []
        if layers:
            out.append("<table><thead><tr><th>top layer</th><th>type</th><th>ms</th><th>share</th></tr></thead><tbody>")
            out += [f"<tr><td>{_e(_s(x.get('name')))}</td><td>{_e(_s(x.get('type')))}</td>"
                    f"<td>{_f(x.get('ms'), '.3f')}</td>"
                    f"<td>{_f(None if _num(x.get('share')) is None else 100 * x['share'], '.1f', ' %')}</td></tr>"
                    for x in layers[:10]]
            out.append("</tbody></table>")
        out.append("</div>")
    out.append('<h2>Machine</h2><table class="left" id="machine"><tbody>')
    out += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _machine(r)]
    out += ["</tbody></table>", f'<p class="note">{_e(VNNI_NOTE)}</p>', "<h2>Deploy</h2>"]
    text, path = _deploy_text(r)
    out.append(f"<p>{_e(text)}" + (f"<code>{_e(path)}</code>" if path else "") + "</p>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- entry point

def _write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_report(results: OptimizeResults | dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``pareto.png`` (+ ``stages.png`` with a profile), ``report.md``, ``report.html``.

    ``results``: the run (its ``to_dict()`` is the JSON), or a dict as results.json holds it (written as given).
    Returns ``{"json", "png", "md", "html"}`` (and ``"stages"`` when that chart was drawn) -> paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(results, dict):
        data, results = results, OptimizeResults.from_dict(results)
    else:
        data = results.to_dict()
    paths = {"json": write_json(out / "results.json", data, quiet=True)}
    pareto = pareto_png(results)
    paths["png"] = _write_bytes(out / "pareto.png", pareto)
    stages = stages_png(results)
    if stages is not None:
        paths["stages"] = _write_bytes(out / "stages.png", stages)
    paths["md"] = _write_text(out / "report.md", render_markdown(results, "pareto.png",
                                                                 "stages.png" if stages is not None else None))
    paths["html"] = _write_text(out / "report.html", render_html(results, pareto, stages))
    return paths
