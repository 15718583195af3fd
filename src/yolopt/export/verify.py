"""Check an exported artifact against the PyTorch model it came from.

Both run on the same inputs; we report the max |diff| of the raw ``(B,N,5+nc)`` outputs (or of
matched final detections for ``--nms`` artifacts) and the detection agreement: the share of
detections (after NMS) that find a same-class partner with IoU >= 0.5 in the other model's list.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import ExportError
from ..ops.boxes import box_iou
from ..ops.nms import NMSOptions, non_max_suppression
from ..ops.postprocess import split_end2end

log = logging.getLogger("yolopt")

# Limits per precision (docs/deploy.md, "Every export is verified"):
#   score      max |diff| of objectness and class probabilities;
#   box_abs,   a box coordinate (input pixels) passes when |diff| <= box_abs + box_rel x |value|, where
#   box_rel    |value| is the PyTorch coordinate: float rounding differs between kernels (AVX2, AVX-512,
#              GPU), and large boxes legitimately differ more in absolute terms;
#   agreement  minimum share of post-NMS detections found in the other model's list.
# Measured on yolov5n at 256 and 640 px (synthetic scene and bus.jpg), worst coordinate over all anchors:
#   fp32  ONNX Runtime / OpenVINO vs PyTorch (AVX2): boxes <= 2.2e-3 px (<= 3% of the fp32 limit), scores <= 7e-6;
#   fp16  PyTorch fp16 and OpenVINO FP16 weights: boxes <= 3.2 px (up to 0.61 of the fp16 limit), scores <= 8e-3;
#   bf16  PyTorch with every op in bf16: boxes 8-27 px (up to 0.76 of the bf16 limit: large, low-confidence
#         anchors), scores <= 0.062, agreement >= 0.979.
# A model silently running in fp16 or bf16 exceeds the fp32 box limit 13-400 times.
#   int8  (formats that quantize while exporting: litert) the raw outputs of low-confidence anchors differ by
#         design (yolov5n at 640 on bus.jpg: up to 280 px and 0.42 on anchors scored below 0.01), so the raw
#         limits only catch a broken graph (boxes off by more than the input size); what is checked is the
#         detections at a deployment threshold (VERIFY_NMS_INT8, conf 0.25): yolov5n at 640, 4 of 4 on bus.jpg.
#         An INT8 graph that lost its scores (one int8 scale shared by boxes and scores) finds none and fails.
@dataclass(frozen=True)
class Tolerance:
    score: float
    box_abs: float
    box_rel: float
    agreement: float


TOLERANCE: dict[str, Tolerance] = {
    "fp32": Tolerance(score=1e-3, box_abs=0.05, box_rel=1e-4, agreement=0.97),
    "fp16": Tolerance(score=0.03, box_abs=2.0, box_rel=2e-2, agreement=0.85),
    "bf16": Tolerance(score=0.08, box_abs=4.0, box_rel=0.2, agreement=0.80),
    "int8": Tolerance(score=1.0, box_abs=640.0, box_rel=1.0, agreement=0.75),
}


def tolerance(precision: str) -> Tolerance:
    """The verification limits for ``precision`` (a key of ``TOLERANCE``)."""
    try:
        return TOLERANCE[precision]
    except KeyError:
        raise ExportError(f"no verification tolerance for precision '{precision}' "
                          f"(known: {', '.join(TOLERANCE)})") from None


@dataclass
class VerifyResult:
    max_box_diff: float  # box coordinates, input pixels
    max_score_diff: float  # objectness and class probabilities
    agreement: float
    detections_torch: int
    detections_export: int
    shapes: list = field(default_factory=list)
    precision: str = "fp32"
    atol: float = 0.0  # limit on scores
    box_atol: float = 0.0  # limit on box coordinates: box_atol px + box_rtol x |value|
    box_rtol: float = 0.0
    box_ratio: float = 0.0  # worst |diff| / (box_atol + box_rtol x |value|) over all coordinates; <= 1 passes
    min_agreement: float = 0.0
    passed: bool = False
    sources: list = field(default_factory=list)  # the verification images, or ["generated scene"]
    problem: str = ""  # why it failed when no limit was exceeded (nothing to compare)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.problem:
            return self.problem
        return (f"{self.precision}: boxes max |diff| {self.max_box_diff:.3g} px (limit {self.box_atol:g} px + "
                f"{self.box_rtol:g} x |value|, worst {self.box_ratio:.2f} of it), scores {self.max_score_diff:.3g} "
                f"(limit {self.atol:g}); detection agreement {self.agreement:.3f} (minimum {self.min_agreement:g}; "
                f"{self.detections_torch} PyTorch / {self.detections_export} exported detections)")


GENERATED = "generated scene"
# the end of a "nothing to compare" problem; callers that know whether the model detects anything elsewhere
# replace it with the answer
NOTHING_HINT = ("The PyTorch model itself found nothing: if these images hold its classes, the model is the "
                "problem (check it with val); otherwise give verification images with objects")


def verify_inputs(imgsz: tuple[int, int], batch: int, seed: int = 0, images: list | None = None) -> torch.Tensor:
    """A deterministic batch: letterboxed real images when given, else a synthetic scene.

    The synthetic scene (smooth gradients with random coloured rectangles and noise) triggers
    hundreds of low-confidence detections (conf < 0.1), enough to compare raw outputs and post-NMS
    lists at conf 0.01 but none at a deployment threshold: see :func:`scene_with_detections`.
    """
    h, w = imgsz
    if images:
        from ..data.images import read_image
        from ..data.preprocess import preprocess

        ims = []
        for k in range(batch):
            im = read_image(images[k % len(images)])
            if im is None:
                raise ExportError(f"{images[k % len(images)]}: unreadable image for verification")
            ims.append(im)
        return preprocess(ims, (h, w), mode="square")[0]
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x = torch.stack([xx, yy, (xx + yy) / 2])[None].repeat(batch, 1, 1, 1) * 0.6 + 0.2
    for b in range(batch):
        for _ in range(12):
            y0, x0 = int(torch.randint(0, h - 16, (1,), generator=g)), int(torch.randint(0, w - 16, (1,), generator=g))
            hh = int(torch.randint(8, max(9, h // 3), (1,), generator=g))
            ww = int(torch.randint(8, max(9, w // 3), (1,), generator=g))
            x[b, :, y0:y0 + hh, x0:x0 + ww] = torch.rand(3, 1, 1, generator=g)
    x += 0.05 * torch.randn(x.shape, generator=g)
    return x.clamp_(0, 1)


def _scores(model, x: torch.Tensor) -> torch.Tensor:
    """(B, N) best class score (objectness x class probability) of every anchor, differentiable."""
    maps = model.detect.raw_maps(model.neck_features(x))
    return torch.cat([(m[..., 4:5].sigmoid() * m[..., 5:].sigmoid()).amax(-1).flatten(1) for m in maps], 1)


def scene_with_detections(model, x: torch.Tensor, conf: float, iou: float = 0.45, want: int = 3,
                          steps: int = 30, lr: float = 0.1) -> torch.Tensor:
    """Change the synthetic scene ``x`` until ``model`` finds ``want`` objects in each image well above ``conf``.

    Gradient ascent on the input pixels (through a sigmoid, so they stay in [0, 1]) raises the most
    confident anchors' scores to (1 + conf) / 2: far enough from the threshold that an artifact with
    NMS baked in at ``conf`` and the PyTorch model must both report them. Deterministic for a given
    ``x``; used only when no real images are available. Returns ``x`` unchanged for a model without
    the YOLOv5 head.
    """
    if not (hasattr(model, "neck_features") and hasattr(getattr(model, "detect", None), "raw_maps")):
        return x
    target = min(0.9, (1 + conf) / 2)
    z = torch.logit(x.detach().clamp(0.02, 0.98)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for step in range(steps):
        with torch.enable_grad():
            s = _scores(model, torch.sigmoid(z))
            loss = -s.topk(min(50, s.shape[1]), dim=1).values.mean()
            (z.grad,) = torch.autograd.grad(loss, z)
        opt.step()
        if step % 3 == 2:
            with torch.no_grad():
                found = non_max_suppression(model(torch.sigmoid(z)).float(), target, iou)
            if min(len(d) for d in found) >= want:
                break
    return torch.sigmoid(z).detach()


def _match(a: torch.Tensor, b: torch.Tensor, tol: Tolerance, ref_is_a: bool) -> tuple[int, float, float, float]:
    """Greedy same-class IoU>=0.5 matches of ``a`` rows in ``b``.

    Returns (count, max |diff| of boxes, max |diff| / box limit, max |diff| of scores).
    """
    if not len(a) or not len(b):
        return 0, 0.0, 0.0, 0.0
    iou = box_iou(a[:, :4], b[:, :4])
    iou[a[:, 5:6] != b[None, :, 5]] = 0
    used = torch.zeros(len(b), dtype=torch.bool)
    matched, bdiff, ratio, sdiff = 0, 0.0, 0.0, 0.0
    for i in range(len(a)):
        cand = iou[i].clone()
        cand[used] = 0
        j = int(cand.argmax())
        if cand[j] >= 0.5:
            used[j] = True
            matched += 1
            d = (a[i, :4] - b[j, :4]).abs()
            ref = a[i, :4] if ref_is_a else b[j, :4]
            bdiff = max(bdiff, float(d.max()))
            ratio = max(ratio, float((d / (tol.box_abs + tol.box_rel * ref.abs())).max()))
            sdiff = max(sdiff, float((a[i, 4] - b[j, 4]).abs()))
    return matched, bdiff, ratio, sdiff


def _agreement(ref_hi, ref_lo, exp_hi, exp_lo, tol: Tolerance) -> tuple[float, float, float, float]:
    """Share of each side's detections (at the threshold) found in the other's (at half the threshold).

    The lower threshold on the other side keeps boxes whose score sits right at the threshold
    from counting as disagreements. Returns (agreement, max |diff| of matched boxes, max |diff| / box
    limit, max |diff| of matched scores).
    """
    m1, b1, r1, s1 = _match(ref_hi, exp_lo, tol, ref_is_a=True)
    m2, b2, r2, s2 = _match(exp_hi, ref_lo, tol, ref_is_a=False)
    a1 = m1 / len(ref_hi) if len(ref_hi) else 1.0
    a2 = m2 / len(exp_hi) if len(exp_hi) else 1.0
    return min(a1, a2), max(b1, b2), max(r1, r2), max(s1, s2)


# NMS of the compared detections: a low threshold, so the agreement covers more than the confident boxes
VERIFY_NMS = NMSOptions(conf=0.01, iou=0.45, max_det=100)
# int8: the detections a deployment keeps (below 0.25 the int8 scores are too coarse to agree box for box)
VERIFY_NMS_INT8 = NMSOptions(conf=0.25, iou=0.45, max_det=100)


@dataclass(frozen=True)
class VerifyOptions:
    """How :func:`verify` compares. ``batch``: images per call; ``dynamic``: also a larger batch and a
    rectangular input. ``nms``: the NMS of the compared detections (an artifact with NMS baked in uses its
    own). ``atol`` overrides the precision's limit on scores, ``min_agreement`` the detection agreement."""

    batch: int = 1
    dynamic: bool = False
    nms: NMSOptions = VERIFY_NMS
    atol: float | None = None
    min_agreement: float | None = None


