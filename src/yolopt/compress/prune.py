"""Structured channel pruning of a YOLOv5 ``DetectionModel`` on Torch-Pruning's dependency graph.

    >>> from yolopt.compress import PruneSpec, prune
    >>> res = prune(model, PruneSpec(ratio=0.3, method="group", round_to=8))
    >>> res.model            # a plain DetectionModel with fewer channels (yolopt.save / load / export it)
    >>> res.params_before, res.params_after, res.flops_before, res.flops_after, res.layers

Channels are removed physically (smaller ``Conv2d`` / ``BatchNorm2d`` tensors, no masks). The
dependency graph (``torch_pruning.DependencyGraph``) couples every layer that shares a channel
axis - residual adds inside C3 bottlenecks, the Concat of C3/SPPF/the neck, the Detect inputs -
so one group is always pruned with the same indices everywhere. The Detect convs' outputs
(``na * (5 + nc)`` per level) are never pruned; their inputs are.

The pieces, Torch-Pruning style: an importance (``slim`` BN |gamma|, ``l1`` filter L1 norm,
``lamp``, ``taylor`` first-order loss change, ``group`` group L2 norm) plugged into a pruner
(:class:`ChannelPruner`, whose ``step()`` prunes one step of an iterative schedule in place);
:func:`prune` is the one-shot call on a copy. ``ratio`` is the fraction of channels removed from
each prunable group (per layer, or over the whole model with ``global_``); ``target_flops`` and
``target_latency_ms`` search the ratio that reaches a FLOPs fraction or a measured latency.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from ..errors import YoloptError
from ..models.yolo import DetectionModel

log = logging.getLogger("yolopt")

METHODS = ("slim", "l1", "lamp", "taylor", "group")
BACKENDS = ("onnxruntime", "openvino", "torch")


@dataclass
class PruneSpec:
    """What to prune and how. Exactly one of ``ratio`` / ``target_flops`` / ``target_latency_ms``.

    ``ratio``: fraction of channels removed per prunable group, in (0, 1). ``target_flops``: the
    fraction of the original FLOPs to keep, in (0, 1) (0.5 = half the FLOPs). ``target_latency_ms``:
    a latency to reach, measured with ``bench.measure`` on ``backend`` at ``imgsz`` (batch 1,
    ``threads``). ``method``: the importance (see :data:`METHODS`). ``global_``: rank channels over
    the whole model instead of layer by layer. ``round_to``: channel counts left after pruning are
    multiples of this (nearest multiple, at least one multiple is kept). ``ignore``: layers left
    untouched (their inputs and outputs keep their channels): layer indices (``"0"``, ``"24"``) or
    module names (``"model.9.cv2"``). ``steps``: iterative schedule (the ratio is reached in
    ``steps`` equal steps, see :class:`ChannelPruner`). ``max_ratio``: the largest ratio the
    target searches consider. ``compensate``: fold each removed channel's mean contribution into the
    next layer (see :meth:`ChannelPruner._compensate`); off = plain removal, as most tools do. ``fill``: with
    ``target_flops``, when the uniform ratio that meets the target falls well under it (rounding makes the
    FLOPs a step function of the ratio: at round-to 16 yolov5n jumps from 0.503 to 0.403), take the largest
    ratio that misses it and prune the one group that brings the model closest under the target a step
    further (see :func:`fill_flops`).
    """

    ratio: float | None = None
    target_flops: float | None = None
    target_latency_ms: float | None = None
    method: str = "group"
    global_: bool = False
    round_to: int = 8
    ignore: tuple = ()
    layer_ratios: tuple = ()  # ((conv module name, ratio), ...): that conv's group at its own ratio
    steps: int = 1
    imgsz: int = 640
    backend: str = "onnxruntime"
    threads: int | None = None
    max_ratio: float = 0.9
    compensate: bool = True
    latency_iters: int = 30
    fill: bool = False  # target_flops: one group pruned a step further so the model lands just under the target

    def check(self) -> "PruneSpec":
        """Raise :class:`YoloptError` (one line) for a spec that cannot be run."""
        given = [k for k in ("ratio", "target_flops", "target_latency_ms") if getattr(self, k) is not None]
        for name, r in self.layer_ratios:
            if not 0.0 < float(r) < 1.0:
                raise YoloptError(f"layer ratio {name}={r}: the ratio must be between 0 and 1 (exclusive)",
                                  fields=("layer_ratios",))
        if len(given) > 1 or (not given and not self.layer_ratios):
            raise YoloptError("give exactly one of ratio, target_flops, target_latency_ms (or layer ratios)"
                              + (f" (got {', '.join(given)})" if given else ""),
                              fields=("ratio", "target_flops", "target_latency_ms"))
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise YoloptError(f"ratio {self.ratio:g}: must be between 0 and 1 (exclusive), the fraction of "
                              f"channels removed", fields=("ratio",))
        if self.target_flops is not None and not 0.0 < self.target_flops < 1.0:
            raise YoloptError(f"target_flops {self.target_flops:g}: must be between 0 and 1 (exclusive), the "
                              f"fraction of the original FLOPs to keep", fields=("target_flops",))
        if self.target_latency_ms is not None and not self.target_latency_ms > 0:
            raise YoloptError(f"target_latency_ms {self.target_latency_ms:g}: must be > 0",
                              fields=("target_latency_ms",))
        if self.method not in METHODS:
            raise YoloptError(f"method {self.method!r}: unknown pruning method; choose one of "
                              f"{', '.join(METHODS)} (or magnitude for unstructured pruning)", fields=("method",))
        if self.round_to < 1:
            raise YoloptError(f"round_to {self.round_to}: must be at least 1", fields=("round_to",))
        if self.steps < 1:
            raise YoloptError(f"steps {self.steps}: must be at least 1", fields=("steps",))
        if self.backend not in BACKENDS:
            raise YoloptError(f"backend {self.backend!r}: choose one of {', '.join(BACKENDS)}", fields=("backend",))
        if not 0.0 < self.max_ratio < 1.0:
            raise YoloptError(f"max_ratio {self.max_ratio:g}: must be between 0 and 1")
        return self


@dataclass
class PruneResult:
    """``model``: the pruned ``DetectionModel`` (eval mode). ``ratio``: the per-group channel ratio
    used (the one found by a target search). ``layers``: one row per ``Conv2d``: name,
    ``in_before``, ``out_before``, ``in_after``, ``out_after``. FLOPs are GFLOPs (2 x multiply-adds)
    of one ``(1, 3, imgsz, imgsz)`` forward, counted by ``torch.utils.flop_counter``."""

    model: DetectionModel
    ratio: float
    spec: PruneSpec
    layers: list[dict]
    params_before: int
    params_after: int
    flops_before: float
    flops_after: float
    imgsz: int
    seconds: float
    search: list[dict] = field(default_factory=list)  # target searches: the candidates tried
    kept_outputs: dict = field(default_factory=dict, repr=False)  # conv name -> output channels kept (indices)

    @property
    def channels_before(self) -> int:
        return sum(r["out_before"] for r in self.layers)

    @property
    def channels_after(self) -> int:
        return sum(r["out_after"] for r in self.layers)

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "spec": asdict(self.spec), "params_before": self.params_before,
                "params_after": self.params_after, "flops_before_g": self.flops_before,
                "flops_after_g": self.flops_after, "imgsz": self.imgsz, "seconds": round(self.seconds, 2),
                "channels_before": self.channels_before, "channels_after": self.channels_after,
                "layers": self.layers, "search": self.search}


# ----------------------------------------------------------------------------- measurements


def model_flops(model: nn.Module, imgsz: int = 640) -> float:
    """GFLOPs (2 x multiply-adds, as upstream reports) of one ``(1, ch, imgsz, imgsz)`` eval forward."""
    from torch.utils.flop_counter import FlopCounterMode

    ch = getattr(model, "yaml", {}).get("ch", 3)
    p = next(model.parameters())
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, ch, imgsz, imgsz, dtype=p.dtype, device=p.device))
    finally:
        model.train(was)
    return counter.get_total_flops() / 1e9


def layer_channels(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{name: (in_channels, out_channels)}`` of every ``Conv2d``."""
    return {n: (m.in_channels, m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def channel_table(before: dict, after: dict) -> list[dict]:
    return [{"layer": n, "in_before": b[0], "out_before": b[1], "in_after": after[n][0], "out_after": after[n][1]}
            for n, b in before.items()]


# ----------------------------------------------------------------------------- the pruner


def _importance(method: str, global_: bool):
    import torch_pruning as tp

    if method == "slim":  # network slimming: |gamma| of the BatchNorms in the group, raw (comparable after L1)
        return tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None if global_ else "mean")
    if method == "l1":  # L1 norm of the root conv's filters (Li et al. 2017)
        return tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer="mean")
    if method == "lamp":
        return tp.importance.LAMPImportance(p=2)
    if method == "taylor":
        return tp.importance.GroupTaylorImportance()
    if method == "group":  # DepGraph's group L2 norm over every layer of the group
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")
    raise YoloptError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")


