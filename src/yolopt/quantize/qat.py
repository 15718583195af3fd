"""Quantization-aware training (QAT) that targets the INT8 graph ONNX Runtime actually runs.

    >>> from yolopt.quantize.qat import QATSpec, qat_finetune
    >>> tuned = qat_finetune(model, QATSpec(data="hardhat.yaml", epochs=2, imgsz=416), calib_set)

The model is fused (BatchNorm folded into the convs, as deployed) and *instrumented*: fake
quantization is inserted at the tensors :mod:`.onnx_qdq` quantizes, with the same arithmetic:

* conv weights: per output channel, symmetric, 7-bit (``reduce_range``, [-64, 64]) or 8-bit,
  scale ``2 max|w| / (qmax - qmin)`` recomputed at every step from the current weights;
* activations: per tensor, asymmetric uint8, range = calibration min / max (0 included), frozen
  before training: every conv output, SiLU's sigmoid and product (the ONNX graph's Sigmoid and
  Mul), residual adds, every Concat (C3, SPP/SPPF, the neck);
* the Detect decode stays float; the pixels' input scale (1/255) is exact.

Gradients pass straight through the rounding (``torch.fake_quantize_*``). The fake quantizers live
in forward hooks and instance-level forwards, not in the module tree: ``state_dict()`` keeps its keys,
so the trainer checkpoints, resumes (ranges are saved next to the run in ``qat_ranges.json``) and
saves the float weights as any model. The result is an ordinary fused float model whose weights
have learned to sit well on the INT8 grid; :func:`yolopt.quantize.quantize` then calibrates and
writes it through the same QDQ path as post-training quantization, so QAT and PTQ artifacts have the
same graph and the same speed, and the comparison between them is only about accuracy.

Training uses the float model as distillation teacher (:class:`~yolopt.compress.OutputDistillation`)
on the labelled train split plus any unlabelled images, at a low constant learning rate.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..engine.trainer import Callback
from ..errors import YoloptError
from ..fileio import atomic_write

log = logging.getLogger("yolopt")

RANGES = "qat_ranges.json"


class _ActQuant:
    """One activation quantization point: observes min / max, then fake-quantizes (uint8, asymmetric)."""

    def __init__(self, name: str):
        self.name = name
        self.lo, self.hi = 0.0, 0.0  # ONNX Runtime's MinMax range always contains 0
        self.observing = True
        self._qp: tuple[float, int] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.lo = min(self.lo, float(x.detach().min()))
            self.hi = max(self.hi, float(x.detach().max()))
            return x
        if self._qp is None:
            self._qp = qparams(self.lo, self.hi)
        scale, zp = self._qp
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)

    def freeze(self, lo: float | None = None, hi: float | None = None) -> None:
        if lo is not None:
            self.lo, self.hi = lo, hi
        self.observing, self._qp = False, None


def qparams(lo: float, hi: float) -> tuple[float, int]:
    """uint8 scale and zero point for the range [lo, hi] (widened to contain 0), as ONNX Runtime computes them."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(min(255, max(0, round(-lo / scale))))
    return float(scale), zp


def weight_range(bits: int) -> tuple[int, int]:
    """ONNX Runtime's symmetric int8 weight range: [-64, 64] with ``reduce_range`` (7 bits), else [-127, 127]."""
    if bits not in (7, 8):
        raise YoloptError(f"QAT weight bits {bits}: 7 (reduce_range) or 8")
    return (-64, 64) if bits == 7 else (-127, 127)