def verify(backend, model, imgsz: tuple[int, int], precision: str = "fp32", options: VerifyOptions | None = None, *,
           images: list | None = None, raise_on_fail: bool = True) -> VerifyResult:
    """Run ``backend`` (a runtime Backend) and ``model`` (fp32 PyTorch) on the same inputs and compare.

    The limits are ``TOLERANCE[precision]``, adjusted by ``options`` (:class:`VerifyOptions`).
    ``images``: real images to compare on (the export command passes the
    shared sample images when it finds them); without them a synthetic scene, which for an artifact
    with NMS baked in is first made to produce detections above its threshold
    (:func:`scene_with_detections`). When neither side detects anything the result fails:
    0 = 0 proves nothing about the artifact's boxes.
    """
    opt = options or VerifyOptions()
    batch, dynamic = opt.batch, opt.dynamic
    conf, iou, max_det = opt.nms.conf, opt.nms.iou, opt.nms.max_det
    tol = tolerance(precision)
    atol = tol.score if opt.atol is None else float(opt.atol)
    min_agreement = tol.agreement if opt.min_agreement is None else float(opt.min_agreement)
    shapes = [(batch, *imgsz)]
    if dynamic:  # also a different batch and a rectangular shape
        s = int(model.stride.max())
        shapes.append((batch + 1, imgsz[0], max(s, imgsz[1] - 2 * s)))
    max_bdiff = max_sdiff = ratio = 0.0
    agree, n_t, n_e = 1.0, 0, 0
    for k, (b, h, w) in enumerate(shapes):
        x = verify_inputs((h, w), b, seed=k, images=images)
        if not images and backend.end2end:
            x = scene_with_detections(model, x, float((backend.nms or {}).get("conf", conf)),
                                      float((backend.nms or {}).get("iou", iou)))
        with torch.inference_mode():
            ref = model(x).float()
        try:
            out = backend(x)
        except Exception as e:  # noqa: BLE001 - any runtime failure is a failed export
            raise ExportError(f"{backend.path}: verification run failed at input {b}x3x{h}x{w}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
        if backend.end2end:
            nms = backend.nms or {}
            c, i_, md = nms.get("conf", conf), nms.get("iou", iou), nms.get("max_det", max_det)
            exp_hi = split_end2end(out, b)
            exp_lo = exp_hi
            ref_hi = non_max_suppression(ref, min(1.0, c * 1.2), i_, max_det=md)
            ref_lo = non_max_suppression(ref, c / 2, i_, max_det=2 * md)
        else:
            if out.shape != ref.shape:
                raise ExportError(f"{backend.path}: output shape {tuple(out.shape)} differs from PyTorch's "
                                  f"{tuple(ref.shape)}")
            if not torch.isfinite(out).all():
                max_bdiff = ratio = max_sdiff = float("inf")
            else:
                d = (out - ref).abs()
                max_bdiff = max(max_bdiff, float(d[..., :4].max()))
                ratio = max(ratio, float((d[..., :4] / (tol.box_abs + tol.box_rel * ref[..., :4].abs())).max()))
                max_sdiff = max(max_sdiff, float(d[..., 4:].max()))
            ref_hi = non_max_suppression(ref, conf, iou, max_det=max_det)
            ref_lo = non_max_suppression(ref, conf / 2, iou, max_det=2 * max_det)
            exp_hi = non_max_suppression(out, conf, iou, max_det=max_det)
            exp_lo = non_max_suppression(out, conf / 2, iou, max_det=2 * max_det)
        for k2 in range(b):
            a, bd, r, sd = _agreement(ref_hi[k2], ref_lo[k2], exp_hi[k2], exp_lo[k2], tol)
            agree = min(agree, a)
            n_t += len(ref_hi[k2])
            n_e += len(exp_hi[k2])
            if backend.end2end:
                max_bdiff, ratio, max_sdiff = max(max_bdiff, bd), max(ratio, r), max(max_sdiff, sd)
    res = VerifyResult(max_bdiff, max_sdiff, agree, n_t, n_e, [list(s) for s in shapes], precision, atol,
                       tol.box_abs, tol.box_rel, ratio, min_agreement,
                       sources=[str(p) for p in images] if images else [GENERATED])
    res.passed = bool(np.isfinite(ratio) and ratio <= 1.0 and max_sdiff <= atol and agree >= min_agreement)
    if n_t == 0 and n_e == 0:
        c = (backend.nms or {}).get("conf", conf) if backend.end2end else conf
        res.passed = False
        res.problem = (f"0 PyTorch / 0 exported detections at conf {c:g} on {', '.join(res.sources)}: nothing to "
                       f"compare. {NOTHING_HINT}")
    if not res.passed and raise_on_fail:
        raise ExportError(f"{backend.path}: verification FAILED: {res.summary()}")
    return res
