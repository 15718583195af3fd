"""Which layers stay float in the ONNX Runtime INT8 model: for speed (:func:`speed_aware`) and for accuracy
(:func:`accuracy_control`, a bisection over the sensitivity ranking).

``build(float_layers, name) -> Path`` writes the INT8 model with those layers float into the work folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .result import Score, SpeedAware, Trial
from .spec import QuantizeError, QuantizeSpec
from .steps import score

log = logging.getLogger("yolopt")

Build = Callable[[list, str], Path]


def speed_aware(fp32: Path, q_path: Path, groups: list[str], spec: QuantizeSpec,
                build: Build) -> tuple[list[str], Path, SpeedAware]:
    """Profile the fp32 and the INT8 model per layer; keep float the layers whose float kernels are no
    slower, if the resulting model is measured faster than the all-INT8 one. Returns (float layers, path,
    what was measured)."""
    from ..bench import interleaved
    from .onnx_qdq import layer_times

    t0 = time.perf_counter()
    t_f = layer_times(fp32, groups, spec.imgsz, spec.threads)
    t_q = layer_times(q_path, groups, spec.imgsz, spec.threads)
    free = [g for g in groups if t_q[g] > 0 and t_f[g] <= t_q[g]]
    info = SpeedAware(layer_ms={g: {"fp32": round(t_f[g], 4), "int8": round(t_q[g], 4)} for g in groups},
                      float_no_slower=free)
    if not free:
        return [], q_path, info
    cand = build(free, "int8_free.onnx")
    lat = interleaved({"int8": q_path, "mixed": cand}, spec.imgsz, spec.threads, rounds=3)
    info.all_int8_ms, info.with_float_ms = lat["int8"]["p50_ms"], lat["mixed"]["p50_ms"]
    info.seconds = round(time.perf_counter() - t0, 1)
    if lat["mixed"]["p50_ms"] < lat["int8"]["p50_ms"]:
        info.adopted = True
        log.info("speed: %d layers run no slower in float (%s); keeping them float: %.2f -> %.2f ms", len(free),
                 ", ".join(free[:6]) + (" ..." if len(free) > 6 else ""), lat["int8"]["p50_ms"], lat["mixed"]["p50_ms"])
        return free, cand, info
    log.info("speed: keeping %d float-no-slower layers float did not make the model faster (%.2f vs %.2f ms)",
             len(free), lat["mixed"]["p50_ms"], lat["int8"]["p50_ms"])
    return [], q_path, info


def accuracy_control(spec: QuantizeSpec, base: Score, free: list[str], ranking: Sequence[str],
                     start: tuple[Path, Trial], build: Build, n_layers: int
                     ) -> tuple[list[str], Path, Score, list[Trial]]:
    """Keep float, besides ``free``, the smallest prefix of ``ranking`` (most sensitive first) whose INT8
    model is within ``spec.max_map_drop`` of ``base`` (bisection; every model tried is a trial).

    ``start``: the model with only ``free`` float, and its scored trial. Returns (float layers, path, score,
    trials). Raises when no prefix short of the whole ranking meets the budget."""
    path, first = start
    trials = [first]
    if base.map50_95 - first.score.map50_95 <= spec.max_map_drop:
        return list(free), path, first.score, trials
    rank = [g for g in ranking if g not in free]
    lo, hi = 0, len(rank)  # lo fails; hi (everything float) meets any budget
    best = None
    while hi - lo > 1:
        k = (lo + hi) // 2
        path_k = build(free + rank[:k], f"int8_k{k}.onnx")
        r = score(path_k, spec)
        trials.append(Trial(len(free) + k, r))
        log.info("INT8 with %d/%d layers float: mAP50-95 %.4f (drop %.4f)", len(free) + k, n_layers,
                 r.map50_95, base.map50_95 - r.map50_95)
        if base.map50_95 - r.map50_95 <= spec.max_map_drop:
            hi, best = k, (path_k, r)
        else:
            lo = k
    if best is None:
        raise QuantizeError(f"no INT8 model within the mAP drop budget {spec.max_map_drop}: even with "
                            f"{n_layers - 1} of {n_layers} layers float the drop is larger; nothing written",
                            fields=("max_map_drop",))
    return free + rank[:hi], best[0], best[1], trials
