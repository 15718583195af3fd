"""Plain-words bottleneck findings, also as structured data an optimize pipeline can consume.

Each finding: ``{"kind", "target", "metric", "value", "share", "message", "suggestion"}`` where
``kind`` is one of layer / memory_bound / stage / op_type / pipeline / nms / efficiency /
deployment / scaling, ``target`` names what it is about (``model.8``, ``nms``, ``backbone``...),
and ``share`` (0-1) is its fraction of the relevant total, used to rank findings.
"""

from __future__ import annotations

_COMPUTE_TIP = ("compute-bound: fewer FLOPs help - channel pruning or a narrower width, a smaller input size, "
                "or int8 quantization (VNNI/AMX kernels)")
_MEMORY_TIP = ("memory-bound: fewer bytes help - int8/fp16 activations, fusing it with neighbours (e.g. conv+act, "
               "channels-last layouts in OpenVINO/ONNX Runtime), or a smaller input size")
_TYPE_TIPS = {
    "Detect": "most of Detect's time is the box decode (sigmoid, grid/anchor arithmetic and a concat over every "
              "anchor), elementwise work the FLOP count barely sees: run it inside an optimized runtime's fused graph, "
              "or export without decode and decode only boxes that pass the confidence threshold",
    "SPPF": "SPPF is three chained max-pools plus a concat: memory traffic, not FLOPs - fused pooling in an optimized "
            "runtime or a smaller input size help",
    "Concat": "concat is a pure copy: runtimes that write producers straight into the concat buffer remove it",
    "nn.Upsample": "nearest upsampling is a pure copy: a runtime that fuses it into the next conv removes it",
}
_STAGE_TIPS = {
    "decode": "image decode is CPU work outside the model: decode in a separate thread/process, use smaller JPEGs, "
              "or libjpeg-turbo / cv2.IMREAD_REDUCED_COLOR_2 when the source is much larger than the input size",
    "preprocess": "letterbox + normalise: resize on uint8 before converting to float, reuse buffers, or fold the "
                  "/255 into the first conv",
    "inference": "inference dominates: see the layer findings (pruning, quantization, an optimized runtime)",
    "nms": "NMS grows with the number of candidate boxes: raise the confidence threshold, cap candidates (max_nms), "
           "use a compiled NMS (torchvision / runtime-side NMS), or class-agnostic NMS",
    "postprocess": "box scaling is cheap; if it shows up, batch it on the whole tensor",
}


def _ranges(indices: list[int]) -> list[tuple[int, int]]:
    out = []
    for i in sorted(indices):
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _fmt_range(a: int, b: int) -> str:
    return f"layer {a}" if a == b else f"layers {a}-{b}"


