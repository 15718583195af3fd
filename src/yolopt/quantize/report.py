"""The quantization report: ``<artifact>.json`` and ``<artifact>.md`` (+ ``<artifact>_sensitivity.png``)."""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_write, write_json
from .result import QuantizeReport


def _f(v, fmt=".4f") -> str:
    return "-" if v is None else format(v, fmt)


def artifact_kind(backend: str) -> str:
    """What the INT8 artifact of ``backend`` is called: "IR" for OpenVINO, "ONNX" otherwise."""
    return "IR" if backend == "openvino" else "ONNX"


def markdown(rep: QuantizeReport) -> str:
    fp, q, qat, ptq, timing = rep.fp32, rep.int8, rep.qat, rep.ptq, rep.timing
    lat = timing.latency if timing else {}
    # with QAT, PTQ of the same graph (same float layers) is a third column: the like-for-like comparison
    kind = artifact_kind(rep.backend)
    cols = [("fp32 ONNX", fp, "fp32"), (f"INT8 {kind}" + (" (QAT)" if qat else ""), q, "int8")]
    if ptq:
        cols.append((f"INT8 {kind} (PTQ, same graph)", ptq, "ptq"))

    def row(name, fn):
        return f"| {name} | " + " | ".join(fn(r, k) for _, r, k in cols) + " |"

    cal = rep.calibration
    lines = [f"# INT8 quantization: {rep.model}", "",
             f"Backend {rep.backend}, input {rep.imgsz} px, calibration: {cal.images} images "
             f"of {cal.source} ({cal.method}, {cal.preprocess}).", "",
             "| | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|",
             row("mAP50-95", lambda r, k: _f(r.map50_95 if r else None)),
             row("mAP50", lambda r, k: _f(r.map50 if r else None)),
             row("p50 latency, model only (ms)", lambda r, k: _f(lat.get(k, {}).get("p50_ms"), ".2f")),
             row("size (MB)", lambda r, k: _f(getattr(rep.size_mb, "int8" if k == "ptq" else k), ".2f")), ""]
    if rep.map50_95_drop is not None:
        lines.append(f"mAP50-95 drop **{rep.map50_95_drop:.4f}**, mAP50 drop {rep.map50_drop:.4f} "
                     f"({fp.images} val images, {fp.mode} letterbox).")
    if timing:
        lines.append(f"INT8 latency = **{timing.latency_ratio:.3f}x** fp32 (speed-up {timing.speedup:.2f}x; "
                     f"medians of interleaved rounds, same run, {lat['int8'].get('threads') or 'default'} threads).")
        if timing.latency_ratio_vs_fp32_openvino is not None:
            lines.append(f"The fp32 ONNX column is ONNX Runtime; against the fp32 OpenVINO IR "
                         f"({lat['fp32_openvino']['p50_ms']:.2f} ms) INT8 is "
                         f"{timing.latency_ratio_vs_fp32_openvino:.3f}x.")
        m = timing.machine or {}
        lines.append(f"Machine: {m.get('cpu', '?')}; VNNI: {m.get('vnni', '?')}.")
    if qat:
        lines += ["", f"QAT: {qat.epochs} epoch(s) on {qat.data}"
                  + (f" + {', '.join(qat.unlabeled)} (no labels)" if qat.unlabeled else "")
                  + f", lr {qat.lr0:g}, the float model as teacher, {qat.seconds / 60:.1f} min. "
                  f"The tuned float weights score mAP50-95 {_f(qat.fp32_tuned.map50_95 if qat.fp32_tuned else None)} "
                  f"in fp32."]
        if ptq and qat.map50_95_gain_over_ptq is not None:
            lines.append(f"QAT vs PTQ on the same graph: mAP50-95 **{qat.map50_95_gain_over_ptq:+.4f}**, mAP50 "
                         f"{qat.map50_gain_over_ptq:+.4f}"
                         + (f"; latency {timing.latency_ratio_qat_vs_ptq:.3f}x PTQ's."
                            if timing and timing.latency_ratio_qat_vs_ptq is not None else "."))
        if qat.warning:
            lines.append(f"> **warning:** {qat.warning}")
    fl = rep.float_layers or []
    if rep.layers:
        lines += ["", f"Layers kept float: {len(fl)} of {rep.layers}" + (": " + ", ".join(f"`{x}`" for x in fl)
                                                                         if fl else ".")]
    sa = rep.speed_aware
    if sa and sa.float_no_slower:
        lines += ["", f"Speed-aware: {len(sa.float_no_slower)} layers ran no slower in float (profiled); keeping "
                  f"them float measured {_f(sa.with_float_ms, '.2f')} ms vs {_f(sa.all_int8_ms, '.2f')} "
                  f"ms all INT8: {'adopted' if sa.adopted else 'not adopted'}."]
    if len(rep.trials) > 1:
        lines += ["", "| layers float | mAP50-95 | mAP50 |", "|---|---|---|"]
        lines += [f"| {tr.float_layers} | {_f(tr.score.map50_95 if tr.score else None)} | "
                  f"{_f(tr.score.map50 if tr.score else None)} |" for tr in rep.trials]
    sens = rep.sensitivity
    if sens is not None:
        lines += ["", "## Sensitivity: each layer alone in INT8", "",
                  f"Output SQNR on the detections the fp32 model scores above 0.05 ({sens.images} calibration "
                  f"images); all layers INT8: {_f(sens.full_int8_sqnr_db, '.1f')} dB.", "", sens.table(30)]
    return "\n".join(lines) + "\n"


def write_report(rep: QuantizeReport, artifact: Path) -> None:
    """``<artifact>.json`` (``rep.to_dict()``), ``<artifact>.md`` and, with the sensitivity analysis, its PNG."""
    artifact = Path(artifact)
    if rep.sensitivity is not None:
        from .sensitivity import plot

        png = artifact.with_name(artifact.stem + "_sensitivity.png")
        plot(rep.sensitivity, png)
        rep.sensitivity_png = str(png)
    write_json(artifact.with_suffix(".json"), rep.to_dict(), quiet=True)
    text = markdown(rep)
    atomic_write(artifact.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))
