"""The compress run's report: ``report.json`` (``CompressReport.to_dict()``), ``report.md`` and ``report.png``
(selection mAP over the run's epochs, one colour per stage, the val scores at the end)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..fileio import atomic_write, write_json

log = logging.getLogger("yolopt")


def _f(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def further(rep, spec) -> list[str]:
    """What it would take to go further, read off the measurements."""
    out = []
    fin = rep.final
    if fin is None:
        return out
    base, sel = fin.select_base, fin.select
    gap50 = base.map50 - spec.max_map_drop - sel.map50
    gap95 = base.map50_95 - spec.max_map_drop - sel.map50_95
    if max(gap50, gap95) > 0:
        out.append(f"selection mAP50 is {gap50:+.4f} and mAP50-95 {gap95:+.4f} from the limit (positive: short): more "
                   f"epochs (a larger epochs/time budget) or a larger FLOPs target")
    if rep.stages and len(rep.stages[-1].curve) >= 2:
        c = rep.stages[-1].curve
        slope = (c[-1][1] - c[0][1]) / max(c[-1][0] - c[0][0], 1)
        if slope > 0 and rep.stop == "budget spent":
            out.append(f"the last stage was still rising ({slope:+.4f} mAP50-95 per epoch on the selection split): a "
                       f"larger budget should gain more")
    if rep.widen is not None and not rep.widen.widened:
        out.append(f"no level was widened ({rep.widen.reason.strip('; ')}): a higher FLOPs target leaves room for it")
    if fin.flops_ratio < spec.target_flops * 0.9:
        out.append(f"the result keeps {fin.flops_ratio:.3f} of the FLOPs, well under the target: widen more")
    ort = fin.latency.get("onnxruntime")
    limit = spec.max_latency_ratio or 0.65
    if ort and ort["ratio"] > limit:
        fix = "round channels to 16 (--round-to 16)" if spec.round_to < 16 else "target fewer FLOPs"
        out.append(f"ONNX Runtime latency ratio {ort['ratio']:.3f} (over {limit:g}): FLOPs do not all turn into time "
                   f"here; prune the layers that dominate latency (yolopt profile) or {fix}")
    out.append("INT8 on top (yolopt quantize ... --backend openvino) can compound with pruning on VNNI CPUs; measure it "
               "(yolopt bench): with channels this few, INT8 can also run slower than FP32")
    return out


def render_markdown(rep) -> str:
    fin, sp = rep.final, rep.spec
    lines = [f"# yolopt compress: {sp['model']}", "",
             f"Data `{sp['data']}`, {rep.imgsz} px, FLOPs target {sp['target_flops']}, max drop {sp['max_map_drop']} "
             f"({sp['metric']}), {rep.plan_epochs} planned epochs. **Stopped: {rep.stop}.** "
             f"Compute {rep.seconds / 60:.1f} min. Machine: {rep.machine.get('cpu', '?')}.", ""]
    s = rep.split
    lines += [f"Selection split: {s['select']} of the train images ({s['fraction']:g}, seed {s['seed']}, stratified "
              f"by class: {s['strata']}); fine-tuning on the other {s['train']}. Every choice (checkpoints, stages, "
              f"widening, stopping) was made on it; `val` was scored once, at the end.", ""]
    for w in rep.warnings:
        lines += [f"> **Warning:** {w}", ""]
    if fin is not None:
        lines += ["## Result", "", "| | base | compressed | difference |", "|---|---|---|---|",
                  f"| GFLOPs | {fin.gflops_base:.3f} | {fin.gflops:.3f} | {fin.flops_ratio:.3f}x |"]
        for name, b, r in (("selection", fin.select_base, fin.select), ("val", fin.val_base, fin.val)):
            if b is None or r is None:
                continue
            for m, label in (("map50_95", "mAP50-95"), ("map50", "mAP50")):
                se = fin.val_diff_se.get(m) if name == "val" else None
                diff = getattr(r, m) - getattr(b, m)
                lines.append(f"| {name} {label} ({b.images} images) | {getattr(b, m):.4f} | {getattr(r, m):.4f} | "
                             f"{diff:+.4f}{f' (SE {se:.4f})' if se is not None else ''} |")
        for rt, v in fin.latency.items():
            lines.append(f"| {rt} FP32 latency ({v['threads']} threads, batch 1, median of {fin.latency_rounds} "
                         f"interleaved rounds) | {v['base_ms']:.2f} ms | {v['ms']:.2f} ms | {v['ratio']:.3f}x |")
        lines.append("")
    lines += ["## Stages", "", "| stage | epochs | minutes | lr0 | scale | GFLOPs | selection mAP50-95 / mAP50 |",
              "|---|---|---|---|---|---|---|"]
    for st in rep.stages:
        sel = st.select
        lines.append(f"| {st.name} | {st.epochs} | {st.seconds / 60:.1f} | {st.lr0:g} | {st.scale:g} | {st.gflops:.3f} | "
                     f"{_f(sel and sel.map50_95)} / {_f(sel and sel.map50)} |")
    lines.append("")
    if rep.widen is not None:
        w = rep.widen
        lines += ["## Widening", "", "AP50 per output level on the selection split (boxes by anchor size, model "
                  "input pixels):", "", "| level | stride | size px | boxes | base AP50 | recovered AP50 |",
                  "|---|---|---|---|---|---|"]
        for b, p in zip(w.levels_base, w.levels_pruned):
            lines.append(f"| P{b['level'] + 3} | {b['stride']} | {b['lo']:g}-{b['hi']:g} | {b['instances']} | "
                         f"{b['ap50']:.4f} | {p['ap50']:.4f} |")
        lines.append("")
        if w.latency_ratio is not None:
            lines.append(f"* the recovered model itself runs at {w.latency_ratio:.3f}x the base's ONNX Runtime FP32 "
                         f"latency (measured, median of 5 interleaved rounds)")
        for x in w.widened:
            lines.append(f"* widened `model.{x['layer']}` (P{x['level'] + 3}, stride {x['stride']}) to {x['hidden']} "
                         f"hidden / {x['out']} out channels: it lost {x['lost_ap50_weighted']:.4f} of the overall AP50; "
                         f"{x['gflops']:.3f} GFLOPs after"
                         + (f", {x['latency_ratio']:.3f}x the base's ONNX Runtime latency (measured)"
                            if x.get("latency_ratio") else ""))
        if w.reason:
            lines.append(f"* {w.reason.strip('; ')}")
        lines.append("")
    if rep.further:
        lines += ["## Going further", ""] + [f"* {x}" for x in rep.further] + [""]
    if rep.layers:
        lines += ["## Output channels per conv", "", "| conv | before | after |", "|---|---|---|"]
        for row in rep.layers:
            lines.append(f"| {row['layer']} | {row['out_before']} | {row['out_after']} |")
        lines.append("")
    lines += ["![selection mAP](report.png)", ""]
    return "\n".join(lines)


def plot(rep, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), tight_layout=True)
    offset = 0
    for st in rep.stages:
        if st.curve:
            x = [offset + c[0] for c in st.curve]
            axes[0].plot(x, [c[1] for c in st.curve], marker=".", label=st.name)
            axes[1].plot(x, [c[2] for c in st.curve], marker=".", label=st.name)
        offset += st.epochs
    fin = rep.final
    for ax, m, label in ((axes[0], "map50_95", "mAP50-95"), (axes[1], "map50", "mAP50")):
        if fin is not None:
            b = getattr(fin.select_base, m)
            ax.axhline(b, color="grey", linestyle="--", linewidth=1, label="base (selection)")
            ax.axhline(b - rep.spec["max_map_drop"], color="red", linestyle=":", linewidth=1, label="limit")
            if fin.val is not None:
                ax.scatter([offset], [getattr(fin.val, m)], color="black", marker="*", s=80, zorder=3,
                           label="result on val")
                ax.scatter([offset], [getattr(fin.val_base, m)], color="grey", marker="*", s=80, zorder=3,
                           label="base on val")
        ax.set_title(f"selection {label}")
        ax.set_xlabel("fine-tuning epoch")
        ax.legend(fontsize=7)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def write_recipe_report(rep, folder: Path) -> None:
    folder = Path(folder)
    write_json(folder / "report.json", rep.to_dict(), quiet=True)
    text = render_markdown(rep)
    atomic_write(folder / "report.md", lambda tmp: Path(tmp).write_text(text))
    try:
        plot(rep, folder / "report.png")
    except Exception as e:  # noqa: BLE001 - a plotting failure must not lose the report
        log.warning("could not draw report.png: %s", e)
