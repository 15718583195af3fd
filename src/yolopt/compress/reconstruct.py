"""Least-squares reconstruction of a pruned model's convs from the unpruned one (no labels, no training).

    >>> from yolopt.compress import reconstruct
    >>> stats = reconstruct(pruned, original, images)   # images: (N, 3, H, W) in [0, 1], e.g. 64 unlabelled

Pruning removes channels; every conv that read them now sees less. Instead of leaving its weights as
they were (and hoping fine-tuning repairs the damage), each conv of the pruned model is refitted,
in the order the forward pass runs them, so that on real images it reproduces what the same conv of
the original model computed on the channels it kept (He et al. 2017, "Channel pruning for
accelerating very deep neural networks": linear least squares on the layer's output):

    minimise  || W' . unfold(x_pruned) + c  -  z_original[kept] ||^2  +  ridge ||W'||^2

``x_pruned`` is the conv's input in the pruned model *after* the layers before it were refitted, so
errors do not pile up; ``z_original`` is the original conv's output before its BatchNorm (or the
Detect conv's output, bias included). The intercept ``c`` goes into the BatchNorm's running mean
(or the Detect conv's bias). The fit is per output channel and linear, so it is exact where the kept
inputs can express what the removed ones carried, and the best linear stand-in where they cannot.

Positions are sampled (``positions`` per image and conv) and the normal equations accumulated in
float64, so memory stays small at 640. The kept output channels of each conv come from the pruner's
record, or are recognised by their BatchNorm's (gamma, beta), which pruning copies unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import YoloptError

log = logging.getLogger("yolopt")


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has run."""


@dataclass
class ReconstructStats:
    """One row per refitted conv: ``layer``, ``d`` (unknowns per output channel), ``err_before`` /
    ``err_after`` (relative squared error of the conv's output against the original's, on the samples)."""

    layers: list[dict]
    seconds: float

    def mean_error(self, key: str = "err_after") -> float:
        """Mean over the refitted convs of ``err_before`` / ``err_after``."""
        return round(sum(r[key] for r in self.layers) / max(len(self.layers), 1), 5)

    def to_dict(self) -> dict:
        return {"seconds": round(self.seconds, 2), "layers": self.layers}


def _conv_bn(model: nn.Module) -> dict[str, nn.BatchNorm2d | None]:
    """``{conv name: the BatchNorm right after it (yolopt Conv blocks) or None}``."""
    out = {}
    for name, m in model.named_modules():
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if isinstance(conv, nn.Conv2d):
            out[f"{name}.conv"] = bn if isinstance(bn, nn.BatchNorm2d) else None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name not in out:
            out[name] = None
    return out


def _kept_outputs(conv_t: nn.Conv2d, bn_t, conv_s: nn.Conv2d, bn_s, known: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Indices of the original conv's output channels that the pruned conv kept: ``known`` (from the
    pruner) when given, else recognised by the BatchNorm's (gamma, beta)."""
    if known is not None:
        if len(known) != conv_s.out_channels or (len(known) and int(known.max()) >= conv_t.out_channels):
            raise YoloptError("the kept-channel record does not fit the models (pruned again since?)")
        return known.long()
    if conv_s.out_channels == conv_t.out_channels:
        return torch.arange(conv_t.out_channels)
    if bn_t is None or bn_s is None:
        raise YoloptError("cannot match the pruned conv's outputs to the original's (no BatchNorm)")
    key_t = torch.stack([bn_t.weight.detach(), bn_t.bias.detach()], 1)
    key_s = torch.stack([bn_s.weight.detach(), bn_s.bias.detach()], 1)
    eq = (key_s[:, None, :] == key_t[None, :, :]).all(-1)  # (C_s, C_t)
    if not bool((eq.sum(1) == 1).all()):
        raise YoloptError("cannot match the pruned conv's outputs to the original's (BatchNorm parameters "
                          "changed or repeated): reconstruct right after pruning")
    return eq.float().argmax(1)