def fake_quant_weight(w: torch.Tensor, bits: int = 7) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization of a conv weight (N, C, kh, kw), scale
    ``2 max|w| / (qmax - qmin)`` as ONNX Runtime computes it."""
    qmin, qmax = weight_range(bits)
    amax = w.detach().abs().amax(dim=(1, 2, 3)).clamp_min(1e-12)
    scale = (2 * amax / (qmax - qmin)).float()
    zp = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, qmin, qmax)


class _QConvForward:
    """Instance-level forward of an ``nn.Conv2d``: fake-quantized weight, then its output quantized."""

    def __init__(self, conv: nn.Conv2d, out_q: _ActQuant, bits: int):
        self.conv, self.out_q, self.bits = conv, out_q, bits

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        w = c.weight if self.out_q.observing else fake_quant_weight(c.weight, self.bits)
        return self.out_q(c._conv_forward(x, w, c.bias))


class _QSiLUForward:
    """SiLU as the ONNX graph runs it in INT8: ``q(x * q(sigmoid(x)))``."""

    def __init__(self, sig_q: _ActQuant, mul_q: _ActQuant):
        self.sig_q, self.mul_q = sig_q, mul_q

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.mul_q(x * self.sig_q(torch.sigmoid(x)))


def _out_hook(q: _ActQuant):
    def hook(module, args, out):
        return q(out)
    return hook


def _in_hook(q: _ActQuant):
    def hook(module, args):
        return (q(args[0]),) + tuple(args[1:])
    return hook


@dataclass
class Instrumented:
    """The quantization points inserted into a model; :meth:`strip` removes them all."""

    points: dict[str, _ActQuant] = field(default_factory=dict)
    handles: list = field(default_factory=list)
    forwards: list[nn.Module] = field(default_factory=list)

    def freeze(self, ranges: dict[str, list[float]] | None = None) -> None:
        for name, q in self.points.items():
            if ranges is not None:
                if name not in ranges:
                    raise YoloptError(f"QAT ranges: no range for {name}; the saved ranges belong to another model")
                q.freeze(*ranges[name])
            else:
                q.freeze()

    def ranges(self) -> dict[str, list[float]]:
        return {n: [q.lo, q.hi] for n, q in self.points.items()}

    def strip(self) -> None:
        for h in self.handles:
            h.remove()
        for m in self.forwards:
            m.__dict__.pop("forward", None)
        self.points.clear()
        self.handles.clear()
        self.forwards.clear()


def instrument(model: nn.Module, bits: int = 7) -> Instrumented:
    """Insert fake quantization (observing until :meth:`Instrumented.freeze`) into a **fused** model,
    at the tensors :mod:`.onnx_qdq` quantizes. The Detect decode is left float."""
    from ..models.common import C3, SPP, SPPF, Bottleneck, Concat

    if not getattr(model, "is_fused", True):
        raise YoloptError("QAT instruments the fused model (BatchNorm folded, as deployed); call model.fuse() first")
    ins = Instrumented()

    def point(name: str) -> _ActQuant:
        q = _ActQuant(name)
        ins.points[name] = q
        return q

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            m.forward = _QConvForward(m, point(f"{name}:out"), bits)
            ins.forwards.append(m)
        elif isinstance(m, nn.SiLU):
            m.forward = _QSiLUForward(point(f"{name}:sigmoid"), point(f"{name}:mul"))
            ins.forwards.append(m)
        elif isinstance(m, Bottleneck) and m.add:
            ins.handles.append(m.register_forward_hook(_out_hook(point(f"{name}:add"))))
        elif isinstance(m, C3):
            ins.handles.append(m.cv3.register_forward_pre_hook(_in_hook(point(f"{name}:concat"))))
        elif isinstance(m, (SPP, SPPF)):
            ins.handles.append(m.cv2.register_forward_pre_hook(_in_hook(point(f"{name}:concat"))))
        elif isinstance(m, Concat):
            ins.handles.append(m.register_forward_hook(_out_hook(point(f"{name}:concat"))))
    return ins


@torch.no_grad()
def calibrate(model: nn.Module, ins: Instrumented, arrays) -> None:
    """Observe every point's range on the calibration images (eval mode, as ONNX Runtime's MinMax
    calibrator sees the fp32 graph), then freeze them."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    n = 0
    for a in arrays:
        model(torch.as_tensor(a, device=dev))
        n += 1
    model.train(was)
    if not n:
        raise YoloptError("QAT: no calibration images")
    ins.freeze()


@dataclass
class QATSpec:
    """One QAT fine-tune: ``epochs`` on ``data`` (+ ``unlabeled``) with the float model as teacher."""

    data: str  # dataset yaml (its train split) or images without labels (the teacher labels them)
    epochs: int = 2
    imgsz: int = 640
    batch: int = 16
    lr0: float = 1e-3  # constant after a short warm-up (see docs/quantize.md for the runs behind it)
    bits: int = 7  # weight bits (7: reduce_range, as the default INT8 graph)
    unlabeled: list[str] = field(default_factory=list)
    val_data: str | None = None  # the yaml validated on each epoch (default: data)
    distill: bool = True
    out: str | Path = "runs/qat"
    workers: int = 2
    device: str = "auto"
    progress: bool = True
    seed: int = 0


