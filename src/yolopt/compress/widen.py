"""Function-preserving widening of one C3 block of a (pruned) model: give channels back where they matter.

Uniform pruning cuts every layer alike. When a fine-tuned pruned model turns out to lack capacity in one
place (the P3 head ``model.17``, which finds the small objects), the block can be widened again instead of
pruning from scratch: the new channels get freshly initialised input weights and **zero** weights in every
layer that reads them, so the model computes exactly the same outputs as before widening, and fine-tuning
starts from the pruned model's accuracy (Net2Net's "wider" step, with zero fan-out).

    >>> from yolopt.compress import widen_c3
    >>> widen_c3(model, 17, hidden=32, out=64)   # in place; returns the model
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import YoloptError
from ..models.common import C3, Concat, Conv
from ..models.yolo import Detect


def _grow_rows(conv: nn.Conv2d, n: int, gen: torch.Generator) -> nn.Conv2d:
    """``conv`` with ``n`` more output channels: the old rows unchanged, the new ones initialised like
    PyTorch's default (kaiming-uniform, a=sqrt(5)) from ``gen``."""
    new = nn.Conv2d(conv.in_channels, conv.out_channels + n, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None)
    bound = (1.0 / (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])) ** 0.5
    with torch.no_grad():
        new.weight[: conv.out_channels] = conv.weight
        new.weight[conv.out_channels :] = (torch.rand(new.weight[conv.out_channels :].shape, generator=gen) * 2 - 1) * bound
        if conv.bias is not None:
            new.bias.zero_()
            new.bias[: conv.out_channels] = conv.bias
    return new.to(conv.weight.dtype)


def _insert_cols(conv: nn.Conv2d, at: int, n: int) -> nn.Conv2d:
    """``conv`` with ``n`` zero input channels inserted at input index ``at``."""
    new = nn.Conv2d(conv.in_channels + n, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :at] = conv.weight[:, :at]
        new.weight[:, at + n :] = conv.weight[:, at:]
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new.to(conv.weight.dtype)


def _grow_bn(bn: nn.BatchNorm2d, n: int) -> nn.BatchNorm2d:
    """``bn`` with ``n`` more channels (gamma 1, beta 0, running mean 0, running var 1)."""
    new = nn.BatchNorm2d(bn.num_features + n, eps=bn.eps, momentum=bn.momentum)
    with torch.no_grad():
        for t in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, t)[: bn.num_features] = getattr(bn, t)
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.to(bn.weight.dtype).train(bn.training)


def _grow_conv_block(m: Conv, n: int, gen: torch.Generator) -> None:
    m.conv = _grow_rows(m.conv, n, gen)
    m.bn = _grow_bn(m.bn, n)


