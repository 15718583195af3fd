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
from ..ops.nms import non_max_suppression

log = logging.getLogger("yolopt")

# Limits, keyed by half: max |diff| of objectness/class probabilities, of box coordinates as a
# fraction of the input size (0.0005 x 640 = 0.32 px), and the minimum detection agreement.
TOLERANCE = {False: (1e-3, 5e-4, 0.97), True: (0.03, 0.015, 0.85)}


@dataclass
class VerifyResult:
    max_abs_diff: float  # over the whole output (boxes in input pixels, scores)
    max_score_diff: float  # objectness and class probabilities only
    agreement: float
    detections_torch: int
    detections_export: int
    shapes: list = field(default_factory=list)
    atol: float = 0.0  # on scores
    box_atol: float = 0.0  # on box coordinates, pixels
    min_agreement: float = 0.0
    passed: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"max |diff| {self.max_abs_diff:.3g} (boxes, limit {self.box_atol:.3g} px), scores "
                f"{self.max_score_diff:.3g} (limit {self.atol:.3g}); detection agreement {self.agreement:.3f} "
                f"(minimum {self.min_agreement:g}; {self.detections_torch} PyTorch / {self.detections_export} "
                f"exported detections)")


def verify_inputs(imgsz: tuple[int, int], batch: int, seed: int = 0, images: list | None = None) -> torch.Tensor:
    """A deterministic batch: letterboxed real images when given, else a synthetic scene.

    The synthetic scene (smooth gradients with random coloured rectangles and noise) triggers
    hundreds of low-confidence detections, enough to compare post-NMS outputs.
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


def _match(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float, float]:
    """Greedy same-class IoU>=0.5 matches of ``a`` rows in ``b``: (count, max |diff| of boxes, of scores)."""
    if not len(a) or not len(b):
        return 0, 0.0, 0.0
    iou = box_iou(a[:, :4], b[:, :4])
    iou[a[:, 5:6] != b[None, :, 5]] = 0
    used = torch.zeros(len(b), dtype=torch.bool)
    matched, bdiff, sdiff = 0, 0.0, 0.0
    for i in range(len(a)):
        cand = iou[i].clone()
        cand[used] = 0
        j = int(cand.argmax())
        if cand[j] >= 0.5:
            used[j] = True
            matched += 1
            bdiff = max(bdiff, float((a[i, :4] - b[j, :4]).abs().max()))
            sdiff = max(sdiff, float((a[i, 4] - b[j, 4]).abs()))
    return matched, bdiff, sdiff


def _agreement(ref_hi, ref_lo, exp_hi, exp_lo) -> tuple[float, float, float]:
    """Share of each side's detections (at the threshold) found in the other's (at half the threshold).

    The lower threshold on the other side keeps boxes whose score sits right at the threshold
    from counting as disagreements. Returns (agreement, max |diff| of matched boxes, of scores).
    """
    m1, b1, s1 = _match(ref_hi, exp_lo)
    m2, b2, s2 = _match(exp_hi, ref_lo)
    a1 = m1 / len(ref_hi) if len(ref_hi) else 1.0
    a2 = m2 / len(exp_hi) if len(exp_hi) else 1.0
    return min(a1, a2), max(b1, b2), max(s1, s2)


def verify(backend, model, imgsz: tuple[int, int], batch: int = 1, dynamic: bool = False, half: bool = False,
           conf: float = 0.01, iou: float = 0.45, max_det: int = 100, atol: float | None = None,
           min_agreement: float | None = None, images: list | None = None, raise_on_fail: bool = True) -> VerifyResult:
    """Run ``backend`` (a runtime Backend) and ``model`` (fp32 PyTorch) on the same inputs and compare."""
    d_atol, d_box, d_agree = TOLERANCE[bool(half)]
    atol = d_atol if atol is None else atol
    box_atol = d_box * max(imgsz)
    min_agreement = d_agree if min_agreement is None else min_agreement
    shapes = [(batch, *imgsz)]
    if dynamic:  # also a different batch and a rectangular shape
        s = int(model.stride.max())
        shapes.append((batch + 1, imgsz[0], max(s, imgsz[1] - 2 * s)))
    max_diff = max_sdiff = 0.0
    agree, n_t, n_e = 1.0, 0, 0
    for k, (b, h, w) in enumerate(shapes):
        x = verify_inputs((h, w), b, seed=k, images=images)
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
            exp_hi = [out[out[:, 0] == i][:, 1:] for i in range(b)]
            exp_lo = exp_hi
            ref_hi = non_max_suppression(ref, min(1.0, c * 1.2), i_, max_det=md)
            ref_lo = non_max_suppression(ref, c / 2, i_, max_det=2 * md)
        else:
            if out.shape != ref.shape:
                raise ExportError(f"{backend.path}: output shape {tuple(out.shape)} differs from PyTorch's "
                                  f"{tuple(ref.shape)}")
            d = (out - ref).abs()
            max_diff = max(max_diff, float(d.max()) if torch.isfinite(out).all() else float("inf"))
            max_sdiff = max(max_sdiff, float(d[..., 4:].max()))
            ref_hi = non_max_suppression(ref, conf, iou, max_det=max_det)
            ref_lo = non_max_suppression(ref, conf / 2, iou, max_det=2 * max_det)
            exp_hi = non_max_suppression(out, conf, iou, max_det=max_det)
            exp_lo = non_max_suppression(out, conf / 2, iou, max_det=2 * max_det)
        for k2 in range(b):
            a, bd, sd = _agreement(ref_hi[k2], ref_lo[k2], exp_hi[k2], exp_lo[k2])
            agree = min(agree, a)
            n_t += len(ref_hi[k2])
            n_e += len(exp_hi[k2])
            if backend.end2end:
                max_diff, max_sdiff = max(max_diff, bd), max(max_sdiff, sd)
    res = VerifyResult(max_diff, max_sdiff, agree, n_t, n_e, [list(s) for s in shapes], atol, box_atol, min_agreement)
    res.passed = bool(np.isfinite(max_diff) and max_sdiff <= atol and max_diff <= box_atol and agree >= min_agreement)
    if not res.passed and raise_on_fail:
        raise ExportError(f"{backend.path}: verification FAILED: {res.summary()}")
    return res


