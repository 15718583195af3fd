"""Conv + BatchNorm fusion.

In eval mode ``bn(conv(x)) = gamma * (W*x + b - mean) / sqrt(var + eps) + beta``, which is a
single convolution with ``W' = W * gamma / std`` and ``b' = beta + (b - mean) * gamma / std``.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d (with bias) equivalent to ``bn(conv(x))`` in eval mode."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return fused


def fuse_conv_bn_(model: nn.Module) -> nn.Module:
    """Fuse, in place, every module that has a ``conv`` followed by a ``bn`` attribute.

    The ``bn`` is replaced by ``nn.Identity`` so forward code stays the same.
    """
    for m in model.modules():
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn(conv, bn)
            m.bn = nn.Identity()
    return model