def find_bottlenecks(report: dict, top: int = 10) -> list[dict]:
    f: list[dict] = []
    layers = report.get("layers") or []

    # 1. top-k layers
    for r in sorted(layers, key=lambda r: -(r.get("latency_ms") or 0))[:top]:
        bound = r.get("bound")
        tip = _COMPUTE_TIP if bound == "compute" else _MEMORY_TIP if bound == "memory" else ""
        pct = r.get("pct_of_peak")
        roof = r.get("pct_of_roof")
        if roof is not None and roof < 30:
            tip = (f"{bound}-bound by arithmetic intensity but only at {roof:.0f}% of its roofline limit: per-op "
                   "overhead and kernel efficiency dominate (small maps, many small ops) - op fusion in an optimized "
                   "runtime (OpenVINO / ONNX Runtime) helps before cutting FLOPs; then " + tip.split(": ", 1)[-1])
        if r["type"] in _TYPE_TIPS:
            tip = _TYPE_TIPS[r["type"]] + "; " + tip
        f.append({
            "kind": "layer", "target": r["name"], "metric": "latency_ms", "value": r["latency_ms"], "share": r["share"],
            "type": r["type"], "stage": r["stage"], "bound": bound, "pct_of_roof": roof,
            "message": f"{r['name']} ({r['type']}, {r['stage']}) takes {100 * r['share']:.1f}% of model time "
                       f"({r['latency_ms']:.2f} ms, {r['flops'] / 1e6:.0f} MFLOPs"
                       + (f", {pct:.0f}% of peak" if pct is not None else "") + ")",
            "suggestion": tip,
        })

    # 2. contiguous memory-bound ranges
    mem = [r["index"] for r in layers if r.get("bound") == "memory"]
    for a, b in _ranges(mem):
        sel = [r for r in layers if a <= r["index"] <= b]
        share = sum(r["share"] for r in sel)
        if share < 0.02:
            continue
        f.append({
            "kind": "memory_bound", "target": [r["name"] for r in sel], "metric": "share", "value": share, "share": share,
            "message": f"{_fmt_range(a, b)} ({', '.join(sorted({r['type'] for r in sel}))}) "
                       f"{'is' if a == b else 'are'} memory-bound: "
                       f"{100 * share:.1f}% of model time below the bandwidth roof",
            "suggestion": _MEMORY_TIP,
        })

    # 3. stages backbone / neck / head
    for name, g in (report.get("groups", {}).get("stage") or {}).items():
        f.append({
            "kind": "stage", "target": name, "metric": "latency_ms", "value": g["latency_ms"], "share": g["share"],
            "message": f"the {name} is {100 * g['share']:.1f}% of model time ({g['latency_ms']:.2f} ms, "
                       f"{g['flops'] / 1e9:.2f} GFLOPs, {g['params']:,} params)",
            "suggestion": "prune or narrow this stage first" if g["share"] >= 0.4 else "",
        })

    # 4. op types
    types = report.get("groups", {}).get("type") or {}
    if types:
        name, g = next(iter(types.items()))
        f.append({
            "kind": "op_type", "target": name, "metric": "latency_ms", "value": g["latency_ms"], "share": g["share"],
            "message": f"{name} layers ({g['layers']}) take {100 * g['share']:.1f}% of model time",
            "suggestion": "",
        })

    # 5. pipeline stages and NMS
    pipe = report.get("pipeline")
    if pipe:
        for key in ("deploy", "eval"):
            p = pipe[key]
            stage, share = max(p["shares"].items(), key=lambda kv: kv[1])
            for st, sh in p["shares"].items():
                if st == stage or (st in ("nms", "decode", "preprocess") and sh >= 0.10):
                    f.append({
                        "kind": "pipeline", "target": st, "conf": p["conf"], "metric": "ms",
                        "value": p["stages_ms"][st], "share": sh,
                        "message": f"{st} is {100 * sh:.0f}% of end-to-end time at conf {p['conf']:g} "
                                   f"({p['stages_ms'][st]:.2f} of {p['total_ms']:.2f} ms per image)",
                        "suggestion": _STAGE_TIPS.get(st, ""),
                    })
        curve = pipe.get("nms_vs_candidates") or []
        if len(curve) >= 2:
            lo, hi = curve[0], curve[-1]
            if hi["candidates"] > lo["candidates"]:
                slope = (hi["nms_ms"] - lo["nms_ms"]) / (hi["candidates"] - lo["candidates"]) * 1000
                f.append({
                    "kind": "nms", "target": "nms", "metric": "ms_per_1000_candidates", "value": slope,
                    "share": pipe["eval"]["shares"]["nms"],
                    "message": f"NMS goes from {lo['nms_ms']:.2f} ms ({lo['candidates']} candidates, conf {lo['conf']:g}) "
                               f"to {hi['nms_ms']:.2f} ms ({hi['candidates']} candidates, conf {hi['conf']:g}): "
                               f"about {slope:.2f} ms per 1000 candidates",
                    "suggestion": _STAGE_TIPS["nms"],
                })

    # 6. efficiency vs the machine
    if report.get("achieved_gflops") and report.get("machine"):
        pct = 100 * report["achieved_gflops"] / report["machine"]["peak_gflops"]
        f.append({
            "kind": "efficiency", "target": "model", "metric": "pct_of_peak", "value": pct, "share": 1 - pct / 100,
            "message": f"the whole model runs at {report['achieved_gflops']:.1f} GFLOP/s, {pct:.0f}% of this machine's "
                       f"measured peak ({report['machine']['peak_gflops']:.1f} GFLOP/s)",
            "suggestion": "low efficiency points at small/depthwise layers and activation traffic; an optimized runtime "
                          "(OpenVINO, ONNX Runtime) or int8 usually closes part of the gap" if pct < 50 else "",
        })

    # 7. deployment runtimes vs torch
    torch_ms = report.get("latency_ms_torch")
    for name, d in (report.get("deploy") or {}).items():
        if not isinstance(d, dict) or "latency_ms" not in d:
            continue
        lays = [r for r in d["layers"] if r["name"] != "other"]
        if lays:
            t = max(lays, key=lambda r: r["latency_ms"])
            msg = f"in {name}, {t['name']} is the slowest layer ({100 * t['share']:.1f}%, {t['latency_ms']:.2f} ms)"
            if torch_ms:
                msg += f"; whole model {d['latency_ms']:.2f} ms vs {torch_ms:.2f} ms in torch ({torch_ms / d['latency_ms']:.2f}x)"
            f.append({"kind": "deployment", "target": name, "metric": "latency_ms", "value": d["latency_ms"],
                      "share": t["share"], "layer": t["name"], "message": msg,
                      "suggestion": f"deploy with {name}" if torch_ms and d["latency_ms"] < 0.9 * torch_ms else ""})

    # 8. scaling
    sweep = [r for r in (report.get("sweep") or []) if "throughput_ips" in r]
    if sweep:
        best = max(sweep, key=lambda r: r["throughput_ips"])
        base = next((r for r in sweep if r["imgsz"] == best["imgsz"] and r["batch"] == 1), None)
        if base:
            gain = best["throughput_ips"] / base["throughput_ips"]
            f.append({"kind": "scaling", "target": f"{best['imgsz']}x{best['batch']}", "metric": "throughput_ips",
                      "value": best["throughput_ips"], "share": gain - 1,
                      "message": f"best throughput {best['throughput_ips']:.1f} img/s at imgsz {best['imgsz']} batch "
                                 f"{best['batch']}, {gain:.2f}x batch 1",
                      "suggestion": "batch requests when latency allows" if gain > 1.15 else
                                    "batching barely helps on this machine; keep batch 1 for latency"})
    return f
