"""The cost model of ``yolopt optimize``: how many seconds a candidate is expected to take, for the time budget.

A candidate is tried only when its estimate fits in what is left of the budget. Once the baseline is
measured, the estimates scale from its measured cost (``c0``: val + end-to-end benchmark of one variant);
the other numbers are per 640x640 image (scaled by input area) or fixed overheads.

Where the numbers come from: every constant below came in with the commit that introduced the candidate
it prices (``git log -S``: 9fabf4a "yolopt optimize: candidates within a time budget ...", and b7bfb3e
"quantize --qat ..." for QAT). Neither commit names a machine or a measurement, so they are estimated, not
measured; a wrong one only makes the search skip a candidate too early or overrun the budget a little.
"""

from __future__ import annotations

REF_IMGSZ = 640  # the per-image costs below are for this square input; other sizes scale by area

# --- measuring one variant (before the baseline has been measured) ------------------------------- 9fabf4a
VAL_FIXED_S = 6.0  # opening the artifact and listing the val split; estimated, not measured
VAL_S_PER_IMAGE = 0.06  # mAP val at batch 1, per val image at 640x640; estimated, not measured
BENCH_OVERHEAD_S = 8.0  # the benchmark child process: start, imports, warm-up, on top of bench_seconds;
#                         estimated, not measured
BASELINE_EXPORT_S = 12.0  # FP32 export + verification of the baseline; estimated, not measured

# --- floors and defaults on what the baseline measured ----------------------------------------- 9fabf4a
MIN_MEASURE_S = 10.0  # c0 is at least this (a cached or tiny baseline); estimated, not measured
MIN_EXPORT_S = 5.0  # an FP32 export costs at least this; estimated, not measured
DEFAULT_EXPORT_S = 10.0  # an export's cost when the baseline's artifact came from the cache; estimated, not measured
BUILT_FRACTION = 0.5  # share of a variant's estimate still to pay when its artifact is already built;
#                       estimated, not measured

# --- INT8 post-training quantization (yolopt quantize) ------------------------------------------- 9fabf4a
PTQ_MEASURES = 3  # c0 multiples: calibration passes + the PTQ report's val; estimated, not measured
PTQ_S_AT_REF = 90.0  # quantization itself at 640x640 (calibration, graph rewrite); estimated, not measured
PTQ_FIXED_S = 30.0  # export of the dynamic float graph before quantizing; estimated, not measured

# --- mixed precision (quantize with accuracy control) -------------------------------------------- 9fabf4a
# c0 multiples: the per-layer sensitivity vals (one per quantizable layer: 85 for yolov5n) and the bisection after
# them. Measured: yolov5n 640 on coco128 (128 val images), Intel Xeon (AVX-512 VNNI, 2 cores), 2026-12-07: the
# mixed-640 build took 1592 s where c0 was 21.6 s, i.e. (1592 - 180) / 21.6 = 65 c0. It was 12 (an estimate) until
# then, which priced that build at 7 min and took the 30-minute run to 36 min.
MIXED_MEASURES = 66
MIXED_S_AT_REF = 120.0  # calibration and graph rewrites at 640x640; estimated, not measured
MIXED_FIXED_S = 60.0  # export and set-up; estimated, not measured

# --- QAT (quantize --qat) -------------------------------------------------------------------------- b7bfb3e
QAT_S_PER_TRAIN_IMAGE = 0.8  # one distilled fake-quant epoch, per train image at 640x640; estimated, not measured
QAT_PTQ_MEASURES = 3  # c0 multiples: the PTQ the QAT run starts from; estimated, not measured
QAT_FIXED_S_AT_REF = 120.0  # calibration and export at 640x640; estimated, not measured

# --- pruning with a distilled fine-tune (yolopt prune) ------------------------------------------- 9fabf4a
PRUNE_S_PER_TRAIN_IMAGE = 0.35  # one distilled FP32 fine-tune epoch, per train image at 640x640; estimated,
#                                 not measured
PRUNE_FIXED_S = 60.0  # pruning itself (channel ranking, surgery) and the child process; estimated, not measured
PRUNE_DEFAULT_EPOCHS = 4  # fine-tune epochs when none are given (the same default as the build)