def _execution_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: order.append(names[mod])) for m in names]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def _run_to(model: nn.Module, module: nn.Module, x: torch.Tensor, *, output: bool):
    """The input (``output=False``) or output of ``module`` when ``model`` runs on ``x``; the forward
    pass stops right there."""
    got = {}

    def pre(mod, args):
        got["v"] = args[0]
        raise _Stop

    def post(mod, args, out):
        got["v"] = out
        raise _Stop

    h = module.register_forward_hook(post) if output else module.register_forward_pre_hook(pre)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return got["v"]


@dataclass(frozen=True)
class FitOptions:
    """The least-squares fit of :func:`reconstruct`. ``positions``: output positions sampled per image and
    conv. ``ridge``: Tikhonov term relative to the mean diagonal of X^T X. ``batch``: images per forward
    pass. ``seed``: position sampling. ``head_floor``: added to the Detect convs' objectness weights."""

    positions: int = 1024
    ridge: float = 1e-3
    batch: int = 8
    seed: int = 0
    head_floor: float = 0.01


@torch.no_grad()
def reconstruct(student: nn.Module, teacher: nn.Module, images: torch.Tensor, fit: FitOptions | None = None, *,
                progress: bool = True, layers: set[str] | None = None,
                kept: dict[str, torch.Tensor] | None = None) -> ReconstructStats:
    """Refit every conv of ``student`` (a pruned copy of ``teacher``) **in place**, in forward order.

    ``images``: ``(N, 3, H, W)`` float in [0, 1] (or uint8 0-255), letterboxed like inference input;
    a few dozen unlabelled images of the target domain are enough. ``fit``: sampling and regularisation
    of the fit (:class:`FitOptions`). Both models must be unfused and have the same module names (``prune``
    keeps them). ``layers``:
    refit only these convs (names), e.g. the consumers of one pruned group. Returns the per-layer fit
    errors before and after. ``kept``: which output channels of each conv remain
    (:attr:`PruneResult.kept_outputs` / :attr:`ChannelPruner.kept_outputs`); without it they are
    recognised by their BatchNorm (gamma, beta), which pruning copies unchanged. The Detect convs' samples are weighted by the teacher's objectness
    (max over anchors) plus ``head_floor``: what matters there is the output where objects are, which a
    plain fit would trade for the background that covers most positions.
    """
    fit = fit or FitOptions()
    positions, ridge, batch, seed, head_floor = fit.positions, fit.ridge, fit.batch, fit.seed, fit.head_floor
    t0 = time.perf_counter()
    if getattr(student, "is_fused", False) or getattr(teacher, "is_fused", False):
        raise YoloptError("reconstruct needs unfused models (Conv and BatchNorm separate)")
    student.eval()
    teacher.eval()
    p = next(student.parameters())
    convs_s = dict(student.named_modules())
    convs_t = dict(teacher.named_modules())
    bn_s, bn_t = _conv_bn(student), _conv_bn(teacher)
    images = images if images.dtype.is_floating_point else images.float() / 255
    order = _execution_order(student, images[:1].to(p.device, p.dtype))
    if layers is not None:
        order = [n for n in order if n in layers]
    missing = [n for n in order if n not in convs_t or not isinstance(convs_t[n], nn.Conv2d)]
    if missing:
        raise YoloptError(f"the original model has no conv {missing[0]!r}: it is not the model this one was pruned from")
    gen = torch.Generator().manual_seed(seed)
    detect = getattr(student, "detect", None)
    heads = {f"model.{len(student.model) - 1}.m.{i}": i for i in range(len(detect.m))} if detect is not None else {}
    rows = []
    it = order
    if progress:
        from tqdm import tqdm

        it = tqdm(order, desc="reconstruct", unit="conv", leave=False)
    for name in it:
        cs, ct = convs_s[name], convs_t[name]
        rows_kept = _kept_outputs(ct, bn_t.get(name), cs, bn_s.get(name),
                                  None if kept is None else kept.get(name, torch.arange(ct.out_channels)))
        kh, kw = cs.kernel_size
        d = cs.in_channels * kh * kw + 1
        xtx = torch.zeros(d, d, dtype=torch.float64)
        xtz = torch.zeros(d, cs.out_channels, dtype=torch.float64)
        ztz = torch.zeros(cs.out_channels, dtype=torch.float64)
        w_old = torch.cat([cs.weight.detach().reshape(cs.out_channels, -1).double(),
                           torch.zeros(cs.out_channels, 1, dtype=torch.float64)], 1)
        bn, bnt = bn_s.get(name), bn_t.get(name)
        if cs.bias is not None:
            w_old[:, -1] = cs.bias.detach().double()
        elif bn is not None:  # what the pruned model's BatchNorm mean adds, in the original's terms
            w_old[:, -1] = (bnt.running_mean[rows_kept] - bn.running_mean).double()
        for i in range(0, len(images), batch):
            x_img = images[i:i + batch].to(p.device, p.dtype)
            x_in = _run_to(student, cs, x_img, output=False)
            z = _run_to(teacher, ct, x_img, output=True)[:, rows_kept]  # (B, C_out, Ho, Wo)
            b, c_out, ho, wo = z.shape
            cols = F.unfold(x_in, cs.kernel_size, dilation=cs.dilation, padding=cs.padding, stride=cs.stride)
            n_pos = min(positions, ho * wo)
            idx = torch.stack([torch.randperm(ho * wo, generator=gen)[:n_pos] for _ in range(b)])  # (B, n)
            xs = torch.gather(cols, 2, idx[:, None, :].expand(-1, cols.shape[1], -1).to(cols.device))
            zs = torch.gather(z.reshape(b, c_out, -1), 2, idx[:, None, :].expand(-1, c_out, -1).to(z.device))
            xs = xs.permute(0, 2, 1).reshape(-1, cols.shape[1]).double().cpu()
            zs = zs.permute(0, 2, 1).reshape(-1, c_out).double().cpu()
            xs = torch.cat([xs, torch.ones(len(xs), 1, dtype=torch.float64)], 1)
            if name in heads:  # Detect: weight each position by the teacher's objectness (max over anchors)
                na = detect.na
                obj = zs.reshape(len(zs), na, -1)[:, :, 4].sigmoid().amax(1)
                wts = obj + head_floor
                xtx += (xs * wts[:, None]).T @ xs
                xtz += (xs * wts[:, None]).T @ zs
                ztz += (zs * zs * wts[:, None]).sum(0)
            else:
                xtx += xs.T @ xs
                xtz += xs.T @ zs
                ztz += (zs * zs).sum(0)
        reg = ridge * xtx.diagonal()[:-1].mean().clamp_min(1e-12)
        a = xtx.clone()
        a.diagonal()[:-1] += reg
        w_new = torch.linalg.solve(a, xtz).T  # (C_out, d)

        def err(w):  # sum over samples of ||w x - z||^2, from the accumulated moments
            return (ztz - 2 * (w * xtz.T).sum(1) + ((w @ xtx) * w).sum(1)).sum() / ztz.sum().clamp_min(1e-12)

        e0, e1 = float(err(w_old)), float(err(w_new))
        if e1 < e0:  # never make a layer worse than it was
            cs.weight.copy_(w_new[:, :-1].reshape_as(cs.weight).to(cs.weight.dtype))
            c = w_new[:, -1]
            if cs.bias is not None:
                cs.bias.copy_(c.to(cs.bias.dtype))
            elif bn is not None:
                bn.running_mean.copy_((bnt.running_mean[rows_kept].double() - c).to(bn.running_mean.dtype))
            else:  # no place for the intercept: refit without it
                w2 = torch.linalg.solve(a[:-1, :-1], xtz[:-1]).T
                cs.weight.copy_(w2.reshape_as(cs.weight).to(cs.weight.dtype))
        rows.append({"layer": name, "d": d - 1, "err_before": round(e0, 5), "err_after": round(min(e0, e1), 5)})
    if hasattr(student, "detect"):
        student.detect._grids = {}
    return ReconstructStats(layers=rows, seconds=time.perf_counter() - t0)
