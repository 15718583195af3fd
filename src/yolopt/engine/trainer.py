"""The training loop (single process or DDP), usable from Python and from ``yolopt train``.

    >>> from yolopt.engine import train
    >>> res = train(data="synth/data.yaml", cfg="yolov5n", epochs=30, imgsz=320, batch=32)
    >>> res.best, res.best_fitness

Seams for compression (pruning, distillation, QAT): ``train(..., model=pruned)`` trains a
model given in Python; :class:`Callback` hooks ``prepare_model`` (swap modules before the
optimizer exists), ``extra_loss``, ``on_after_backward`` (regularise gradients before each
step) and the epoch / step hooks; ``Trainer.rebuild_optimizer()`` after changing the model's
shape; ``Trainer.teacher_outputs(imgs)`` and ``trainer.student_feats`` (with
``Callback.needs_features``) for distillation. The ``teacher``, when given, is copied, and the
copy moved to the device, frozen and exposed as ``trainer.teacher`` (the caller's module is left as it was).
"""

from __future__ import annotations

import copy
import csv
import difflib
import io
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from ..errors import YoloptError
from ..fileio import FolderLock, atomic_write
from ..models.checkpoint import load_model, model_from_tensors, save_model
from ..models.configs import load_config
from ..models.yolo import DetectionModel
from .checkpoint import (
    optimizer_state_from,
    prefixed,
    read_train_checkpoint,
    save_train_checkpoint,
    set_rng_state,
)
from .ema import ModelEMA, unwrap
from .loader import EpochSampler, TrainDataset, index_split, index_unlabeled, make_loader
from .loss import DEFAULT_HYP, YoloLoss, scaled_loss_hyp

log = logging.getLogger("yolopt")

LAST, BEST = "last.safetensors", "best.safetensors"
CSV_FIELDS = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
              "metrics/mAP50", "metrics/mAP50-95", "fitness", "lr/pg0", "lr/pg1", "lr/pg2", "epoch_s", "images_per_s"]


class TrainingError(YoloptError):
    """Training stopped (e.g. a non-finite loss); the message says what was kept."""


