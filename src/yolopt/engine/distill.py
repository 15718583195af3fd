"""Output distillation (and optional neck-feature imitation) for fine-tuning a pruned student.

    >>> from yolopt.engine.distill import OutputDistillation  # also yolopt.compress.OutputDistillation
    >>> train("d.yaml", model=pruned, teacher=unpruned, epochs=10, callbacks=[OutputDistillation()])

The loss works on the raw head outputs, level by level, anchor by anchor (teacher and student
share anchors, strides and classes, so the maps line up):

* objectness: BCE between the student's logit and the teacher's probability ``sigmoid(t_obj)``,
  on every anchor (``w_obj``);
* classes: BCE against the teacher's class probabilities, only where the teacher is confident
  (``sigmoid(t_obj) > obj_threshold``), so the background, which is most anchors, does not
  dominate (``w_cls``);
* boxes: L1 between the student's and the teacher's box parameters as the detection loss decodes
  them (centre offset ``2 sigmoid - 0.5`` in cells, size ``(2 sigmoid)^2`` in anchor units), on
  those same anchors (``w_box``; L1 rather than CIoU, whose gradient is undefined at equality);
* features (``features=True``): MSE between the teacher's neck outputs and the student's, mapped to
  the teacher's widths by 1x1 adapter convs (trained with their own optimizer, stepped with the
  model's; they are not part of the saved model).

The sum is multiplied by the batch size, as the detection loss is, and by ``alpha``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import YoloptError
from .trainer import Callback

log = logging.getLogger("yolopt")


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a teacher whose outputs do not line up with the student's (one line)."""
    sd, td = student.detect, getattr(teacher, "detect", None)
    if td is None or not hasattr(teacher, "forward_features"):
        raise YoloptError(f"teacher: expected a yolopt DetectionModel, got {type(teacher).__name__}")
    if td.nc != sd.nc:
        raise YoloptError(f"teacher predicts {td.nc} classes but the student predicts {sd.nc}; distillation needs "
                          f"the same classes")
    if td.nl != sd.nl or td.na != sd.na:
        raise YoloptError(f"teacher has {td.nl} levels x {td.na} anchors, the student {sd.nl} x {sd.na}; they must match")
    if not torch.allclose(td.stride.cpu().float(), sd.stride.cpu().float()):
        raise YoloptError(f"teacher strides {td.stride.tolist()} differ from the student's {sd.stride.tolist()}")
    if not torch.allclose(td.anchors.cpu().float(), sd.anchors.cpu().float(), rtol=1e-3):
        raise YoloptError("teacher anchors differ from the student's; box distillation needs the same anchors")


def output_distillation_loss(s_raw: list[torch.Tensor], t_raw: list[torch.Tensor],
                             obj_threshold: float = 0.5, w_obj: float = 1.0, w_cls: float = 0.5,
                             w_box: float = 0.05) -> tuple[torch.Tensor, dict]:
    """Per-image distillation loss between raw head maps.

    ``s_raw`` / ``t_raw``: per level ``(B, na, ny, nx, 5+nc)`` logits (student with gradients, teacher
    without), same anchors. Returns (the weighted
    sum, a scalar tensor; ``{"obj", "cls", "box", "confident"}`` floats for logging).
    """
    dev = s_raw[0].device
    lobj = torch.zeros((), device=dev)
    lcls = torch.zeros((), device=dev)
    lbox = torch.zeros((), device=dev)
    n_conf = 0
    for s, t in zip(s_raw, t_raw):
        t = t.detach().to(s.dtype)
        t_obj = t[..., 4].sigmoid()
        lobj = lobj + F.binary_cross_entropy_with_logits(s[..., 4], t_obj)
        mask = t_obj > obj_threshold  # (B, na, ny, nx)
        n = int(mask.sum())
        n_conf += n
        if not n:
            continue
        ps, pt = s[mask], t[mask]  # (n, 5+nc)
        if ps.shape[1] > 5:
            lcls = lcls + F.binary_cross_entropy_with_logits(ps[:, 5:], pt[:, 5:].sigmoid())
        sb = torch.cat((ps[:, :2].sigmoid() * 2 - 0.5, (ps[:, 2:4].sigmoid() * 2) ** 2), 1)  # (n, 4)
        tb = torch.cat((pt[:, :2].sigmoid() * 2 - 0.5, (pt[:, 2:4].sigmoid() * 2) ** 2), 1)
        lbox = lbox + F.l1_loss(sb, tb)
    total = w_obj * lobj + w_cls * lcls + w_box * lbox
    return total, {"obj": float(lobj.detach()), "cls": float(lcls.detach()), "box": float(lbox.detach()),
                   "confident": n_conf}


