"""YOLOv5 detection model built from upstream's yaml schema.

The schema: ``nc``, ``depth_multiple``, ``width_multiple``, ``anchors`` and two layer lists
``backbone`` / ``head``, each row ``[from, repeats, module, args]``. Layers are stored in
``self.model`` (an ``nn.Sequential``) so parameter names are ``model.<i>.<...>`` exactly
as upstream's.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import torch
from torch import nn

from .common import (
    BN_EPS,
    BN_MOMENTUM,
    C3,
    SPP,
    SPPF,
    Bottleneck,
    BottleneckCSP,
    Concat,
    Conv,
    DWConv,
    Focus,
    make_activation,
)
from .fuse import fuse_conv_bn_

# Module names a yaml may use, and how their first two args are read.
_CHANNEL_MODULES = {
    "Conv": Conv,
    "DWConv": DWConv,
    "Focus": Focus,
    "Bottleneck": Bottleneck,
    "BottleneckCSP": BottleneckCSP,
    "C3": C3,
    "SPP": SPP,
    "SPPF": SPPF,
}
_REPEAT_INSIDE = {BottleneckCSP, C3}  # `repeats` becomes the module's own `n`
SUPPORTED_MODULES = sorted([*_CHANNEL_MODULES, "Concat", "Detect", "nn.Upsample", "nn.BatchNorm2d"])


def make_divisible(x: float, divisor: int) -> int:
    return int(math.ceil(x / divisor) * divisor)


class Detect(nn.Module):
    """Per-level 1x1 convs plus box decoding.

    Training mode returns the raw maps, a list of ``(B, na, ny, nx, 5+nc)`` tensors (what the
    loss needs). Eval mode returns decoded predictions ``(B, N, 5+nc)``: xywh in input pixels,
    objectness and class probabilities, exactly like upstream's ``model(x)[0]``.
    """

    def __init__(self, nc=80, anchors=(), ch=(), inplace=True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.inplace = inplace
        self.stride = torch.zeros(self.nl)  # set by DetectionModel
        self.raw_head = False  # eval forward returns the per-level conv outputs (an export with --raw-head)
        self._grids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _grid(self, i: int, nx: int, ny: int, like: torch.Tensor):
        key = (i, nx, ny, like.device, like.dtype)
        if key not in self._grids:
            shape = (1, self.na, ny, nx, 2)
            yv, xv = torch.meshgrid(
                torch.arange(ny, device=like.device, dtype=like.dtype),
                torch.arange(nx, device=like.device, dtype=like.dtype),
                indexing="ij",
            )
            grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
            anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2).expand(shape).to(like.dtype)
            self._grids[key] = (grid, anchor_grid)
        return self._grids[key]

    def _apply(self, fn, *args, **kwargs):
        # Keep the python-side stride in step with .to()/.half() and drop cached grids.
        self._grids = {}
        super()._apply(fn, *args, **kwargs)
        self.stride = fn(self.stride)
        return self

    def raw_maps(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The per-level 1x1 convs, before any decoding, in train and eval mode alike.

        ``xs[i]``: ``(B, C_i, ny_i, nx_i)`` -> list of ``(B, na, ny_i, nx_i, 5+nc)`` logits
        (xy, wh, objectness, classes), what the loss and distillation work on.
        """
        raw = []
        for i in range(self.nl):
            x = self.m[i](xs[i])
            bs, _, ny, nx = x.shape
            raw.append(x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return raw

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Raw maps (list of ``(B, na, ny, nx, 5+nc)``) -> ``(B, N, 5+nc)``, N = sum of na*ny*nx:
        xywh in input pixels, then sigmoid objectness and class scores (upstream's eval output)."""
        return torch.cat(self.decode_split(raw), 2)

    def decode_split(self, raw: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode` as two tensors that never share one: boxes ``(B, N, 4)`` xywh in input pixels and
        scores ``(B, N, 1+nc)`` (objectness, classes). An INT8 graph gives each tensor one scale: boxes span
        0-640 px and scores 0-1, so one shared tensor rounds every score to 0."""
        boxes, scores = [], []
        for i, x in enumerate(raw):
            bs, _, ny, nx, _ = x.shape
            grid, anchor_grid = self._grid(i, nx, ny, x)
            xy, wh, conf = x.sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + grid) * self.stride[i]
            wh2 = wh * 2
            wh = wh2 * wh2 * anchor_grid  # == (wh * 2) ** 2 * anchor_grid bit for bit; a product, because some
            #                               converters cannot lower pow (LiteRT: tfl.pow does not legalize)
            boxes.append(torch.cat((xy, wh), 4).view(bs, self.na * nx * ny, 4))
            scores.append(conf.reshape(bs, self.na * nx * ny, self.nc + 1))
        return torch.cat(boxes, 1), torch.cat(scores, 1)

    def forward(self, xs: list[torch.Tensor]):
        if self.raw_head and not self.training:  # (B, na*(5+nc), ny, nx) per level: decoded by ops.decode_raw
            return tuple(self.m[i](xs[i]) for i in range(self.nl))
        raw = self.raw_maps(xs)
        return raw if self.training else self.decode(raw)


def _resolve_arg(a: Any, nc: int, anchors: Any) -> Any:
    if isinstance(a, str):
        return {"None": None, "nc": nc, "anchors": anchors, "True": True, "False": False}.get(a, a)
    return a


def _build(mod, args: list, act):
    """``mod(*args)``, with the yaml's activation as ``act`` for the Conv-based modules (an ``act``
    given positionally in the yaml row is kept, except True, which means the yaml's activation)."""
    if mod not in _CHANNEL_MODULES.values():
        return mod(*args)
    names = list(inspect.signature(mod).parameters)
    k = names.index("act")
    if len(args) <= k:
        return mod(*args, act=act)
    return mod(*[act if j == k and a is True else a for j, a in enumerate(args)])


def parse_model(cfg: dict, ch: int = 3) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list from a yaml dict; returns (layers, indices whose outputs are kept)."""
    nc, anchors = cfg["nc"], cfg["anchors"]
    gd, gw = cfg.get("depth_multiple", 1.0), cfg.get("width_multiple", 1.0)
    ch_mul = cfg.get("channel_multiple", 8)
    act = cfg.get("activation")
    try:
        make_activation(act)
    except ValueError as e:
        raise ValueError(f"model yaml: {e}") from None
    act = True if act is None else act  # what every Conv-based module gets (True = SiLU)
    na = len(anchors[0]) // 2 if isinstance(anchors, list) else anchors
    no = na * (nc + 5)

    layers, save, chs = [], [], [ch]
    for i, (f, n, name, args) in enumerate(cfg["backbone"] + cfg["head"]):
        args = [_resolve_arg(a, nc, anchors) for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        if name in _CHANNEL_MODULES:
            mod = _CHANNEL_MODULES[name]
            c1, c2 = chs[f], args[0]
            if c2 != no:
                c2 = make_divisible(c2 * gw, ch_mul)
            args = [c1, c2, *args[1:]]
            if mod in _REPEAT_INSIDE:
                args.insert(2, n)
                n = 1
        elif name in ("nn.BatchNorm2d", "BatchNorm2d"):
            mod, c2 = nn.BatchNorm2d, chs[f]
            args = [chs[f]]
        elif name == "Concat":
            mod, c2 = Concat, sum(chs[x] for x in f)
        elif name == "Detect":
            mod = Detect
            args.append([chs[x] for x in f])
            if isinstance(args[1], int):  # number of anchors per level -> placeholder anchors
                args[1] = [list(range(args[1] * 2))] * len(f)
            c2 = chs[f[-1]]
        elif name in ("nn.Upsample", "Upsample"):
            mod, c2 = nn.Upsample, chs[f]
        else:
            raise ValueError(f"model yaml: layer {i} uses module {name}, which yolopt does not support")

        m = nn.Sequential(*(_build(mod, args, act) for _ in range(n))) if n > 1 else _build(mod, args, act)
        m.i, m.f, m.type = i, f, name
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m)
        if i == 0:
            chs = []
        chs.append(c2)
    return nn.Sequential(*layers), sorted(set(save))


class DetectionModel(nn.Module):
    """A YOLOv5 detector. ``model.yaml`` is the architecture, ``model.names`` the classes."""

    def __init__(self, cfg: dict, ch: int = 3, nc: int | None = None, anchors=None, init: bool = True):
        super().__init__()
        self.yaml = copy.deepcopy(cfg)
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc is not None:
            self.yaml["nc"] = nc
        if anchors is not None:
            self.yaml["anchors"] = anchors
        self.model, self.save = parse_model(self.yaml, ch)
        self.nc = self.yaml["nc"]
        self.names = [str(i) for i in range(self.nc)]
        self.inplace = self.yaml.get("inplace", True)

        det = self.detect
        det.stride = self._probe_strides(ch)
        self.stride = det.stride.clone()
        if init:
            self._orient_anchors()
            det.anchors /= det.stride.view(-1, 1, 1)
            self._init_weights()

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    def _probe_strides(self, ch: int, s: int = 256) -> torch.Tensor:
        """Strides of the Detect inputs, from one dummy forward (eval mode: BN stats untouched)."""
        shapes = []

        class _Stop(Exception):
            pass

        def hook(_, inputs):
            shapes.extend(t.shape[-2] for t in inputs[0])
            raise _Stop

        h = self.detect.register_forward_pre_hook(hook)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                self.forward(torch.zeros(1, ch, s, s))
        except _Stop:
            pass
        finally:
            h.remove()
            self.train(was_training)
        return torch.tensor([s / x for x in shapes], dtype=torch.float32)

    def _orient_anchors(self):
        det = self.detect
        area = det.anchors.prod(-1).mean(-1).view(-1)
        if area.numel() > 1 and (area[-1] - area[0]).sign() != (det.stride[-1] - det.stride[0]).sign():
            det.anchors[:] = det.anchors.flip(0)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = BN_EPS, BN_MOMENTUM
            elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
                m.inplace = True
        det = self.detect
        for conv, s in zip(det.m, det.stride):
            b = conv.bias.view(det.na, -1)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (640 / s) ** 2)  # ~8 objects per 640 image
                b[:, 5 : 5 + det.nc] += math.log(0.6 / (det.nc - 0.99999))
            conv.bias = nn.Parameter(b.view(-1), requires_grad=True)

    def forward(self, x: torch.Tensor):
        """``x``: ``(B, ch, H, W)``. Training mode: list of raw maps ``(B, na, ny, nx, 5+nc)``;
        eval mode: decoded ``(B, N, 5+nc)`` (see :class:`Detect`)."""
        return self.detect(self.neck_features(x))

    def neck_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run every layer before Detect; returns Detect's inputs, one ``(B, C_i, H/s_i, W/s_i)``
        tensor per level (``s_i`` = ``self.stride[i]``, ``C_i`` the neck's channels there)."""
        det = self.detect
        outputs: list[torch.Tensor | None] = []
        for m in self.model:
            if m is det:
                break
            x = m(self._layer_input(m, x, outputs))
            outputs.append(x if m.i in self.save else None)
        return self._layer_input(det, x, outputs)

    @staticmethod
    def _layer_input(m: nn.Module, x, outputs: list):
        if m.f == -1:
            return x
        return outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(raw, feats)`` of one pass, for distillation, whatever the train/eval mode.

        ``x``: ``(B, ch, H, W)``. ``raw``: per level ``(B, na, ny, nx, 5+nc)`` head logits before
        decoding (the training-mode output of :meth:`forward`; ``self.detect.decode(raw)`` gives the
        eval-mode output). ``feats``: the neck tensors fed to Detect, ``(B, C_i, ny, nx)`` per level.
        BatchNorm uses batch or running statistics according to the mode, as in ``forward``.
        """
        feats = self.neck_features(x)
        return self.detect.raw_maps(feats), feats

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.stride = fn(self.stride)
        return self

    def fuse(self) -> "DetectionModel":
        """Fold every BatchNorm that follows a convolution into it (in place)."""
        fuse_conv_bn_(self)
        return self

    @property
    def is_fused(self) -> bool:
        return not any(isinstance(m, Conv) and isinstance(m.bn, nn.BatchNorm2d) for m in self.modules())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