def _base_pruner_class():
    import torch_pruning as tp

    class _RoundingPruner(tp.pruner.BasePruner):
        """Torch-Pruning's pruner with yolopt's rounding: the channels kept are the *nearest*
        multiple of ``round_to`` and never fewer than one multiple (upstream floors, which can
        empty a small layer)."""

        def _round_to(self, n_pruned, current_channels, round_to):
            keep = current_channels - n_pruned
            keep_r = max(round_to, int(round(keep / round_to)) * round_to)
            keep_r = min(keep_r, current_channels)
            return max(current_channels - keep_r, 0)

    return _RoundingPruner


def resolve_layers(model: DetectionModel, names, field: str = "ignore") -> list[nn.Module]:
    """``ignore`` entries -> modules: a layer index (``"9"``, 9) or a module name (``"model.9.cv2"``).
    ``field``: the spec field the names come from (named by the errors)."""
    out = []
    for spec in names:
        text = str(spec).strip()
        if not text:
            continue
        name = f"model.{text}" if text.lstrip("-").isdigit() else text
        if text.lstrip("-").isdigit() and not -len(model.model) <= int(text) < len(model.model):
            raise YoloptError(f"{field} {text}: the model has layers 0-{len(model.model) - 1}", fields=(field,))
        if text.lstrip("-").isdigit():
            out.append(model.model[int(text)])
            continue
        try:
            out.append(model.get_submodule(name))
        except AttributeError:
            raise YoloptError(f"{field} {text}: no such layer (use an index such as 9 or a module name such as "
                              f"model.9.cv2)", fields=(field,)) from None
    return out