class QATCallback(Callback):
    """Trainer callback: fuse, instrument and calibrate the model before the optimizer exists.

    The frozen ranges are written to ``<run>/qat_ranges.json``; a resumed run reads them back
    instead of recalibrating, so its quantization grid is the one the run started with."""

    def __init__(self, calib, bits: int = 7):
        self.calib, self.bits = calib, bits  # calib: a CalibrationSet (square-letterboxed like inference)
        self.ins: Instrumented | None = None

    def prepare_model(self, trainer, model: nn.Module):
        model.fuse()
        self.ins = instrument(model, self.bits)
        path = Path(trainer.out) / RANGES
        if trainer.resuming and path.is_file():
            self.ins.freeze(json.loads(path.read_text())["ranges"])
        else:
            calibrate(model, self.ins, self.calib.batches())
            atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(
                {"bits": self.bits, "ranges": self.ins.ranges()}, indent=1)))
        log.info("QAT: %d activation quantization points, %d-bit weights", len(self.ins.points), self.bits)
        return model


def qat_hyp(lr0: float) -> dict:
    """The training hyper-parameters for QAT: YOLOv5's, with a low flat learning rate, no bias
    warm-up (the fused biases carry BatchNorm's shift) and light augmentation."""
    from ..engine.trainer import load_hyp

    h = load_hyp(None)
    h.update({"lr0": lr0, "lrf": 1.0, "warmup_epochs": 0.0, "warmup_bias_lr": lr0, "warmup_momentum": h["momentum"],
              "mosaic": 0.5, "mixup": 0.0, "scale": 0.25})
    return h


def qat_finetune(model: nn.Module, spec: QATSpec, calib) -> nn.Module:
    """Fine-tune a copy of ``model`` with fake quantization; returns the fused float model (EMA weights),
    ready for :func:`yolopt.quantize.quantize`. Resumes ``spec.out`` when it holds an unfinished run of
    the same settings."""
    import yolopt

    from ..engine import train
    from ..engine.distill import OutputDistillation, check_teacher
    from ..engine.trainer import LAST

    if spec.epochs < 1:
        raise YoloptError(f"QAT needs at least 1 epoch (got {spec.epochs})", fields=("epochs",))
    out = Path(spec.out)
    settings = run_settings(spec, calib)
    teacher = copy.deepcopy(model).float().eval()
    student = copy.deepcopy(model).float()
    cb = QATCallback(calib, spec.bits)
    callbacks = [cb]
    if spec.distill:
        check_teacher(student, teacher)
        callbacks.append(OutputDistillation())
    saved = _saved_run(out, settings)
    done = out / saved["finished"] if saved and saved.get("finished") else None
    if done is None or not done.is_file():
        kwargs = dict(device=spec.device, workers=spec.workers, progress=spec.progress)
        if saved and (out / LAST).is_file():
            log.info("QAT: resuming %s", out)
            res = train(resume=out, callbacks=callbacks, teacher=teacher if spec.distill else None, **kwargs)
        else:
            if out.exists() and any(out.iterdir()):
                if saved is None:
                    raise YoloptError(f"{out}: holds a QAT run with other settings; remove it or choose another "
                                      f"folder")
                log.info("QAT: %s was stopped before its first checkpoint; starting it again", out)
                shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / "qat.json", lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1)))
            res = train(spec.data, model=student, epochs=spec.epochs, imgsz=spec.imgsz, batch=spec.batch,
                        hyp=qat_hyp(spec.lr0), out=str(out), exist_ok=True, seed=spec.seed, close_mosaic=0,
                        unlabeled=list(spec.unlabeled), teacher=teacher if spec.distill else None,
                        val_data=str(spec.val_data) if spec.val_data else None,
                        callbacks=callbacks, **kwargs)
        done = Path(res.best or res.last)
        atomic_write(out / "qat.json", lambda tmp: Path(tmp).write_text(json.dumps(
            {**settings, "finished": done.name}, indent=1)))
    tuned = yolopt.load(done)
    if not tuned.is_fused:
        tuned.fuse()
    return tuned.float().eval()


def run_settings(spec: QATSpec, calib) -> dict:
    """What a QAT run folder's results depend on (``qat.json``): a folder with other settings is not reused."""
    return {"data": str(spec.data), "epochs": spec.epochs, "imgsz": spec.imgsz, "batch": spec.batch,
            "lr0": spec.lr0, "bits": spec.bits, "unlabeled": [str(u) for u in spec.unlabeled],
            "distill": spec.distill, "seed": spec.seed, "calib_images": len(calib),
            "val_data": str(spec.val_data) if spec.val_data else None}


def _saved_run(out: Path, settings: dict) -> dict | None:
    """``out/qat.json`` when it records these settings (a run of this spec, finished or not), else None."""
    try:
        saved = json.loads((out / "qat.json").read_text())
    except (OSError, ValueError):
        return None
    return saved if {k: saved.get(k) for k in settings} == settings else None


__all__ = ["QATCallback", "QATSpec", "calibrate", "fake_quant_weight", "instrument", "qat_finetune", "qparams"]
