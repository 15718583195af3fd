"""The quantization report: ``<artifact>.json`` and ``<artifact>.md`` (+ ``<artifact>_sensitivity.png``)."""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_write, write_json


def _f(v, fmt=".4f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(rep: dict, sens=None) -> str:
    fp, q = rep.get("fp32") or {}, rep.get("int8") or {}
    lat = rep.get("latency") or {}
    lines = [f"# INT8 quantization: {rep['model']}", "",
             f"Backend {rep['backend']}, input {rep['imgsz']} px, calibration: {rep['calibration']['images']} images "
             f"of {rep['calibration']['source']} ({rep['calibration']['method']}, "
             f"{rep['calibration']['preprocess']}).", "",
             "| | fp32 ONNX | INT8 ONNX |", "|---|---|---|",
             f"| mAP50-95 | {_f(fp.get('map50_95'))} | {_f(q.get('map50_95'))} |",
             f"| mAP50 | {_f(fp.get('map50'))} | {_f(q.get('map50'))} |",
             f"| p50 latency, model only (ms) | {_f(lat.get('fp32', {}).get('p50_ms'), '.2f')} | "
             f"{_f(lat.get('int8', {}).get('p50_ms'), '.2f')} |",
             f"| size (MB) | {_f(rep['size_mb']['fp32'], '.2f')} | {_f(rep['size_mb']['int8'], '.2f')} |", ""]
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
