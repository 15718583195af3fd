"""The quantization report: ``<artifact>.json`` and ``<artifact>.md`` (+ ``<artifact>_sensitivity.png``)."""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_write, write_json


def _f(v, fmt=".4f") -> str:
    return "-" if v is None else format(v, fmt)


def artifact_kind(backend: str) -> str:
    """What the INT8 artifact of ``backend`` is called: "IR" for OpenVINO, "ONNX" otherwise."""
    return "IR" if backend == "openvino" else "ONNX"


def markdown(rep: dict, sens=None) -> str:
    fp, q = rep.get("fp32") or {}, rep.get("int8") or {}
    lat = rep.get("latency") or {}
    qat, ptq = rep.get("qat"), rep.get("ptq")
    # with QAT, PTQ of the same graph (same float layers) is a third column: the like-for-like comparison
    kind = artifact_kind(rep.get("backend", ""))
    cols = [("fp32 ONNX", fp, "fp32"), (f"INT8 {kind}" + (" (QAT)" if qat else ""), q, "int8")]
    if ptq:
        cols.append((f"INT8 {kind} (PTQ, same graph)", ptq, "ptq"))

    def row(name, fn):
        return f"| {name} | " + " | ".join(fn(r, k) for _, r, k in cols) + " |"

    lines = [f"# INT8 quantization: {rep['model']}", "",
             f"Backend {rep['backend']}, input {rep['imgsz']} px, calibration: {rep['calibration']['images']} images "
             f"of {rep['calibration']['source']} ({rep['calibration']['method']}, "
             f"{rep['calibration']['preprocess']}).", "",
             "| | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|",
             row("mAP50-95", lambda r, k: _f(r.get("map50_95"))),
             row("mAP50", lambda r, k: _f(r.get("map50"))),
             row("p50 latency, model only (ms)", lambda r, k: _f(lat.get(k, {}).get("p50_ms"), ".2f")),
             row("size (MB)", lambda r, k: _f(rep["size_mb"].get("int8" if k == "ptq" else k), ".2f")), ""]
    if "map50_95_drop" in rep:
        lines.append(f"mAP50-95 drop **{rep['map50_95_drop']:.4f}**, mAP50 drop {rep['map50_drop']:.4f} "
                     f"({fp.get('images')} val images, {fp.get('mode')} letterbox).")
    if "latency_ratio" in rep:
        lines.append(f"INT8 latency = **{rep['latency_ratio']:.3f}x** fp32 (speed-up {rep['speedup']:.2f}x; "
                     f"medians of interleaved rounds, same run, {lat['int8'].get('threads') or 'default'} threads).")
        if "latency_ratio_vs_fp32_openvino" in rep:
            lines.append(f"The fp32 ONNX column is ONNX Runtime; against the fp32 OpenVINO IR "
                         f"({lat['fp32_openvino']['p50_ms']:.2f} ms) INT8 is "
                         f"{rep['latency_ratio_vs_fp32_openvino']:.3f}x.")
        m = rep.get("machine") or {}
        lines.append(f"Machine: {m.get('cpu', '?')}; VNNI: {m.get('vnni', '?')}.")
    if qat:
        tuned = qat.get("fp32_tuned") or {}
        lines += ["", f"QAT: {qat['epochs']} epoch(s) on {qat.get('data', 'the --data train split')}"
                  + (f" + {', '.join(qat['unlabeled'])} (no labels)" if qat.get("unlabeled") else "")
                  + f", lr {qat['lr0']:g}, the float model as teacher, {qat['seconds'] / 60:.1f} min. "
                  f"The tuned float weights score mAP50-95 {_f(tuned.get('map50_95'))} in fp32."]
        if ptq and "map50_95_gain_over_ptq" in qat:
            lines.append(f"QAT vs PTQ on the same graph: mAP50-95 **{qat['map50_95_gain_over_ptq']:+.4f}**, mAP50 "
                         f"{qat['map50_gain_over_ptq']:+.4f}"
                         + (f"; latency {rep['latency_ratio_qat_vs_ptq']:.3f}x PTQ's."
                            if "latency_ratio_qat_vs_ptq" in rep else "."))
        if qat.get("warning"):
            lines.append(f"> **warning:** {qat['warning']}")
    fl = rep.get("float_layers") or []
    if rep.get("layers"):
        lines += ["", f"Layers kept float: {len(fl)} of {rep['layers']}" + (": " + ", ".join(f"`{x}`" for x in fl)
                                                                          if fl else ".")]
    sa = rep.get("speed_aware")
    if sa and sa.get("float_no_slower"):
        lines += ["", f"Speed-aware: {len(sa['float_no_slower'])} layers ran no slower in float (profiled); keeping "
                  f"them float measured {_f(sa.get('with_float_ms'), '.2f')} ms vs {_f(sa.get('all_int8_ms'), '.2f')} "
                  f"ms all INT8: {'adopted' if sa['adopted'] else 'not adopted'}."]
    if len(rep.get("trials", [])) > 1:
        lines += ["", "| layers float | mAP50-95 | mAP50 |", "|---|---|---|"]
        lines += [f"| {t['float_layers']} | {_f(t.get('map50_95'))} | {_f(t.get('map50'))} |" for t in rep["trials"]]
    if sens is not None and rep.get("sensitivity"):
        lines += ["", "## Sensitivity: each layer alone in INT8", "",
                  f"Output SQNR on the detections the fp32 model scores above 0.05 ({sens.images} calibration "
                  f"images); all layers INT8: {_f(sens.full_int8_sqnr_db, '.1f')} dB.", "", sens.table(30)]
    return "\n".join(lines) + "\n"


def write_report(rep: dict, artifact: Path, sens=None) -> None:
    artifact = Path(artifact)
    if sens is not None and rep.get("sensitivity"):
        from .sensitivity import plot

        png = artifact.with_name(artifact.stem + "_sensitivity.png")
        plot(sens, png)
        rep["sensitivity_png"] = str(png)
    write_json(artifact.with_suffix(".json"), rep, quiet=True)
    text = markdown(rep, sens)
    atomic_write(artifact.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))