class OutputDistillation(Callback):
    """Distil the teacher's raw outputs (and, with ``features=True``, its neck features) into the
    student during training; see the module doc. The teacher is ``train(..., teacher=...)``.

    ``alpha``: overall weight against the detection loss. ``obj_threshold``: teacher objectness
    above which class and box targets are used. ``w_feat``: weight of the feature term.
    """

    def __init__(self, alpha: float = 1.0, obj_threshold: float = 0.5, w_obj: float = 1.0, w_cls: float = 0.5,
                 w_box: float = 0.05, features: bool = False, w_feat: float = 1.0, adapter_lr: float = 1e-3):
        self.alpha, self.obj_threshold = alpha, obj_threshold
        self.w_obj, self.w_cls, self.w_box = w_obj, w_cls, w_box
        self.features, self.w_feat, self.adapter_lr = features, w_feat, adapter_lr
        self.needs_features = bool(features)  # the trainer keeps the student's neck tensors only if asked
        self.adapters: nn.ModuleList | None = None
        self.adapter_opt: torch.optim.Optimizer | None = None
        self.last: dict = {}

    SETTINGS = "distill.json"

    def settings(self) -> dict:
        return {"alpha": self.alpha, "obj_threshold": self.obj_threshold, "w_obj": self.w_obj, "w_cls": self.w_cls,
                "w_box": self.w_box, "features": self.features, "w_feat": self.w_feat, "adapter_lr": self.adapter_lr}

    @classmethod
    def for_resume(cls, run_dir: str | Path) -> "tuple[OutputDistillation, nn.Module] | tuple[None, None]":
        """``(callback, teacher)`` a resumed run continues with, read from ``run_dir/distill.json``
        (written when a run with a teacher file starts); ``(None, None)`` for a run without one.
        The feature adapters (``features=True``) start afresh: they are not checkpointed."""
        import yolopt

        path = Path(run_dir) / cls.SETTINGS
        if not path.is_file():
            return None, None
        try:
            saved = json.loads(path.read_text())
            teacher_file, settings = saved["teacher"], saved["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            raise YoloptError(f"{path}: unreadable distillation settings; delete it to resume without a teacher") from None
        log.info("resuming with distillation from %s (%s)", teacher_file, path)
        return cls(**settings), yolopt.load(teacher_file)

    def on_train_start(self, trainer) -> None:
        from .ema import unwrap

        if trainer.teacher is None:
            raise YoloptError("distillation needs a teacher: pass teacher= to train() (yolopt prune --distill uses "
                              "the unpruned model)")
        student = unwrap(trainer.model)
        check_teacher(student, trainer.teacher)
        source = getattr(trainer.teacher, "source_file", None)
        if source and trainer.main:  # a teacher from a file: a resumed run can load it again
            from ..fileio import write_json

            write_json(Path(trainer.out) / self.SETTINGS, {"teacher": str(Path(source).resolve()),
                                                          "settings": self.settings()}, quiet=True)
        if self.features:
            dev = next(student.parameters()).device
            s_ch = [m.in_channels for m in student.detect.m]
            t_ch = [m.in_channels for m in trainer.teacher.detect.m]
            self.adapters = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(s_ch, t_ch)).to(dev)
            self.adapter_opt = torch.optim.Adam(self.adapters.parameters(), lr=self.adapter_lr)

    def extra_loss(self, trainer, imgs, targets, preds):
        t_raw, t_feats = trainer.teacher_outputs(imgs)
        loss, parts = output_distillation_loss(preds, t_raw, self.obj_threshold, self.w_obj, self.w_cls,
                                               self.w_box)
        if self.features and self.adapters is not None and trainer.student_feats is not None:
            lfeat = sum(F.mse_loss(ad(s), t.detach()) for ad, s, t in zip(self.adapters, trainer.student_feats, t_feats))
            loss = loss + self.w_feat * lfeat
            parts["feat"] = float(lfeat.detach())
        self.last = parts
        return self.alpha * loss * imgs.shape[0]

    def on_after_backward(self, trainer) -> None:
        if self.adapter_opt is not None:  # the adapters' gradients are complete here, like the model's
            self.adapter_opt.step()
            self.adapter_opt.zero_grad(set_to_none=True)
