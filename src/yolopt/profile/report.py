"""Terminal tables (rich) and PNG charts (matplotlib, Agg) for a profile report."""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_write

STAGE_COLORS = {"backbone": "#4C72B0", "neck": "#DD8452", "head": "#55A868", "other": "#8C8C8C"}
PIPE_COLORS = {"decode": "#8172B3", "preprocess": "#937860", "inference": "#4C72B0", "nms": "#C44E52",
               "postprocess": "#64B5CD"}


def _shape(s) -> str:
    if s and isinstance(s[0], list):
        return " ".join("x".join(map(str, t)) for t in s)
    return "x".join(map(str, s or []))


def _si(n: float | None, unit: str = "") -> str:
    if n is None:
        return "-"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suf}{unit}"
    return f"{n:.0f}{unit}"


def print_report(rep: dict, top: int = 10, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    head = (f"[bold]{rep['model']}[/] {rep['imgsz']}x{rep['imgsz']} batch {rep['batch']}, backend {rep['backend']}, "
            f"{rep['threads']} thread(s)")
    con.print(head)
    if rep.get("params") is not None:
        extra = f" ({rep['params_unfused']:,} before Conv+BN fusion)" if rep.get("params_unfused") else ""
        if rep.get("format") == "onnxruntime":
            extra = " (ONNX initializers)"
        con.print(f"params {rep['params']:,}{extra}" + (f", FLOPs {rep['flops'] / 1e9:.2f} G" if rep.get("flops") else ""))
    if rep.get("note"):
        con.print(f"[yellow]note:[/] {rep['note']}")

    rows = rep.get("layers") or []
    if rows:
        t = Table(title=f"per-layer (torch): whole model {rep['latency_ms_torch']:.2f} ms, layer sum "
                        f"{rep['layer_latency_sum_ms']:.2f} ms ({100 * rep['layer_sum_ratio']:.0f}%)")
        for c in ("#", "module", "type", "stage", "output", "params", "FLOPs", "act. bytes", "ms", "share", "cum.",
                  "bound", "% peak"):
            t.add_column(c, justify="left" if c in ("module", "type", "stage", "output", "bound") else "right")
        for r in rows:
            t.add_row(str(r["index"]), r["name"], r["type"], r["stage"], _shape(r["output_shape"]), f"{r['params']:,}",
                      _si(r["flops"]), _si(r["activation_bytes"], "B"), f"{r['latency_ms']:.2f}",
                      f"{100 * r['share']:.1f}%", f"{100 * r['cumulative_share']:.1f}%", r.get("bound", "-"),
                      f"{r.get('pct_of_peak', 0):.0f}%")
        con.print(t)
        for key in ("stage", "type"):
            g = Table(title=f"totals per {key}")
            for c in (key, "layers", "params", "FLOPs", "ms", "share"):
                g.add_column(c, justify="left" if c == key else "right")
            for name, v in rep["groups"][key].items():
                g.add_row(name, str(v["layers"]), f"{v['params']:,}", _si(v["flops"]), f"{v['latency_ms']:.2f}",
                          f"{100 * v['share']:.1f}%")
            con.print(g)

    for rt, d in (rep.get("deploy") or {}).items():
        if "error" in d:
            con.print(f"[yellow]{rt}:[/] {d['error']}")
            continue
        unprof = d.get("latency_ms_unprofiled")
        t = Table(title=f"deployment view: {rt} {d.get('version', '')} - run {d['latency_ms']:.2f} ms"
                        + (f" ({unprof:.2f} ms without profiling)" if unprof else "")
                        + f", layer sum {d['layer_sum_ms']:.2f} ms ({100 * d['sum_ratio']:.0f}%), top {top}")
        cols = ("layer", "type", "ms", "share", "torch ms") if rows else ("layer", "ms", "share")
        for c in cols:
            t.add_column(c, justify="left" if c in ("layer", "type") else "right")
        for r in sorted(d["layers"], key=lambda r: -r["latency_ms"])[:top]:
            tm = r.get("torch_ms")
            cells = [r["name"], r.get("type", "-"), f"{r['latency_ms']:.2f}", f"{100 * r['share']:.1f}%",
                     "-" if tm is None else f"{tm:.2f}"]
            t.add_row(*(cells if rows else [cells[0], cells[2], cells[3]]))
        con.print(t)

    pipe = rep.get("pipeline")
    if pipe:
        t = Table(title=f"pipeline stages, median ms per image ({len(pipe['images'])} images, {pipe['backend']})")
        t.add_column("stage")
        for key in ("deploy", "eval"):
            t.add_column(f"conf {pipe[key]['conf']:g}", justify="right")
            t.add_column("share", justify="right")
        for st in pipe["deploy"]["stages_ms"]:
            t.add_row(st, *[x for key in ("deploy", "eval") for x in
                            (f"{pipe[key]['stages_ms'][st]:.2f}", f"{100 * pipe[key]['shares'][st]:.0f}%")])
        t.add_row("total", f"{pipe['deploy']['total_ms']:.2f}", "", f"{pipe['eval']['total_ms']:.2f}", "")
        con.print(t)
        t = Table(title="NMS vs candidate boxes")
        for c in ("conf", "candidates", "kept", "NMS ms"):
            t.add_column(c, justify="right")
        for r in pipe["nms_vs_candidates"]:
            t.add_row(f"{r['conf']:g}", str(r["candidates"]), str(r["kept"]), f"{r['nms_ms']:.2f}")
        con.print(t)

    if rep.get("sweep"):
        t = Table(title="scaling sweep")
        for c in ("imgsz", "batch", "ms / batch", "ms / image", "images/s"):
            t.add_column(c, justify="right")
        for r in rep["sweep"]:
            if "latency_ms" in r:
                t.add_row(str(r["imgsz"]), str(r["batch"]), f"{r['latency_ms']:.1f}", f"{r['ms_per_image']:.2f}",
                          f"{r['throughput_ips']:.1f}")
            else:
                t.add_row(str(r["imgsz"]), str(r["batch"]), r.get("error", "skipped")[:40], "", "")
        con.print(t)

    m = rep.get("machine")
    if m:
        line = (f"machine: {m['cpu']}, {m['threads']} thread(s): peak {m['peak_gflops']:.1f} GFLOP/s, "
                f"bandwidth {m['bandwidth_gbs']:.1f} GB/s, ridge {m['ridge_flops_per_byte']:.1f} FLOP/byte")
        if rep.get("achieved_gflops"):
            line += f"; model achieves {rep['achieved_gflops']:.1f} GFLOP/s ({rep['achieved_pct_of_peak']:.1f}% of peak)"
        con.print(line)
    if rep.get("findings"):
        con.print("[bold]findings[/]")
        for f in rep["findings"]:
            con.print(f"- {f['message']}" + (f"\n    [dim]{f['suggestion']}[/]" if f.get("suggestion") else ""))


def _save(fig, path: Path) -> Path:
    def write(tmp):
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")

    atomic_write(path, write)
    return path


def write_plots(rep: dict, out_dir: str | Path) -> list[Path]:
    """PNG charts: layers.png, stages.png, roofline.png, deploy.png, scaling.png (those with data)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    rows = rep.get("layers") or []

    if rows:
        fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.4), 4.5))
        ax.bar([r["name"].replace("model.", "") for r in rows], [r["latency_ms"] for r in rows],
               color=[STAGE_COLORS.get(r["stage"], "#888") for r in rows])
        ax.set_xlabel("layer (model.<i>)")
        ax.set_ylabel("ms (median-centred)")
        ax.set_title(f"per-layer latency, torch, {rep['imgsz']}x{rep['imgsz']} batch {rep['batch']}")
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=c, label=s) for s, c in STAGE_COLORS.items() if s != "other"])
        written.append(_save(fig, out / "layers.png"))
        plt.close(fig)

    pipe = rep.get("pipeline")
    groups = (rep.get("groups") or {}).get("stage")
    if pipe or groups:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        if pipe:
            keys = list(pipe["deploy"]["stages_ms"])
            labels = [f"conf {pipe[k]['conf']:g}" for k in ("deploy", "eval")]
            left = [0.0, 0.0]
            for st in keys:
                vals = [pipe[k]["stages_ms"][st] for k in ("deploy", "eval")]
                axes[0].barh(labels, vals, left=left, color=PIPE_COLORS.get(st), label=st)
                left = [a + b for a, b in zip(left, vals)]
            axes[0].set_xlabel("ms per image")
            axes[0].set_title("pipeline stages")
            axes[0].legend(fontsize=8)
        else:
            axes[0].axis("off")
        if groups:
            axes[1].bar(list(groups), [g["latency_ms"] for g in groups.values()],
                        color=[STAGE_COLORS.get(s, "#888") for s in groups])
            axes[1].set_ylabel("ms")
            axes[1].set_title("model stages (torch)")
        else:
            axes[1].axis("off")
        written.append(_save(fig, out / "stages.png"))
        plt.close(fig)

    m = rep.get("machine")
    pts = [r for r in rows if r["flops"] > 0 and r["achieved_gflops"] > 0]
    if pts and m:
        import numpy as np

        fig, ax = plt.subplots(figsize=(7, 5))
        ridge = m["ridge_flops_per_byte"]
        ai = np.array([r["arithmetic_intensity"] for r in pts])
        xs = np.logspace(np.log10(min(ai.min(), ridge) / 4), np.log10(max(ai.max(), ridge) * 4), 200)
        ax.plot(xs, np.minimum(m["peak_gflops"], xs * m["bandwidth_gbs"]), "k-", label="roofline")
        ax.axvline(ridge, color="k", ls=":", lw=0.8)
        for st, c in STAGE_COLORS.items():
            sel = [r for r in pts if r["stage"] == st]
            if sel:
                ax.scatter([r["arithmetic_intensity"] for r in sel], [r["achieved_gflops"] for r in sel], color=c,
                           label=st, s=[20 + 400 * r["share"] for r in sel], alpha=0.8)
        for r in sorted(pts, key=lambda r: -r["latency_ms"])[:6]:
            ax.annotate(r["name"].replace("model.", ""), (r["arithmetic_intensity"], r["achieved_gflops"]), fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP / byte moved)")
        ax.set_ylabel("achieved GFLOP/s")
        skipped = len(rows) - len(pts)
        ax.set_title(f"roofline: peak {m['peak_gflops']:.0f} GFLOP/s, {m['bandwidth_gbs']:.1f} GB/s"
                     + (f" ({skipped} zero-FLOP layers not shown)" if skipped else ""), fontsize=10)
        ax.legend()
        written.append(_save(fig, out / "roofline.png"))
        plt.close(fig)

    deploy = {k: d for k, d in (rep.get("deploy") or {}).items() if "layers" in d}
    if deploy:
        names = [r["name"] for r in rows] if rows else sorted(
            {r["name"] for d in deploy.values() for r in d["layers"] if r["name"] != "other"},
            key=lambda n: int(n.split(".")[1]))
        series = {"torch": {r["name"]: r["latency_ms"] for r in rows}} if rows else {}
        series |= {k: {r["name"]: r["latency_ms"] for r in d["layers"]} for k, d in deploy.items()}
        fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.45), 4.5))
        w = 0.8 / len(series)
        for j, (k, vals) in enumerate(series.items()):
            ax.bar([i + j * w for i in range(len(names))], [vals.get(n, 0.0) for n in names], width=w, label=k)
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(names))], [n.replace("model.", "") for n in names])
        ax.set_ylabel("ms")
        ax.set_xlabel("layer (model.<i>)")
        ax.set_title("per-layer latency by runtime")
        ax.legend()
        written.append(_save(fig, out / "deploy.png"))
        plt.close(fig)

    sweep = [r for r in (rep.get("sweep") or []) if "latency_ms" in r]
    if sweep:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for s in sorted({r["imgsz"] for r in sweep}):
            sel = sorted((r for r in sweep if r["imgsz"] == s), key=lambda r: r["batch"])
            axes[0].plot([r["batch"] for r in sel], [r["latency_ms"] for r in sel], "o-", label=f"{s}")
            axes[1].plot([r["batch"] for r in sel], [r["throughput_ips"] for r in sel], "o-", label=f"{s}")
        for ax, yl in zip(axes, ("ms per batch", "images / s")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch")
            ax.set_ylabel(yl)
            ax.legend(title="imgsz")
        axes[0].set_title("latency")
        axes[1].set_title("throughput")
        written.append(_save(fig, out / "scaling.png"))
        plt.close(fig)
    return written