class Callback:
    """Override any of these to extend training. ``trainer`` gives access to everything
    (``model``, ``ema``, ``optimizer``, ``teacher``, ``epoch``, ``cfg``...); see :class:`Trainer`.

    Order within a run: ``prepare_model`` (setup) -> ``on_train_start`` -> per epoch
    ``on_epoch_start`` -> per batch [``extra_loss`` -> backward -> at each optimizer step
    ``on_after_backward`` -> clip, step -> ``on_step_end``] -> ``before_validate`` (rank 0 only)
    -> validation, checkpoint -> ``on_epoch_end`` (rank 0 only, after the epoch's checkpoint is written).
    """

    #: set True to get the student's neck features of each batch as ``trainer.student_feats``
    #: (captured in the training forward pass itself; off by default, so it costs nothing)
    needs_features: bool = False

    def prepare_model(self, trainer: "Trainer", model: nn.Module) -> nn.Module | None:
        """Once, after the model is built and moved to the device, before the optimizer and EMA
        exist (swap modules for QAT, prune once...). Return a module to train it instead.
        When resuming, the checkpoint's weights are loaded after this hook (``trainer.resuming``)."""
        return None

    def on_train_start(self, trainer: "Trainer") -> None: ...

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        """Every rank, before the epoch's first batch (the place to change the model on all DDP ranks)."""

    def extra_loss(self, trainer: "Trainer", imgs: torch.Tensor, targets: torch.Tensor,
                   preds: list[torch.Tensor]) -> torch.Tensor | None:
        """An extra scalar loss added to the detection loss (already scaled as you want it).

        ``imgs`` (B, 3, H, W) in [0, 1]; ``targets`` (n, 6) rows [image, class, cx, cy, w, h]
        normalised; ``preds`` the student's raw maps, per level (B, na, ny, nx, 5+nc).
        """
        return None

    def on_after_backward(self, trainer: "Trainer") -> None:
        """At each optimizer step (so once per ``trainer.accumulate`` batches): the gradients are
        complete and unscaled; runs before gradient clipping and ``optimizer.step()``. Add
        regularisation gradients here (BN-L1 sparsity, a pruner's ``regularize(model)``)."""

    def on_step_end(self, trainer: "Trainer", step: int) -> None:
        """After every optimiser step (``step`` = batches seen so far)."""

    def before_validate(self, trainer: "Trainer", epoch: int) -> None:
        """Rank 0, after the epoch's last optimizer step and before validation and the epoch's
        checkpoint: the place to fix up the EMA model that both will use (recompute BatchNorm
        statistics after a sparsity penalty). Runs every epoch, validated or not."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict) -> None: ...


@dataclass
class TrainConfig:
    data: str
    weights: str | None = None
    cfg: str | None = None
    epochs: int = 100
    imgsz: int = 640
    batch: int = 16
    workers: int = 2
    device: str = "auto"
    hyp: dict | str | None = None
    freeze: int = 0
    out: str | None = None
    val_every: int = 1
    seed: int = 0
    cos_lr: bool = False
    close_mosaic: int | None = None
    sync_bn: bool = False
    nbs: int = 64
    optimizer: str = "SGD"
    progress: bool = True
    plots: bool = True
    exist_ok: bool = False
    strict: bool = False  # images without a label file / label files without an image: an error, not a warning
    unlabeled: list[str] = field(default_factory=list)  # extra image folders / globs without labels (distillation)
    val_data: str | None = None  # data yaml to validate on (default: data, when it is a yaml)
    source: str | None = None  # names a model given in Python (model=) in the log and provenance


@dataclass
class TrainResult:
    out: Path
    last: Path
    best: Path | None
    epochs: int
    best_fitness: float
    history: list[dict] = field(default_factory=list)
    minutes: float = 0.0


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", -1)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", -1))


# keys found in upstream hyp.*.yaml files that yolopt accepts but does not use
UNUSED_UPSTREAM_HYP = {"copy_paste", "anchors"}


def load_hyp(spec) -> dict:
    """hyp.scratch-low defaults overridden by a yaml file or a dict (unknown keys are an error)."""
    if spec is None:
        return dict(DEFAULT_HYP)
    if isinstance(spec, dict):
        extra = spec
    else:
        p = Path(spec)
        if not p.is_file():
            raise YoloptError(f"{p}: hyperparameter file not found")
        try:
            extra = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise YoloptError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(extra, dict):
            raise YoloptError(f"{p}: hyperparameter file must be a mapping of name: value")
    where = "hyp" if isinstance(spec, dict) else str(spec)
    extra = dict(extra)
    for k in UNUSED_UPSTREAM_HYP & extra.keys():
        v = extra.pop(k)
        if v:  # upstream hyp files carry these; yolopt does not implement them
            log.warning("%s: hyperparameter %r=%s is not implemented by yolopt and is ignored", where, k, v)
    unknown = sorted(set(extra) - set(DEFAULT_HYP))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(DEFAULT_HYP), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise YoloptError(f"{where}: unknown hyperparameter {unknown[0]!r}{hint}")
    bad = [k for k, v in extra.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise YoloptError(f"{where}: hyperparameter {bad[0]!r} must be a number")
    return {**DEFAULT_HYP, **{k: float(v) for k, v in extra.items()}}


def _next_run_dir(base: Path) -> Path:
    if not base.exists() or not any(base.iterdir()):
        return base
    for i in range(2, 10_000):
        cand = base.with_name(f"{base.name}{i}")
        if not cand.exists() or not any(cand.iterdir()):
            return cand
    raise YoloptError(f"{base}: too many runs")


def lr_lambda(epochs: int, lrf: float, cos: bool):
    if cos:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


OPTIMIZERS = ("SGD", "Adam", "AdamW")


def build_optimizer(model: nn.Module, lr: float, momentum: float, decay: float,
                    name: str = "SGD") -> torch.optim.Optimizer:
    """3 groups: biases (no decay), weights (decay), BatchNorm weights (no decay).

    SGD is nesterov with ``momentum``; Adam / AdamW use ``momentum`` as beta1 (as upstream).
    """
    biases, weights, bn = [], [], []
    norm_types = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))
    for mod in model.modules():
        for pname, p in mod.named_parameters(recurse=False):
            if pname == "bias":
                biases.append(p)
            elif pname == "weight" and isinstance(mod, norm_types):
                bn.append(p)
            else:
                weights.append(p)
    if name == "SGD":
        opt = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    elif name in OPTIMIZERS:
        opt = getattr(torch.optim, name)(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise YoloptError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    opt.add_param_group({"params": weights, "weight_decay": decay})
    opt.add_param_group({"params": bn, "weight_decay": 0.0})
    return opt


def _transfer(src: DetectionModel, dst: DetectionModel) -> int:
    """Copy every tensor whose name and shape match; returns how many were copied."""
    ssd, dsd = src.state_dict(), dst.state_dict()
    common = {k: v for k, v in ssd.items() if k in dsd and v.shape == dsd[k].shape}
    dst.load_state_dict(common, strict=False)
    return len(common)


def close_mosaic_epochs(close_mosaic: int | None, epochs: int) -> int:
    """How many final epochs train without mosaic: ``close_mosaic`` capped at ``epochs``; ``None``
    (the default) means 10 when the run is longer than 10 epochs and 0 otherwise."""
    if close_mosaic is None:
        return 10 if epochs > 10 else 0
    return min(int(close_mosaic), epochs)


class Trainer:
    """One training run. ``train()`` builds everything (:meth:`_setup`), then runs the epochs.

    ``model``: a ``DetectionModel`` to train instead of loading ``cfg.weights`` / ``cfg.cfg``
    (e.g. a pruned one with irregular channel counts). It is trained in place (moved to the
    device, float32), so objects holding references to its modules - a pruner - stay valid;
    its class count must match the data's.

    Attributes for callbacks: ``cfg``, ``hyp``, ``model`` (DDP-wrapped under torchrun; use
    ``engine.ema.unwrap``), ``ema`` (rank 0), ``optimizer``, ``scheduler``, ``loss_fn``,
    ``teacher``, ``device``, ``epoch``, ``imgsz``, ``accumulate``, ``history``, ``resuming``,
    ``student_feats`` (see :class:`Callback` ``needs_features``). Methods: :meth:`teacher_outputs`,
    :meth:`rebuild_optimizer`.
    """

    def __init__(self, cfg: TrainConfig, callbacks: list[Callback] | None = None, teacher: nn.Module | None = None,
                 resume: str | Path | None = None, model: DetectionModel | None = None):
        self.cfg = cfg
        self.callbacks = list(callbacks or [])
        self.teacher = teacher
        self.resume_path = Path(resume) if resume else None
        self.given_model = model
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.ema: ModelEMA | None = None
        self.student_feats: list[torch.Tensor] | None = None
        self._in_step = False
        self.rank, self.world, self.local_rank = _dist_env()
        self.main = self.rank in (-1, 0)
        if not self.main:  # rank-0-only logging; warnings and errors still show
            logging.getLogger("yolopt").setLevel(logging.WARNING)
        self.epoch = 0
        self.history: list[dict] = []
        self.best_fitness = -1.0
        self._lock: FolderLock | None = None  # held on the run folder while this run writes into it

    @property
    def resuming(self) -> bool:
        return self.resume_path is not None

    def _callback(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)  # duck-typed callbacks may define only some hooks
            if fn is not None:
                fn(self, *args)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        self._load_resume_state()
        self._check_config()
        self._init_process()
        self._prepare_out_dir()
        self._build_data()
        self._build_model()
        self._build_optimizer()
        self._build_loss()
        self._wrap_model()
        self._build_loader()
        self._prepare_teacher()
        if self.resuming:
            self._restore_train_state()
        self._write_config()

    def _load_resume_state(self) -> None:
        """Resuming: read the checkpoint; its run config wins, except device / workers / progress."""
        cfg = self.cfg
        if not self.resuming:  # absolute paths, so `--resume` works from any folder
            cfg.data = str(Path(cfg.data).resolve()) if Path(cfg.data).exists() else cfg.data
            cfg.unlabeled = [str(Path(u).resolve()) if Path(u).exists() else str(u) for u in cfg.unlabeled]
            if cfg.val_data and Path(cfg.val_data).exists():
                cfg.val_data = str(Path(cfg.val_data).resolve())
            if cfg.weights and Path(cfg.weights).exists():
                cfg.weights = str(Path(cfg.weights).resolve())
            return
        self._tensors, self._meta, self._state = read_train_checkpoint(self.resume_path)
        saved = self._state["config"]
        keep = {"device": cfg.device, "workers": cfg.workers, "progress": cfg.progress}
        self.cfg = TrainConfig(**{**saved, **keep, "out": str(self.resume_path.parent)})
        if int(self._state["epoch"]) + 1 >= self.cfg.epochs:
            raise YoloptError(f"{self.resume_path}: run already finished ({self.cfg.epochs} epochs); nothing to resume")

    def _check_config(self) -> None:
        cfg = self.cfg
        if cfg.epochs < 1:
            raise YoloptError(f"--epochs {cfg.epochs}: must be at least 1")
        if cfg.batch < 1:
            raise YoloptError(f"--batch {cfg.batch}: must be at least 1")
        if self.given_model is not None:
            if self.resuming:
                raise YoloptError("model= cannot be combined with resume: a resumed run rebuilds its model "
                                  "from the checkpoint")
            if cfg.weights or cfg.cfg:
                raise YoloptError("give model= or weights/cfg, not both")
            if not isinstance(self.given_model, DetectionModel):
                raise YoloptError(f"model=: expected a yolopt DetectionModel, got {type(self.given_model).__name__}")
        self.hyp = load_hyp(cfg.hyp)

    def _init_process(self) -> None:
        """Process group (DDP), device and seeds."""
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and self.cfg.device != "cpu" else "gloo"
            torch.distributed.init_process_group(backend)
        self.device = self._device()
        seed = self.cfg.seed + max(self.rank, 0)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _device(self) -> torch.device:
        spec = str(self.cfg.device or "auto")
        if self.world > 1:
            if spec != "cpu" and torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
                return torch.device("cuda", self.local_rank)
            return torch.device("cpu")
        if "," in spec:
            raise YoloptError(f"--device {spec}: for several GPUs launch with "
                              f"`torchrun --nproc_per_node {len(spec.split(','))} -m yolopt train ...`")
        from ..runtime.device import pick_device

        return pick_device(spec)

    def _prepare_out_dir(self) -> None:
        cfg = self.cfg
        if not self.resuming:
            if cfg.out:
                out = Path(cfg.out)
            else:
                out = _next_run_dir(Path("runs/train/exp")) if self.main else None
                if self.world > 1:  # every rank must use rank 0's choice
                    box = [str(out) if out else None]
                    torch.distributed.broadcast_object_list(box, src=0)
                    out = Path(box[0])
            cfg.out = str(out)
        self.out = Path(cfg.out)
        if self.main:  # one run per folder: a second train / resume into it is refused while this one lives
            self._lock = FolderLock(self.out, "training run").__enter__()
            if not self.resuming and (self.out / LAST).exists() and not cfg.exist_ok:  # after the lock: a live
                self._lock.__exit__(None, None, None)  # run is named first, a finished one gets this line
                self._lock = None
                raise YoloptError(f"{self.out}: already holds a training run; continue it with --resume {self.out} "
                                  f"or choose another --out")

    def _build_data(self) -> None:
        """Class names and the train index (labels checked once; the cache is shared by all ranks).

        ``data`` is a data yaml (its ``train`` split, labelled) or images without labels (a folder,
        file or glob); ``unlabeled`` adds more of those. Unlabelled images need a teacher: its
        outputs are their only targets (see ``compress.OutputDistillation``); the detection loss
        skips them. Without labelled data the class names are the teacher's."""
        from ..data.dataset import is_image_source, load_data_config

        cfg = self.cfg
        labeled_data = not is_image_source(cfg.data)
        if labeled_data:
            dcfg = load_data_config(cfg.data)
            self.train_index, self.names = index_split(cfg.data, "train", strict=cfg.strict)
            self.has_val = "val" in dcfg.splits
        else:
            self.train_index, self.names, self.has_val = index_unlabeled([cfg.data]), None, False
        if cfg.unlabeled:
            self.train_index = self.train_index + index_unlabeled(cfg.unlabeled)
        lab = self.train_index.labeled
        self.n_unlabeled = 0 if lab is None else int((~lab).sum())
        if self.n_unlabeled and self.teacher is None:
            src = ", ".join([cfg.data] if not labeled_data else cfg.unlabeled)
            raise YoloptError(f"{src}: images without labels need a teacher to supply their targets (distillation: "
                              f"yolopt prune ... --distill, or train(teacher=..., callbacks=[OutputDistillation()]))")
        if self.names is None:
            self.names = list(self.teacher.names)
        if cfg.val_data:
            vcfg = load_data_config(cfg.val_data)
            if "val" not in vcfg.splits:
                raise YoloptError(f"{cfg.val_data}: no `val` split to validate on")
            if vcfg.nc != len(self.names):
                raise YoloptError(f"{cfg.val_data}: has {vcfg.nc} classes but the training classes are "
                                  f"{len(self.names)}")
            self.has_val = True

    def _build_model(self) -> None:
        """The model to train: rebuilt from the resume checkpoint (its tensor shapes, so pruned
        runs resume), the given module, ``--weights`` or ``--cfg``. Moved to the device, passed
        through ``Callback.prepare_model``, frozen layers set; ``self.nc``, ``self.gs``, ``self.imgsz``."""
        cfg, names = self.cfg, self.names
        if self.resuming:
            model = model_from_tensors(self._meta, self._tensors, self.resume_path)
            what = str(self.resume_path)
        elif self.given_model is not None:
            model, what = self.given_model, "model="
        else:
            model, what = self._model_from_files(len(names), names), cfg.weights or cfg.cfg
        if model.nc != len(names):
            raise YoloptError(f"{what}: the model predicts {model.nc} classes but {cfg.data} has {len(names)}; "
                              f"the class counts must match")
        if model is not self.given_model:
            model.provenance = {}  # where the file came from is not this run's provenance (see _save)
        model.names = list(names)
        model = model.float()
        self.nc = model.nc
        self.gs = max(int(model.stride.max()), 32)
        self.imgsz = int(math.ceil(cfg.imgsz / self.gs) * self.gs)
        if self.imgsz != cfg.imgsz:
            log.warning("--imgsz %d is not a multiple of the model stride %d; using %d", cfg.imgsz, self.gs, self.imgsz)
        model = model.to(self.device)
        for cb in self.callbacks:
            prepare = getattr(cb, "prepare_model", None)
            new = prepare(self, model) if prepare is not None else None
            if new is not None:
                model = new
        self._freeze(model)
        if self.resuming:  # the raw (non-EMA) weights, into the prepared model
            model.load_state_dict(prefixed(self._tensors, "train.model."))
        self.model = model

    def _model_from_files(self, nc: int, names: list[str]) -> DetectionModel:
        cfg = self.cfg
        if cfg.weights:
            src = load_model(cfg.weights)
            if src.nc == nc:
                model = src
            else:
                model = DetectionModel(src.yaml, nc=nc)
                n = _transfer(src, model)
                log.info("transferred %d/%d tensors from %s (nc %d -> %d)", n, len(model.state_dict()), cfg.weights,
                         src.nc, nc)
        elif cfg.cfg:
            try:
                yaml_cfg = load_config(cfg.cfg)
            except KeyError as e:
                raise YoloptError(f"--cfg {cfg.cfg}: {e.args[0]}") from None
            except (ValueError, OSError) as e:
                raise YoloptError(f"--cfg {cfg.cfg}: {e}") from None
            try:
                model = DetectionModel(yaml_cfg, nc=nc)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise YoloptError(f"--cfg {cfg.cfg}: cannot build the model ({e})") from None
        else:
            raise YoloptError("give --weights (start from a trained model) or --cfg (train from scratch), "
                              "or model= from Python")
        model.names = list(names)
        return model.float()

    def _freeze(self, model: nn.Module) -> None:
        """``--freeze N``: layers ``model.0`` .. ``model.N-1`` get no gradients; the rest do."""
        frozen = [f"model.{i}." for i in range(self.cfg.freeze)]
        for name, p in model.named_parameters():
            p.requires_grad_(not any(name.startswith(f) for f in frozen))

    def _build_optimizer(self) -> None:
        """Optimizer (3 param groups), lr schedule, EMA (rank 0) and the AMP grad scaler."""
        cfg = self.cfg
        self.batch_rank = max(cfg.batch // self.world, 1)
        self.accumulate = max(round(cfg.nbs / cfg.batch), 1)
        self.weight_decay = self.hyp["weight_decay"] * cfg.batch * self.accumulate / cfg.nbs
        self.optimizer = self._new_optimizer()
        # a 0.1 bias lr during warm-up suits SGD; Adam-family steps are lr-sized, so biases warm up from 0
        self.warmup_bias_lr = self.hyp["warmup_bias_lr"] if cfg.optimizer == "SGD" else 0.0
        self.lf = lr_lambda(cfg.epochs, self.hyp["lrf"], cfg.cos_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.ema = ModelEMA(self.model) if self.main else None
        self.start_epoch, self.last_opt_step = 0, -1
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(unwrap(self.model), self.hyp["lr0"], self.hyp["momentum"], self.weight_decay,
                               self.cfg.optimizer)

    def _build_loss(self) -> None:
        model = unwrap(self.model)
        det = model.detect
        model.hyp = scaled_loss_hyp(self.hyp, det.nl, det.nc, self.imgsz)
        model.gr = 1.0
        self.loss_fn = YoloLoss(model, model.hyp)

    def _wrap_model(self) -> None:
        """Several processes: SyncBatchNorm (``--sync-bn``) and DistributedDataParallel."""
        if self.world == 1:
            return
        model = unwrap(self.model)
        if self.cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.local_rank] if self.device.type == "cuda" else None
        self.model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _build_loader(self) -> None:
        """This rank's share of every epoch; ``self.nb`` batches per epoch, ``self.nw`` warm-up iterations."""
        cfg = self.cfg
        self.dataset = TrainDataset(self.train_index, self.imgsz, self.hyp, seed=cfg.seed, augment=True)
        self.sampler = EpochSampler(len(self.dataset), seed=cfg.seed, rank=max(self.rank, 0), world=self.world)
        self.loader = make_loader(self.dataset, self.batch_rank, cfg.workers, self.sampler,
                                  pin=self.device.type == "cuda")
        self.nb = len(self.loader)
        # upstream's rule (at least 100 iterations); warmup_epochs 0 means no warm-up at all, which short
        # fine-tunes need: 100 iterations of bias lr from 0.1 can be most of a 2-epoch run
        self.nw = max(round(self.hyp["warmup_epochs"] * self.nb), 100) if self.hyp["warmup_epochs"] > 0 else 0

    def _prepare_teacher(self) -> None:
        """A frozen copy of the teacher on the device: the caller's module keeps its device, mode and
        ``requires_grad`` flags (freezing it in place left a model that Torch-Pruning cannot trace)."""
        if self.teacher is not None:
            self.teacher = copy.deepcopy(self.teacher).to(self.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    def _restore_train_state(self) -> None:
        """Optimizer, EMA, counters, schedule and RNG states from the resume checkpoint (last in setup)."""
        st, tensors = self._state, self._tensors
        self.optimizer.load_state_dict(optimizer_state_from(tensors, st))
        if self.ema is not None:
            self.ema.ema.load_state_dict(prefixed(tensors, "model."))
            self.ema.updates = int(st["ema_updates"])
        self.start_epoch = int(st["epoch"]) + 1
        self.last_opt_step = int(st.get("last_opt_step", -1))
        self.accumulate = int(st.get("accumulate", self.accumulate))
        self.best_fitness = float(st.get("best_fitness", -1.0))
        self.history = list(st.get("history", []))
        # The schedule's position: every epoch ends with scheduler.step(), so when epoch e starts
        # last_epoch == e. Checkpoints without a saved schedule (older yolopt) get that value; they
        # used to get start_epoch - 1, which set every post-warm-up lr one epoch behind.
        sched = st.get("scheduler") or {}
        self.scheduler.last_epoch = int(sched.get("last_epoch", self.start_epoch))
        if sched.get("base_lrs"):
            self.scheduler.base_lrs = [float(v) for v in sched["base_lrs"]]
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        set_rng_state(tensors, st.get("rng", {}))
        del self._tensors
        log.info("resuming %s from epoch %d/%d", self.out, self.start_epoch + 1, self.cfg.epochs)

    def _write_config(self) -> None:
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out / "config.yaml", lambda tmp: Path(tmp).write_text(
                yaml.safe_dump({**asdict(self.cfg), "hyp": self.hyp}, sort_keys=False)))

    # ------------------------------------------------------------------ seams for compression
    def rebuild_optimizer(self) -> None:
        """Adopt a model whose parameters a callback replaced (pruned channels, swapped modules).

        Builds a new optimizer over the current parameters with the same three groups
        (:func:`build_optimizer`) and each group's current lr / momentum / weight decay (the
        optimizer state, e.g. momentum buffers, is dropped), re-attaches the lr schedule at its
        epoch, restarts the EMA from the current weights (its update count kept, so its decay
        ramp continues), re-applies ``--freeze``, rebuilds the loss and, under DDP, re-wraps the
        model. Call it from ``on_epoch_start``, ``on_step_end`` or ``on_epoch_end`` (under DDP:
        ``on_epoch_start`` or ``on_step_end``, which run on every rank) - not while a batch is
        in flight.
        """
        if self._in_step:
            raise TrainingError("rebuild_optimizer() was called during a batch; call it from on_epoch_start, "
                                "on_step_end or on_epoch_end")
        model = unwrap(self.model)
        model.zero_grad(set_to_none=True)
        self._freeze(model)
        self.model = model
        old = [dict(g, params=None) for g in self.optimizer.param_groups]
        self.optimizer = self._new_optimizer()
        for g, o in zip(self.optimizer.param_groups, old):
            g.update({k: o[k] for k in ("lr", "initial_lr", "momentum", "betas", "weight_decay") if k in o})
        last_epoch = self.scheduler.last_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)  # sets lr: restore
        self.scheduler.last_epoch = last_epoch
        for g, o in zip(self.optimizer.param_groups, old):
            g["lr"] = o["lr"]
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        if self.ema is not None:
            self.ema = ModelEMA(model, updates=self.ema.updates)
        self._build_loss()
        self._wrap_model()
        log.info("optimizer rebuilt for the changed model: %d parameters", sum(p.numel() for p in model.parameters()))

    @torch.no_grad()
    def teacher_outputs(self, imgs: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The teacher's ``(raw, feats)`` for a batch, without gradients, teacher in eval mode.

        ``imgs``: (B, 3, H, W) in [0, 1]. ``raw``: per level (B, na, ny, nx, 5+nc_teacher) head
        logits before decoding; ``feats``: the teacher's neck tensors fed to its Detect, per
        level (B, C_i, ny, nx). See ``DetectionModel.forward_features``.
        """
        if self.teacher is None:
            raise YoloptError("teacher_outputs(): no teacher; pass teacher= to train() or Trainer")
        forward_features = getattr(self.teacher, "forward_features", None)
        if forward_features is None:
            raise YoloptError(f"teacher_outputs(): the teacher ({type(self.teacher).__name__}) has no "
                              f"forward_features(); use a yolopt DetectionModel")
        if self.teacher.training:
            self.teacher.eval()
        return forward_features(imgs)

    # ------------------------------------------------------------------ loop
    def train(self) -> TrainResult:
        try:
            return self._train()
        finally:
            if self._lock is not None:
                self._lock.__exit__(None, None, None)
                self._lock = None

    def _train(self) -> TrainResult:
        t_start = time.time()
        self._setup()
        self._callback("on_train_start")
        cfg = self.cfg
        if self.main:
            log.info("training %s for %d epochs at %d on %s: %d images%s, batch %d%s -> %s", self._model_source(),
                     cfg.epochs, self.imgsz, self.device, len(self.dataset),
                     f" ({self.n_unlabeled} without labels, distilled)" if self.n_unlabeled else "", cfg.batch,
                     f" ({self.world} processes)" if self.world > 1 else "", self.out)
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                self.epoch = epoch
                self._train_epoch(epoch)
                if self.world > 1:
                    torch.distributed.barrier()
        finally:
            if self.world > 1 and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        best = self.out / BEST
        return TrainResult(self.out, self.out / LAST, best if best.exists() else None, cfg.epochs,
                           self.best_fitness, self.history, (time.time() - t_start) / 60)

    def _train_epoch(self, epoch: int) -> None:
        self.model.train()
        self._callback("on_epoch_start", epoch)
        self._set_mosaic(epoch)
        bar = self._progress_bar(epoch)
        mloss, seen, t0 = torch.zeros(3), 0, time.time()
        self.optimizer.zero_grad()
        for i, (imgs, targets, _paths, labeled) in enumerate(bar if bar is not None else self.loader):
            ni = i + self.nb * epoch  # batches seen since the start of training
            imgs = imgs.to(self.device, non_blocking=True).float() / 255  # (B, 3, imgsz, imgsz) RGB in [0, 1]
            if ni <= self.nw and self.nw:
                self._warmup(ni, epoch)
            self._in_step = True
            loss, items = self._forward_loss(imgs, targets, labeled)
            self._check_finite(loss, epoch, i, bar)
            self.scaler.scale(loss).backward()
            self.student_feats = None
            if ni - self.last_opt_step >= self.accumulate:
                self._optimizer_step(ni)
            self._in_step = False
            mloss = (mloss * i + items.cpu()) / (i + 1)
            seen += imgs.shape[0]
            if bar is not None:
                dt = max(time.time() - t0, 1e-9)
                bar.set_postfix_str(f"box {mloss[0]:.4f} obj {mloss[1]:.4f} cls {mloss[2]:.4f} "
                                    f"{seen * self.world / dt:.1f} img/s", refresh=False)
        if bar is not None:
            bar.close()
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler.step()
        if self.main:
            self._end_epoch(epoch, mloss, lrs, time.time() - t0, seen)

    def _set_mosaic(self, epoch: int) -> None:
        """Mosaic on, except for the final epochs that :func:`close_mosaic_epochs` gives."""
        n = close_mosaic_epochs(self.cfg.close_mosaic, self.cfg.epochs)
        first_closed = self.cfg.epochs - n
        if self.main and n and epoch == first_closed:
            log.info("mosaic off for the last %d epoch(s)", n)
        self.sampler.set_epoch(epoch, epoch < first_closed)

    def _progress_bar(self, epoch: int):
        if not (self.main and self.cfg.progress):
            return None
        from tqdm import tqdm

        return tqdm(self.loader, total=self.nb, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch",
                    dynamic_ncols=True)

    def _warmup(self, ni: int, epoch: int) -> None:
        """First ``nw`` iterations: lr ramps up (bias lr down from warmup_bias_lr), momentum ramps up
        and gradient accumulation grows from 1 batch to ``nbs / batch``."""
        cfg, hyp = self.cfg, self.hyp
        xi = [0, self.nw]
        self.accumulate = max(1, int(np.interp(ni, xi, [1, cfg.nbs / cfg.batch]).round()))
        for j, g in enumerate(self.optimizer.param_groups):
            g["lr"] = float(np.interp(ni, xi, [self.warmup_bias_lr if j == 0 else 0.0,
                                               g["initial_lr"] * self.lf(epoch)]))
            if "momentum" in g:
                g["momentum"] = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))

    def _forward_loss(self, imgs: torch.Tensor, targets: torch.Tensor,
                      labeled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``imgs`` (B, 3, H, W), ``targets`` (n, 6), ``labeled`` (B,) bool -> (loss to backpropagate,
        detached [box, obj, cls]). The detection loss sees only the labelled images of the batch."""
        with torch.autocast(self.device.type, enabled=self.amp):
            preds = self._forward(imgs)  # list of (B, na, ny, nx, 5+nc)
            loss, items = self._detection_loss(preds, targets, labeled)
            for cb in self.callbacks:
                extra = cb.extra_loss(self, imgs, targets, preds)
                if extra is not None:
                    loss = loss + extra
            if self.world > 1:
                loss = loss * self.world  # DDP averages gradients over ranks; upstream's loss is a sum
        return loss, items

    def _detection_loss(self, preds: list[torch.Tensor], targets: torch.Tensor,
                        labeled: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The detection loss on the labelled images only: an unlabelled image's empty label rows mean
        "unknown", and scoring them would teach the model that it holds only background."""
        targets = targets.to(self.device)
        if labeled is None or bool(labeled.all()):
            return self.loss_fn(preds, targets)
        if not bool(labeled.any()):
            return preds[0].sum() * 0.0, torch.zeros(3, device=self.device)
        keep = labeled.to(self.device)
        new_index = torch.cumsum(keep, 0) - 1  # image k of the batch -> its row among the labelled ones
        t = targets[keep[targets[:, 0].long()]].clone()
        t[:, 0] = new_index[t[:, 0].long()].to(t.dtype)
        return self.loss_fn([p[keep] for p in preds], t)

    def _forward(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """The student's training forward; when a callback ``needs_features``, Detect's inputs of
        this same pass are kept as ``self.student_feats`` (per level (B, C_i, ny, nx))."""
        if not any(getattr(cb, "needs_features", False) for cb in self.callbacks):
            return self.model(imgs)
        captured: list = []
        hook = unwrap(self.model).detect.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            preds = self.model(imgs)
        finally:
            hook.remove()
        self.student_feats = list(captured[-1])
        return preds

    def _check_finite(self, loss: torch.Tensor, epoch: int, i: int, bar) -> None:
        if torch.isfinite(loss).all():
            return
        if bar is not None:
            bar.close()
        kept = self.out / LAST
        where = f"last good checkpoint kept: {kept}" if kept.exists() else "no checkpoint written yet"
        raise TrainingError(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, batch {i + 1}: training "
                            f"stopped ({where}); lower lr0 or check the labels")

    def _optimizer_step(self, ni: int) -> None:
        opt = self.optimizer
        self.scaler.unscale_(opt)
        self._callback("on_after_backward")
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        self.scaler.step(opt)
        self.scaler.update()
        opt.zero_grad()
        if self.ema is not None:
            self.ema.update(self.model)
        self.last_opt_step = ni
        self._in_step = False
        self._callback("on_step_end", ni)

    def _end_epoch(self, epoch: int, mloss: torch.Tensor, lrs: list[float], epoch_s: float, seen: int) -> None:
        """Rank 0: validate, record, save checkpoints and results, log, then ``on_epoch_end``."""
        cfg = self.cfg
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train/box_loss": float(mloss[0]),
                                   "train/obj_loss": float(mloss[1]), "train/cls_loss": float(mloss[2])}
        final = epoch + 1 == cfg.epochs
        self._callback("before_validate", epoch)
        ran_val = self.has_val and ((epoch + 1) % max(cfg.val_every, 1) == 0 or final)
        if ran_val:
            metrics.update(self._validate())
        metrics.update({"lr/pg0": lrs[0], "lr/pg1": lrs[1], "lr/pg2": lrs[2], "epoch_s": round(epoch_s, 2),
                        "images_per_s": round(seen * self.world / max(epoch_s, 1e-9), 2)})
        self.history.append(metrics)
        improved = ran_val and metrics["fitness"] > self.best_fitness
        if improved:
            self.best_fitness = metrics["fitness"]
        if not self.has_val and self.best_fitness < 0:
            improved = final  # no val split: best = last at the end
        self._save(epoch, improved)
        self._write_results()
        self._log_epoch(epoch, mloss, epoch_s, metrics if ran_val else None)
        self._callback("on_epoch_end", epoch, metrics)

    def _validate(self) -> dict[str, float]:
        """mAP of the EMA model on the val split."""
        from ..evaluate import EvalSpec, evaluate

        res = evaluate(self.ema.ema, self.cfg.val_data or self.cfg.data, EvalSpec(imgsz=self.imgsz, batch=self.batch_rank * 2,
                       device=self.device, progress=self.cfg.progress))
        return {"metrics/precision": res.precision, "metrics/recall": res.recall, "metrics/mAP50": res.map50,
                "metrics/mAP50-95": res.map50_95, "fitness": 0.1 * res.map50 + 0.9 * res.map50_95}

    def _log_epoch(self, epoch: int, mloss: torch.Tensor, epoch_s: float, val: dict | None) -> None:
        msg = (f"epoch {epoch + 1}/{self.cfg.epochs}: box {mloss[0]:.4f} obj {mloss[1]:.4f} cls {mloss[2]:.4f}, "
               f"{epoch_s:.1f} s")
        if val is not None:
            msg += f", mAP50 {val['metrics/mAP50']:.4f} mAP50-95 {val['metrics/mAP50-95']:.4f}"
        log.info(msg)

    # ------------------------------------------------------------------ outputs
    def _model_source(self) -> str:
        return self.cfg.weights or self.cfg.cfg or self.cfg.source or "a model given in Python"

    def _save(self, epoch: int, best: bool) -> None:
        state = {"epoch": epoch, "ema_updates": self.ema.updates, "best_fitness": self.best_fitness,
                 "last_opt_step": self.last_opt_step, "accumulate": self.accumulate,
                 "scheduler": {"last_epoch": self.scheduler.last_epoch, "base_lrs": list(self.scheduler.base_lrs)},
                 "history": self.history, "config": asdict(self.cfg), "hyp": self.hyp}
        prov = {"trained_from": self._model_source(), "data": str(self.cfg.data), "epochs": epoch + 1}
        if self.cfg.unlabeled:
            prov["unlabeled"] = list(self.cfg.unlabeled)
        last = self.out / LAST
        save_train_checkpoint(last, ema_model=self.ema.ema, model=unwrap(self.model), optimizer=self.optimizer,
                              imgsz=self.imgsz, train_state=state, provenance=prov)
        if best:  # the deployable model only: EMA weights + model metadata (last.safetensors resumes)
            save_model(self.ema.ema, self.out / BEST, imgsz=self.imgsz, provenance=prov)

    def _write_results(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in self.history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write(self.out / "results.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
        if self.cfg.plots:
            try:
                plot_results(self.history, self.out / "results.png")
            except Exception as e:  # noqa: BLE001 - a plotting failure must not stop training
                log.warning("could not draw results.png: %s", e)


def plot_results(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
            "metrics/mAP50", "metrics/mAP50-95"]
    fig, axes = plt.subplots(2, 4, figsize=(14, 6), tight_layout=True)
    for ax, k in zip(axes.ravel(), keys):
        pts = [(h["epoch"], h[k]) for h in history if k in h]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker=".", linewidth=1.5)
        ax.set_title(k)
        ax.set_xlabel("epoch")
    axes.ravel()[-1].axis("off")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def find_resume_checkpoint(spec: str | Path | None) -> Path:
    """``--resume DIR`` (or a checkpoint file), or the newest run under runs/train when empty."""
    if spec in (None, "", True):
        runs = sorted(Path("runs/train").glob(f"*/{LAST}"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise YoloptError("--resume: no runs/train/*/last.safetensors to resume from (give the run folder)")
        return runs[-1]
    p = Path(spec)
    if p.is_dir():
        if not (p / LAST).is_file():
            raise YoloptError(f"{p}: no {LAST} in this folder; nothing to resume")
        return p / LAST
    if p.is_file():
        return p
    raise YoloptError(f"{p}: resume folder not found")


def train(data: str | None = None, *, resume: str | Path | None = None, callbacks: list[Callback] | None = None,
          teacher: nn.Module | None = None, model: DetectionModel | None = None, **kwargs) -> TrainResult:
    """Train (or, with ``resume=RUN_DIR``, continue) a detector; see :class:`TrainConfig`.

    ``model``: train this ``DetectionModel`` (e.g. a pruned one) in place instead of loading
    ``weights`` / ``cfg``; ``teacher``: a frozen model for distillation (see :class:`Callback`).
    """
    if resume is not None:
        if model is not None:
            raise YoloptError("model= cannot be combined with resume: a resumed run rebuilds its model from the "
                              "checkpoint")
        ckpt = find_resume_checkpoint(resume)
        # the Trainer reads the checkpoint (once) and takes its run config; only these settings are ours
        cfg = TrainConfig(data="", **{k: v for k, v in kwargs.items() if k in ("device", "workers", "progress")})
        return Trainer(cfg, callbacks, teacher, resume=ckpt).train()
    if data is None:
        raise YoloptError("--data is required")
    return Trainer(TrainConfig(data=str(data), **kwargs), callbacks, teacher, model=model).train()