def example_input(model: DetectionModel) -> torch.Tensor:
    """A small ``(1, ch, s, s)`` input for tracing, ``s`` = twice the largest stride (64 or 128)."""
    p = next(model.parameters())
    s = 2 * max(int(model.stride.max()), 32)
    return torch.zeros(1, model.yaml.get("ch", 3), s, s, device=p.device, dtype=p.dtype)


@contextlib.contextmanager
def _grads_on(model: nn.Module):
    """Every parameter requires grad inside the block (Torch-Pruning traces the graph through autograd,
    Taylor importance needs gradients); afterwards each parameter still present under its name gets
    its flag back. A frozen model (a trainer's teacher, ``--freeze`` layers) would otherwise trace as
    an empty graph and be "pruned" to nothing removed."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, True))


class ChannelPruner:
    """Prunes ``model`` **in place**, ``ratio`` reached in ``steps`` equal steps (iterative pruning:
    call :meth:`step`, fine-tune, call it again). Module references held elsewhere (a trainer) stay
    valid, because Torch-Pruning replaces the tensors inside the existing modules.

    ``calib``: for ``method="taylor"``, a function returning ``(imgs (B,3,H,W) in [0,1], targets
    (n,6) [image, class, cx, cy, w, h] normalised)``; the detection loss of that batch is
    back-propagated (BatchNorm in eval mode, so no statistics change) before each step.
    """

    def __init__(self, model: DetectionModel, spec: PruneSpec, ratio: float | None = None,
                 calib: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 example: torch.Tensor | None = None):
        if not isinstance(model, DetectionModel):
            raise YoloptError(f"can only prune a yolopt DetectionModel, got {type(model).__name__}")
        if model.is_fused:
            raise YoloptError("the model is fused (Conv+BN folded): prune the unfused model, fuse afterwards")
        ratio = spec.ratio if ratio is None else ratio
        if ratio is None or not 0.0 <= ratio < 1.0:
            raise YoloptError(f"pruning ratio {ratio}: must be in [0, 1)")
        if spec.method == "taylor" and calib is None:
            raise YoloptError("method taylor needs a calibration batch with labels (a labelled dataset)",
                              fields=("method", "data"))
        self.model, self.spec, self.ratio, self.calib = model, spec, ratio, calib
        self.steps_done = 0
        self._names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        # {conv name: indices (into its output channels when the pruner was made) of the channels still there}
        self.kept_outputs: dict[str, torch.Tensor] = {}
        model.eval()
        ignored = [*model.detect.m, *resolve_layers(model, spec.ignore)]
        per_layer = {}  # --layer-ratio: the groups rooted at these convs get their own ratio
        for name, r in spec.layer_ratios:
            mod = resolve_layers(model, [name], field="layer_ratios")[0]
            convs = [mod] if isinstance(mod, nn.Conv2d) else [m for m in mod.modules() if isinstance(m, nn.Conv2d)]
            if not convs or any(c in ignored for c in convs):
                raise YoloptError(f"layer ratio {name}: not a prunable conv layer (Detect outputs are never pruned)",
                                  fields=("layer_ratios",))
            per_layer.update({c: float(r) for c in convs})
        example = example_input(model) if example is None else example
        with torch.enable_grad(), _grads_on(model):
            self.pruner = _base_pruner_class()(
                model, example, _importance(spec.method, spec.global_), global_pruning=spec.global_,
                pruning_ratio=ratio, pruning_ratio_dict=per_layer or None, iterative_steps=spec.steps,
                ignored_layers=ignored,
                round_to=spec.round_to if spec.round_to > 1 else None)
        self._keep_inputs(resolve_layers(model, spec.ignore))
        self._bn_after = {m.conv: m.bn for m in model.modules()
                          if isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None),
                                                                                          nn.BatchNorm2d)}

    def _keep_inputs(self, layers: list[nn.Module]) -> None:
        """An ignored layer keeps its input channels too: the convs producing them are ignored."""
        import torch_pruning as tp

        dg = self.pruner.DG
        extra = []
        for layer in layers:
            for conv in (m for m in layer.modules() if isinstance(m, nn.Conv2d)):
                group = dg.get_pruning_group(conv, tp.prune_conv_in_channels, list(range(conv.in_channels)))
                extra += [dep.target.module for dep, _ in group if dg.is_out_channel_pruning_fn(dep.handler)]
        self.pruner.ignored_layers.extend(m for m in extra if m not in self.pruner.ignored_layers)

    def _taylor_gradients(self) -> None:
        from ..engine.loss import YoloLoss

        model = self.model
        imgs, targets = self.calib()
        p = next(model.parameters())
        model.eval()  # BatchNorm running statistics untouched
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            raw, _ = model.forward_features(imgs.to(p.device, p.dtype))
            loss, _ = YoloLoss(model)(raw, targets.to(p.device))
            loss.backward()

    @torch.no_grad()
    def _input_means(self) -> dict[nn.Module, torch.Tensor]:
        """Mean input of every ``Conv2d`` per input channel, ``{conv: (C_in,)}``, over the calibration
        images (``calib``), or over uniform-noise images when there are none (a weaker estimate)."""
        model = self.model
        p = next(model.parameters())
        if self.calib is not None:
            imgs = self.calib()[0]
        else:
            g = torch.Generator().manual_seed(0)
            imgs = torch.rand(4, model.yaml.get("ch", 3), 256, 256, generator=g)
        sums: dict[nn.Module, torch.Tensor] = {}

        def hook(mod, args):
            sums[mod] = args[0].float().mean((0, 2, 3))

        handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
        try:
            model.eval()
            model(imgs.to(p.device, p.dtype))
        finally:
            for h in handles:
                h.remove()
        return sums

    @torch.no_grad()
    def _compensate(self, group, means: dict) -> None:
        """Before ``group`` removes input channels of a conv, fold what those channels contributed on
        average into the layer after it: the BatchNorm's running mean (``Conv`` blocks) or the conv's
        bias (Detect). A removed channel then acts as its mean instead of as zero - exact for a channel
        that is constant (a BN with gamma ~ 0 outputs act(beta), not 0), and the reason a pruned model
        keeps its mAP before any fine-tuning. Borders of k > 1 convs (zero padding) are approximate."""
        dg = self.pruner.DG
        per_conv: dict[nn.Module, set] = {}
        for dep, idxs in group:
            mod = dep.target.module
            if isinstance(mod, nn.Conv2d) and dg.is_in_channel_pruning_fn(dep.handler) and mod in means:
                per_conv.setdefault(mod, set()).update(int(i) for i in idxs)
        for conv, idx_set in per_conv.items():
            mu = means[conv]
            if conv.groups != 1 or mu.numel() != conv.in_channels:
                continue
            idx = torch.tensor(sorted(idx_set), dtype=torch.long, device=mu.device)
            w = conv.weight.detach().float()  # (C_out, C_in, kh, kw)
            delta = (w[:, idx].sum((2, 3)) * mu[idx]).sum(1)  # (C_out,)
            bn = self._bn_after.get(conv)
            if bn is not None and bn.running_mean is not None and bn.running_mean.numel() == delta.numel():
                bn.running_mean.sub_(delta.to(bn.running_mean.dtype))
            elif conv.bias is not None:
                conv.bias.add_(delta.to(conv.bias.dtype))
            keep = torch.ones(mu.numel(), dtype=torch.bool, device=mu.device)
            keep[idx] = False
            means[conv] = mu[keep]

    def _record_kept(self, group) -> None:
        dg = self.pruner.DG
        for dep, idxs in group:
            mod = dep.target.module
            if isinstance(mod, nn.Conv2d) and dg.is_out_channel_pruning_fn(dep.handler) and mod in self._names:
                name = self._names[mod]
                kept = self.kept_outputs.get(name, torch.arange(mod.out_channels))
                keep = torch.ones(len(kept), dtype=torch.bool)
                keep[torch.as_tensor([int(i) for i in idxs], dtype=torch.long)] = False
                self.kept_outputs[name] = kept[keep]

    def step(self) -> list[dict]:
        """Prune one step of the schedule; returns the per-layer channel table of this step."""
        if self.steps_done >= self.spec.steps:
            raise YoloptError(f"the pruning schedule has {self.spec.steps} step(s); all were done")
        before = layer_channels(self.model)
        was = self.model.training
        self.model.eval()
        with _grads_on(self.model):
            if self.spec.method == "taylor":
                self._taylor_gradients()
            means = self._input_means() if self.spec.compensate else None
            for group in self.pruner.step(interactive=True):
                if means is not None:
                    self._compensate(group, means)
                self._record_kept(group)
                group.prune()
        self.model.zero_grad(set_to_none=True)
        self.model.detect._grids = {}
        self.model.train(was)
        self.steps_done += 1
        return channel_table(before, layer_channels(self.model))


def prune_at(model: DetectionModel, spec: PruneSpec, ratio: float, calib=None,
             kept: dict | None = None) -> DetectionModel:
    """A pruned deep copy of ``model`` at channel ratio ``ratio`` (all steps at once). ``kept``: a dict
    filled with :attr:`ChannelPruner.kept_outputs` (which output channels of each conv remain)."""
    m = copy.deepcopy(model).eval()
    if ratio <= 0 and not spec.layer_ratios:
        return m
    pr = ChannelPruner(m, spec, ratio=ratio, calib=calib)
    for _ in range(spec.steps):
        pr.step()
    if kept is not None:
        kept.update(pr.kept_outputs)
    return m


def _bisect(fn_value: Callable[[float], float], target: float, hi: float, iters: int, record: list) -> float:
    """The smallest ratio in (0, hi] whose value (FLOPs fraction / latency, decreasing in ratio)
    is <= target, by bisection; ``record`` collects every candidate."""
    lo_r, hi_r = 0.0, hi
    for _ in range(iters):
        mid = (lo_r + hi_r) / 2
        v = fn_value(mid)
        record.append({"ratio": round(mid, 4), "value": v})
        if v <= target:
            hi_r = mid
        else:
            lo_r = mid
    return hi_r


def search_ratio_flops(model: DetectionModel, spec: PruneSpec, calib=None, iters: int = 6,
                       record: list | None = None) -> float:
    """The channel ratio whose pruned model keeps at most ``spec.target_flops`` of the FLOPs."""
    record = [] if record is None else record
    imgsz = min(spec.imgsz, 320)  # FLOPs scale with the pixel count: the fraction is the same
    base = model_flops(model, imgsz)
    one_step = PruneSpec(**{**asdict(spec), "steps": 1})

    def frac(r):
        return model_flops(prune_at(model, one_step, r, calib), imgsz) / base

    floor = frac(spec.max_ratio)
    record.append({"ratio": spec.max_ratio, "value": floor})
    if floor > spec.target_flops:
        raise YoloptError(f"target_flops {spec.target_flops:g} is not reachable: pruning {spec.max_ratio:.0%} of "
                          f"the channels still keeps {floor:.3f} of the FLOPs (ignore and round_to limit it)",
                          fields=("target_flops", "ignore", "round_to"))
    return _bisect(frac, spec.target_flops, spec.max_ratio, iters, record)


def search_flops_target(model: DetectionModel, spec: PruneSpec, calib=None, record: list | None = None
                        ) -> tuple[float, PruneSpec]:
    """The ratio for ``spec.target_flops`` (:func:`search_ratio_flops`) and the spec to prune with: with
    ``spec.fill``, the largest ratio that missed the target plus the one group :func:`fill_flops` prunes further
    (as a layer ratio), when that lands closer under the target."""
    record = [] if record is None else record
    ratio = search_ratio_flops(model, spec, calib, record=record)
    filled = fill_flops(model, spec, calib, record) if spec.fill and not spec.layer_ratios else None
    if filled:
        return filled[0], replace(spec, layer_ratios=filled[1])
    return ratio, spec


FILL_GAP = 0.01  # fill only when the uniform ratio lands more than this under the FLOPs target


def fill_flops(model: DetectionModel, spec: PruneSpec, calib=None, record: list | None = None
               ) -> tuple[float, tuple] | None:
    """``(ratio, layer_ratios)`` that keep the most FLOPs at or under ``spec.target_flops``: the largest searched
    ratio that missed the target, with one group pruned by one more ``round_to`` step (every prunable group is
    tried once); None when that is no closer to the target than the uniform ratio. ``record``: the uniform
    search's candidates (:func:`search_ratio_flops`); this search's best is appended to it."""
    record = [] if record is None else record
    target = spec.target_flops
    under = [r for r in record if r["value"] <= target]
    over = [r for r in record if r["value"] > target]
    if not under or not over:
        return None
    best_uniform = max(r["value"] for r in under)
    if target - best_uniform <= FILL_GAP:
        return None
    lo = max(r["ratio"] for r in over)
    imgsz = min(spec.imgsz, 320)
    base = model_flops(model, imgsz)
    one_step = PruneSpec(**{**asdict(spec), "steps": 1, "fill": False, "target_flops": None, "ratio": lo})
    step = max(spec.round_to, 1)
    at_lo_model = prune_at(model, one_step, lo, calib)
    at_lo, before = layer_channels(at_lo_model), layer_channels(model)
    # Every group's FLOPs one step further, computed from the pruned model's dependency graph (conv FLOPs are
    # bilinear in the channel counts, so this is exact); only the best candidates are then pruned for real.
    estimates = []
    for name, fl in _one_step_flops(at_lo_model, one_step, lo, step, imgsz).items():
        n, k = before[name][1], at_lo[name][1]
        if k - step < step:
            continue
        v = fl / base
        if best_uniform < v <= target + 1e-9:
            estimates.append((v, name, min((n - k + step) / n + 1e-6, spec.max_ratio)))
    for _, name, r in sorted(estimates, reverse=True):
        try:
            v = model_flops(prune_at(model, replace(one_step, layer_ratios=((name, r),)), lo, calib), imgsz) / base
        except YoloptError:
            continue
        if best_uniform < v <= target:
            record.append({"ratio": round(lo, 4), "layer_ratios": [[name, round(r, 4)]], "value": v})
            return lo, ((name, r),)
    return None


def _one_step_flops(model: DetectionModel, spec: PruneSpec, ratio: float, step: int, imgsz: int) -> dict[str, float]:
    """``{root conv name: GFLOPs of model with that conv's dependency group pruned by step more channels}``, from
    the per-conv FLOPs of one forward and the channel counts each group removes from each conv. Groups whose
    convs are grouped (depthwise) are left out."""
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    names = {mod: n for n, mod in m.named_modules()}
    hw: dict[nn.Conv2d, int] = {}
    hooks = [c.register_forward_hook(lambda mod, a, out: hw.__setitem__(mod, out.shape[-2] * out.shape[-1]))
             for c in m.modules() if isinstance(c, nn.Conv2d)]
    try:
        with torch.no_grad():
            m(torch.zeros(1, m.yaml.get("ch", 3), imgsz, imgsz, dtype=next(m.parameters()).dtype))
    finally:
        for h in hooks:
            h.remove()

    def flops(conv, d_out=0, d_in=0):
        kh, kw = conv.kernel_size
        return 2 * (conv.out_channels - d_out) * (conv.in_channels - d_in) * kh * kw * hw[conv] / 1e9

    total = sum(flops(c) for c in hw)
    pr = ChannelPruner(m, spec, ratio=ratio)
    dg = pr.pruner.DG
    out = {}
    for group in dg.get_all_groups(ignored_layers=pr.pruner.ignored_layers, root_module_types=[nn.Conv2d]):
        root = group[0].dep.target.module
        if group[0].dep.handler != tp.prune_conv_out_channels or root.out_channels <= step:
            continue
        cut: dict[nn.Conv2d, list[set]] = {}
        for dep, idxs in dg.get_pruning_group(root, tp.prune_conv_out_channels, list(range(step))):
            mod = dep.target.module
            if isinstance(mod, nn.Conv2d) and mod in hw:
                slot = 0 if dg.is_out_channel_pruning_fn(dep.handler) else 1 if dg.is_in_channel_pruning_fn(
                    dep.handler) else None
                if slot is not None:
                    cut.setdefault(mod, [set(), set()])[slot].update(int(i) for i in idxs)
        if any(c.groups != 1 for c in cut):
            continue
        out[names[root]] = total - sum(flops(c) - flops(c, len(o), len(i)) for c, (o, i) in cut.items())
    return out


def measure_latency(model: nn.Module, imgsz: int, backend: str = "onnxruntime", threads: int | None = None,
                    iters: int = 30, warmup: int = 5) -> dict:
    """Model-only latency of ``model`` (batch 1, ``imgsz``) on ``backend``, through ``bench.measure``:
    ONNX Runtime and OpenVINO run a fused FP32 export written to a temporary folder, ``torch`` the
    module itself. Returns ``BenchRecord.to_dict()`` (``latency_ms`` p50/p90/p99/mean, ``machine``)."""
    import tempfile
    from pathlib import Path

    from .. import bench, runtime

    if backend == "torch":
        rec = bench.measure(runtime.open(copy.deepcopy(model).eval(), threads=threads), imgsz,
                            bench.BenchSpec(iters=iters, warmup=warmup), model_name="in-memory model")
        return rec.to_dict()
    from ..export import ExportSpec, export

    fmt = {"onnxruntime": "onnx", "openvino": "openvino"}[backend]
    with tempfile.TemporaryDirectory(prefix="yolopt-prune-") as tmp:
        out = Path(tmp) / ("m.onnx" if fmt == "onnx" else "m_openvino/m.xml")
        res = export(copy.deepcopy(model).eval(), ExportSpec(format=fmt, imgsz=imgsz, out=out, verify=False))
        b = runtime.open(res.path, threads=threads)
        rec = bench.measure(b, imgsz, bench.BenchSpec(iters=iters, warmup=warmup),
                            model_name=f"pruned candidate ({fmt})")
        del b
    return rec.to_dict()


def search_ratio_latency(model: DetectionModel, spec: PruneSpec, calib=None, iters: int = 5,
                         record: list | None = None) -> float:
    """The smallest channel ratio whose pruned model measures <= ``spec.target_latency_ms`` (p50) on
    ``spec.backend``; candidates are measured, not estimated from FLOPs."""
    record = [] if record is None else record
    one_step = PruneSpec(**{**asdict(spec), "steps": 1})

    def lat(r):
        m = prune_at(model, one_step, r, calib) if r > 0 else model
        ms = measure_latency(m, spec.imgsz, spec.backend, spec.threads, iters=spec.latency_iters)["latency_ms"]["p50"]
        log.info("  candidate ratio %.3f: %.2f ms (%s)", r, ms, spec.backend)
        return ms

    base = lat(0.0)
    record.append({"ratio": 0.0, "value": base})
    target = spec.target_latency_ms
    if base <= target:
        raise YoloptError(f"target_latency_ms {target:g}: the unpruned model already measures {base:.2f} ms on "
                          f"{spec.backend} at {spec.imgsz}; nothing to prune for it", fields=("target_latency_ms",))
    floor = lat(spec.max_ratio)
    record.append({"ratio": spec.max_ratio, "value": floor})
    if floor > target:
        raise YoloptError(f"target_latency_ms {target:g} is not reachable on {spec.backend} at {spec.imgsz}: "
                          f"unpruned {base:.2f} ms, pruning {spec.max_ratio:.0%} of the channels still measures "
                          f"{floor:.2f} ms", fields=("target_latency_ms", "backend", "imgsz"))
    return _bisect(lat, target, spec.max_ratio, iters, record)


def prune(model: DetectionModel, spec: PruneSpec, calib=None) -> PruneResult:
    """Prune a deep copy of ``model`` (all ``spec.steps`` at once, no fine-tuning between them).

    ``model``: an unfused ``DetectionModel``; it is not modified. The result's model is a plain
    ``DetectionModel`` in eval mode whose forward takes the same ``(B, 3, H, W)`` input and returns
    the same ``(B, N, 5+nc)`` output shape; it round-trips through ``yolopt.save`` / ``yolopt.load``.
    """
    spec.check()
    t0 = time.perf_counter()
    search: list[dict] = []
    if spec.target_flops is not None:
        ratio, spec = search_flops_target(model, spec, calib, record=search)
    elif spec.target_latency_ms is not None:
        ratio = search_ratio_latency(model, spec, calib, record=search)
    else:
        ratio = spec.ratio or 0.0  # only --layer-ratio groups: the others keep their channels
    before = layer_channels(model)
    kept: dict = {}
    pruned = prune_at(model, spec, ratio, calib, kept=kept)
    pruned.provenance = {**(getattr(model, "provenance", None) or {}),
                         "pruned": {"method": spec.method, "ratio": round(ratio, 4), "global": spec.global_,
                                    "round_to": spec.round_to,
                                    **({"layer_ratios": [list(x) for x in spec.layer_ratios]} if spec.layer_ratios else {})}}
    return PruneResult(
        model=pruned.eval(), ratio=ratio, spec=spec, layers=channel_table(before, layer_channels(pruned)),
        params_before=model.num_params(), params_after=pruned.num_params(),
        flops_before=model_flops(model, spec.imgsz), flops_after=model_flops(pruned, spec.imgsz),
        imgsz=spec.imgsz, seconds=time.perf_counter() - t0, search=search, kept_outputs=kept)


def check_rounding(layers: list[dict], round_to: int) -> list[str]:
    """Names of pruned layers whose output channel count is not a multiple of ``round_to``."""
    return [r["layer"] for r in layers if r["out_after"] != r["out_before"] and r["out_after"] % round_to]

