"""Training checkpoints: one safetensors file that is both a yolopt model and a resume point.

Tensors:

* ``model.*`` - the EMA weights: exactly what ``yolopt.load`` / ``yolopt val`` read, so
  ``runs/x/last.safetensors`` is also a normal yolopt model file (``best.safetensors`` holds
  only these weights and the model metadata);
* ``train.model.*`` - the raw (non-averaged) weights being optimised;
* ``optim.<param index>.<name>`` - optimiser state (momentum buffers);
* ``rng.torch`` (and ``rng.cuda.<i>``) - random generator states.

Metadata: ``yolopt`` (the usual model description) and ``yolopt_train`` (JSON: epoch,
optimiser param groups, scheduler, EMA update count, best fitness, history, run config,
numpy/python RNG states). Nothing is unpickled when reading it back. Files are written to
a temporary name and renamed, so a kill at any moment leaves the previous file intact. The
``yolopt`` JSON carries the SHA-256 of the whole content (tensors and both metadata entries),
checked when a checkpoint is loaded or resumed: a damaged file is refused, never resumed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..models.checkpoint import model_metadata, read_safetensors, write_safetensors

TRAIN_FORMAT = "yolopt-train"
TRAIN_VERSION = 1


def rng_state() -> tuple[dict, dict]:
    """(tensors, json) snapshot of torch / cuda / numpy / python generators."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    js = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, js


def set_rng_state(tensors: dict, js: dict) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    if "numpy" in js:
        n = js["numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "python" in js:
        p = js["python"]
        random.setstate((p[0], tuple(p[1]), p[2]))


def save_train_checkpoint(path: str | Path, *, ema_model, model, optimizer, imgsz: int, train_state: dict,
                          provenance: dict | None = None) -> Path:
    """Write a training checkpoint atomically, with its content hash (see module doc)."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in ema_model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().cpu()
    for k, v in model.state_dict().items():
        tensors[f"train.model.{k}"] = v.detach().contiguous().cpu()
    osd = optimizer.state_dict()
    for pid, st in osd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = val.detach().contiguous().cpu()
    rng_t, rng_js = rng_state()
    tensors.update(rng_t)
    state = {"format": TRAIN_FORMAT, "version": TRAIN_VERSION, **train_state,
             "optimizer": {"param_groups": osd["param_groups"],
                           "scalars": {str(pid): {k: v for k, v in st.items() if not isinstance(v, torch.Tensor)}
                                       for pid, st in osd["state"].items()}},
             "rng": rng_js}
    meta = {"yolopt": json.dumps(model_metadata(ema_model, imgsz, provenance)), "yolopt_train": json.dumps(state)}
    return write_safetensors(path, tensors, meta)


def read_train_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(tensors, model meta, train state) of a training checkpoint; CheckpointError if it is not one
    or if it is damaged (its content hash, when it has one, is checked)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    tensors, md, meta = read_safetensors(path)
    if "yolopt_train" not in md:
        raise CheckpointError(f"{path}: not a yolopt training checkpoint (no training state to resume from)")
    try:
        state = json.loads(md["yolopt_train"])
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise CheckpointError(f"{path}: corrupt training state in the header ({str(e)[:120]})") from None
    if state.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path}: unknown training checkpoint kind {state.get('format')!r}")
    return tensors, meta, state


def optimizer_state_from(tensors: dict, state: dict) -> dict:
    """Rebuild an optimizer ``state_dict`` from a checkpoint's tensors and JSON."""
    per: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            per.setdefault(int(pid), {})[name] = v
    for pid, scal in state["optimizer"].get("scalars", {}).items():
        per.setdefault(int(pid), {}).update(scal)
    return {"state": per, "param_groups": state["optimizer"]["param_groups"]}


def prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