def _out_channels(model) -> dict[int, int]:
    """Output channels of every layer before Detect, from one small forward pass."""
    chans: dict[int, int] = {}
    hooks = [layer.register_forward_hook(lambda mod, i, o, k=k: chans.__setitem__(k, o.shape[1]))
             for k, layer in enumerate(model.model) if not isinstance(layer, Detect)]
    p = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            s = int(max(model.stride)) if getattr(model, "stride", None) is not None else 32
            model(torch.zeros(1, model.yaml.get("ch", 3), 2 * s, 2 * s, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return chans


def _inputs(layer) -> list[int]:
    f = layer.f if isinstance(layer.f, list) else [layer.f]
    return [layer.i - 1 if j == -1 else (j if j >= 0 else layer.i + j) for j in f]


def _feed_zero_inputs(model, src: int, at: int, n: int, chans: dict[int, int], apply: bool = True) -> list[str]:
    """Insert ``n`` zero input channels at position ``at`` of the input every reader of layer ``src``
    sees. Pass-through layers (Upsample, MaxPool) and Concat are followed to their own readers.
    Returns the names of the layers changed (``apply=False``: that would be changed; nothing is)."""
    touched = []
    for layer in model.model[src + 1 :]:
        ins = _inputs(layer)
        if src not in ins:
            continue
        name = f"model.{layer.i}"
        if isinstance(layer, Detect):
            k = ins.index(src)
            if apply:
                layer.m[k] = _insert_cols(layer.m[k], at, n)
            touched.append(f"{name}.m.{k}")
        elif isinstance(layer, Concat):
            offset = sum(chans[j] for j in ins[: ins.index(src)])
            touched += _feed_zero_inputs(model, layer.i, offset + at, n, chans, apply)
        elif isinstance(layer, Conv):
            if apply:
                layer.conv = _insert_cols(layer.conv, at, n)
            touched.append(name)
        elif isinstance(layer, C3):
            if apply:
                layer.cv1.conv = _insert_cols(layer.cv1.conv, at, n)
                layer.cv2.conv = _insert_cols(layer.cv2.conv, at, n)
            touched.append(name)
        elif isinstance(layer, (nn.Upsample, nn.MaxPool2d, nn.Identity)):
            touched += _feed_zero_inputs(model, layer.i, at, n, chans, apply)
        else:
            raise YoloptError(f"widen: layer {name} ({type(layer).__name__}) reads the widened layer; only Conv, C3, "
                              f"Concat, Upsample and Detect readers are supported")
    return touched


def widen_c3(model, index: int, hidden: int | None = None, out: int | None = None, seed: int = 0):
    """Widen C3 block ``model.model[index]`` in place to ``hidden`` channels inside (cv1, cv2 and the
    bottlenecks) and ``out`` output channels (cv3), without changing what the model computes.

    Every layer that reads the block's output (directly or through Concat / Upsample) gets zero weights
    for the new channels. Widths that are not given, or not larger than today's, stay as they are.
    Returns the model (unfused, same class); its new shapes save and reload like any pruned model.
    """
    layers = model.model
    if not (0 <= index < len(layers)) or not isinstance(layers[index], C3):
        kind = type(layers[index]).__name__ if 0 <= index < len(layers) else "no such layer"
        raise YoloptError(f"widen: model.{index} is not a C3 block ({kind})")
    block: C3 = layers[index]
    if not isinstance(block.cv1.bn, nn.BatchNorm2d):
        raise YoloptError("widen: the model is fused (no BatchNorm); widen the unfused model")
    gen = torch.Generator().manual_seed(seed)
    chans = _out_channels(model)  # before any change: Concat offsets of the old model
    h, o = block.cv1.conv.out_channels, block.cv3.conv.out_channels
    if hidden is not None and hidden > h and block.cv2.conv.out_channels != h:
        raise YoloptError(f"widen: model.{index} has cv1 {h} and cv2 {block.cv2.conv.out_channels} channels; "
                          f"only equal widths are supported")
    if out is not None and out > o:
        _feed_zero_inputs(model, index, o, out - o, chans, apply=False)  # every reader supported: check first
    if hidden is not None and hidden > h:
        d = hidden - h
        _grow_conv_block(block.cv1, d, gen)
        _grow_conv_block(block.cv2, d, gen)
        for b in block.m:  # Bottleneck: in h -> inner -> h, residual when b.add
            b.cv1.conv = _insert_cols(b.cv1.conv, b.cv1.conv.in_channels, d)
            _grow_conv_block(b.cv1, d, gen)
            b.cv2.conv = _insert_cols(b.cv2.conv, b.cv2.conv.in_channels, d)
            _grow_conv_block(b.cv2, d, gen)
        # cv3 reads cat(m(...) [h + d], cv2(x) [h + d]): zero columns after each old half
        block.cv3.conv = _insert_cols(_insert_cols(block.cv3.conv, 2 * h, d), h, d)
    if out is not None and out > o:
        _grow_conv_block(block.cv3, out - o, gen)
        _feed_zero_inputs(model, index, o, out - o, chans)
    return model
