"""BatchNorm running statistics, recomputed.

A BatchNorm layer trains on batch statistics and evaluates on running averages that trail them
(momentum 0.03 per batch in YOLOv5). When the weights drift fast and in one direction, as under a
strong BN-L1 sparsity penalty, the averages fall behind in every layer at once and the error
compounds with depth: the network is right in train mode and collapses in eval mode. Measured on the
hardhat model after 5 epochs of ``--sparsity 0.1``, first 100 val images: mAP50 0.13 with the running
statistics, 0.91 with statistics recomputed on 128 train images. Pruning shifts the statistics of the
layers after a removed channel in the same way. :func:`recompute_bn_stats` replaces the running
averages with exact ones on given images.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor], batch_size: int = 16) -> int:
    """Recompute every BatchNorm's ``running_mean`` / ``running_var`` **in place** as the exact
    average over ``batches`` (each ``(B, C, H, W)``, the model's input: RGB in [0, 1]; split into
    chunks of ``batch_size``). Weights are not touched; the model's train/eval mode and the layers'
    momentum are restored. Returns the number of images seen (0: statistics left unchanged).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    p = next(model.parameters())
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in bns]
    was = model.training
    seen = 0
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over every batch that follows
        model.train()
        for batch in batches:
            for chunk in torch.split(batch, batch_size):
                model(chunk.to(p.device, p.dtype))
                seen += chunk.shape[0]
    finally:
        for m, mom, rm, rv, nbt in saved:
            m.momentum = mom
            if seen == 0:  # no images (or an error before the first): keep what was there
                m.running_mean.copy_(rm)
                m.running_var.copy_(rv)
                m.num_batches_tracked.copy_(nbt)
        model.train(was)
    return seen