# --- after the search: confirmation, profiles, report, bundle ---------------------------------------------------
CONFIRM_ROUNDS = 5  # interleaved rounds of baseline + recommendation, each one end-to-end benchmark
FINISH_FIXED_S = 20.0  # the two per-layer runtime profiles, the report (plot, html) and the deploy bundle;
#                        estimated, not measured


def finish_s(bench_seconds: float, rounds: int | None = None) -> float:
    """What the run needs after its last variant: ``rounds`` (default ``CONFIRM_ROUNDS``) confirmation rounds
    (3 benchmarks each: the baseline, the best pipeline setting, the recommendation) and the rest. Variants are planned within the budget less this, so the whole run stays
    within its budget."""
    return 3 * (CONFIRM_ROUNDS if rounds is None else rounds) * bench_s(bench_seconds) + FINISH_FIXED_S


def confirm_rounds(left_s: float, bench_seconds: float, most: int | None = None, per_round: int = 2) -> int:
    """As many confirmation rounds (``per_round`` benchmarks each) as ``left_s`` seconds pay for (after the fixed
    finish), at most ``most`` (default ``CONFIRM_ROUNDS``); 0 when not even one fits."""
    per = per_round * bench_s(bench_seconds)
    return max(0, min(CONFIRM_ROUNDS if most is None else most, int((left_s - FINISH_FIXED_S) // per)))


def area(imgsz: int, ref: int = REF_IMGSZ) -> float:
    """Input area relative to ``ref`` x ``ref``."""
    return (imgsz / ref) ** 2


def val_s(n_images: int, imgsz: int) -> float:
    """Rough seconds of a batch-1 val on ``n_images`` at ``imgsz`` (before any val was measured)."""
    return VAL_FIXED_S + n_images * area(imgsz) * VAL_S_PER_IMAGE


def bench_s(bench_seconds: float) -> float:
    """Seconds of one end-to-end benchmark of ``bench_seconds`` timed seconds."""
    return bench_seconds + BENCH_OVERHEAD_S


def baseline_s(n_images: int, imgsz: int, bench_seconds: float) -> float:
    """Export, val and benchmark of the baseline."""
    return BASELINE_EXPORT_S + val_s(n_images, imgsz) + bench_s(bench_seconds)


def measure_s(seconds: float, build_seconds: float | None) -> float:
    """``c0``: what measuring one variant (val + benchmark) cost the baseline, without its build."""
    return max(MIN_MEASURE_S, seconds - (build_seconds or 0.0))


def export_s(build_seconds: float | None) -> float:
    """What one FP32 export costs, from the baseline's build."""
    return max(MIN_EXPORT_S, build_seconds or DEFAULT_EXPORT_S)


def still_to_pay(estimate_s: float, built: bool) -> float:
    """A variant's estimate, less the build when its artifact is already there."""
    return estimate_s * BUILT_FRACTION if built else estimate_s


def ptq_s(c0: float, base_imgsz: int) -> float:
    """INT8 PTQ and its measurement at the baseline's size (scale by area for other sizes)."""
    return PTQ_MEASURES * c0 + PTQ_S_AT_REF * area(base_imgsz) + PTQ_FIXED_S


def mixed_s(c0: float, base_imgsz: int) -> float:
    """Mixed precision at the baseline's size (scale by area for other sizes)."""
    return MIXED_MEASURES * c0 + MIXED_S_AT_REF * area(base_imgsz) + MIXED_FIXED_S


def qat_s(epochs: int, n_train: int, c0: float, scale: float) -> float:
    """QAT for ``epochs`` on ``n_train`` images; ``scale``: the input area relative to the baseline's."""
    return (epochs * (n_train * scale * QAT_S_PER_TRAIN_IMAGE + c0)
            + (QAT_PTQ_MEASURES * c0 + QAT_FIXED_S_AT_REF) * scale)


def prune_s(epochs: int, n_train: int, c0: float, imgsz: int) -> float:
    """Pruning, ``epochs`` of distilled fine-tune on ``n_train`` images, export and measurement."""
    epoch_s = n_train * area(imgsz) * PRUNE_S_PER_TRAIN_IMAGE + c0
    return epochs * epoch_s + PRUNE_FIXED_S + c0
