"""Checkpoint I/O that never executes code from a file.

Two formats are read:

* **Upstream Ultralytics ``.pt``** - a pickled ``models.yolo.Model`` (or ``DetectionModel``).
  It is unpickled by ``torch.load(weights_only=True)``, torch's restricted unpickler, with an
  allow-list that maps each upstream class name to an inert :class:`_Stub` (a plain object
  that only receives attributes). Nothing named in the pickle is imported or called; a pickle
  that names anything else (``os.system``, ``models.common.CBAM``...) is refused. The model is
  then rebuilt from the stored ``yaml`` and the tensors are copied over by name.
* **yolopt's own format** - a ``.safetensors`` file whose header metadata holds a JSON
  description (architecture yaml, class names, stride, image size, provenance). Tensor shapes
  in the file define the channel counts, so a pruned model loads back exactly.

Integrity: a corrupted file is an error, never a silently different model. A ``.pt`` is a zip
archive; every record's CRC-32 is checked before anything is unpickled (the bad record is
named). yolopt's ``.safetensors`` files carry a SHA-256 of their content (every tensor's name,
dtype, shape and bytes, and every metadata entry) in the ``yolopt`` JSON, checked on load;
files written before it existed (format version 1, no hash) still load.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..fileio import atomic_write
from .common import BN_EPS, BN_MOMENTUM
from .yolo import DetectionModel

FORMAT_NAME = "yolopt-model"
FORMAT_VERSION = 2  # 2: the content hash (HASH_KEY) is required; 1: no hash
HASH_KEY = "sha256"  # in the ``yolopt`` metadata JSON

# Upstream classes a detection checkpoint may contain, and torch.nn classes used by them.
_UPSTREAM_CLASSES = [
    "models.yolo.Model",
    "models.yolo.DetectionModel",
    "models.yolo.Detect",
    "models.common.Conv",
    "models.common.DWConv",
    "models.common.Focus",
    "models.common.Bottleneck",
    "models.common.BottleneckCSP",
    "models.common.C3",
    "models.common.SPP",
    "models.common.SPPF",
    "models.common.Concat",
    "models.experimental.Ensemble",
]
_TORCH_NN_CLASSES = [
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.activation.LeakyReLU",
    "torch.nn.modules.activation.Hardswish",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
]


class _Stub:
    """Inert stand-in for a pickled object: it only collects the attributes it is given."""

    _qualname = "?"

    def __repr__(self):
        return f"<stub {self._qualname}>"


def _stub_globals() -> list[tuple[Any, str]]:
    out: list[tuple[Any, str]] = []
    for qualname in _UPSTREAM_CLASSES + _TORCH_NN_CLASSES:
        cls = type(qualname.rsplit(".", 1)[1], (_Stub,), {"_qualname": qualname})
        out.append((cls, qualname))
    # numpy scalars and arrays appear in training metadata (e.g. best_fitness); these
    # reconstructors only build arrays from bytes.
    core = getattr(np, "_core", None) or np.core
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out.append((core.multiarray.scalar, f"{mod}.scalar"))
        out.append((core.multiarray._reconstruct, f"{mod}._reconstruct"))
    out.append((np.ndarray, "numpy.ndarray"))
    out.append((np.dtype, "numpy.dtype"))
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            out.append((getattr(np.dtypes, name), f"numpy.dtypes.{name}"))
    return out


def _refusal(path: Path, err: Exception) -> CheckpointError:
    text = str(err)
    m = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported (?:global|class)[:\s]+([\w.]+)", text)
    if m:
        name = m.group(1)
        if name.startswith("models."):
            return CheckpointError(f"{path}: checkpoint uses module {name}, which yolopt does not support")
        return CheckpointError(
            f"{path}: checkpoint references {name}, which is not allowed in a model file; refusing to load it"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return CheckpointError(f"{path}: not a readable checkpoint (truncated or not a YOLOv5/yolopt file): {first[:160]}")


def _file_kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < 100_000_000:
            return "safetensors"
    if head[:1] == b"\x80":
        return "torch-legacy"
    return "unknown"


# --------------------------------------------------------------------------- upstream .pt


def _stub_children(stub) -> dict[str, Any]:
    return dict(getattr(stub, "_modules", None) or {})


def _stub_state_dict(stub, prefix: str = "") -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for key in ("_parameters", "_buffers"):
        for name, t in (getattr(stub, key, None) or {}).items():
            if t is not None and name not in getattr(stub, "_non_persistent_buffers_set", set()):
                sd[prefix + name] = t.detach() if isinstance(t, torch.Tensor) else torch.as_tensor(t)
    for name, child in _stub_children(stub).items():
        if child is not None:
            sd.update(_stub_state_dict(child, f"{prefix}{name}."))
    return sd


def _stub_modules(stub, prefix: str = ""):
    yield prefix.rstrip("."), stub
    for name, child in _stub_children(stub).items():
        if child is not None:
            yield from _stub_modules(child, f"{prefix}{name}.")


def _sync_from_stubs(model: nn.Module, root_stub) -> None:
    """Copy per-module settings the yaml does not carry (BN eps, activation, upsample mode)."""
    acts = {"SiLU": nn.SiLU, "ReLU": nn.ReLU, "Hardswish": nn.Hardswish, "Identity": nn.Identity}
    for name, stub in _stub_modules(root_stub):
        if not name:
            continue
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        kind = type(stub).__name__
        if isinstance(module, nn.BatchNorm2d):
            module.eps = float(getattr(stub, "eps", module.eps))
            module.momentum = getattr(stub, "momentum", module.momentum)
        elif isinstance(module, nn.Upsample):
            module.scale_factor = getattr(stub, "scale_factor", module.scale_factor)
            module.mode = getattr(stub, "mode", module.mode)
        elif kind in acts or kind == "LeakyReLU":
            want = nn.LeakyReLU(stub.negative_slope) if kind == "LeakyReLU" else acts[kind]()
            if type(module) is not type(want) or kind == "LeakyReLU":
                parent_name, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, attr, want)


def _load_upstream(path: Path) -> tuple[DetectionModel, dict]:
    try:
        with torch.serialization.safe_globals(_stub_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one clear line
        raise _refusal(path, e) from None

    stub = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else ckpt
    if not isinstance(stub, _Stub) or not hasattr(stub, "yaml"):
        if isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise CheckpointError(f"{path}: a bare state dict has no architecture; use a full YOLOv5 checkpoint")
        raise CheckpointError(f"{path}: not a YOLOv5 detection checkpoint (no model with a yaml inside)")
    if stub._qualname == "models.experimental.Ensemble":
        raise CheckpointError(f"{path}: model ensembles are not supported; load one member checkpoint")

    cfg = stub.yaml
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: checkpoint yaml is not a mapping")
    try:
        model = DetectionModel(cfg, ch=cfg.get("ch", 3), init=False)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    _sync_from_stubs(model, stub)

    sd = {k: v for k, v in _stub_state_dict(stub).items() if not k.endswith("anchor_grid")}
    _load_weights(model, sd, path)
    stride = getattr(stub, "stride", None)
    if stride is not None:
        model.stride = torch.as_tensor(stride, dtype=torch.float32).clone()
        model.detect.stride = model.stride.clone()
    model.names = _names_list(getattr(stub, "names", None), model.nc)
    info = {
        "source_format": "ultralytics-yolov5",
        "date": ckpt.get("date") if isinstance(ckpt, dict) else None,
        "epoch": ckpt.get("epoch") if isinstance(ckpt, dict) else None,
    }
    return model, info


def _names_list(names, nc: int) -> list[str]:
    if isinstance(names, dict):
        names = [names.get(i, names.get(str(i), str(i))) for i in range(nc)]
    if not names or len(names) != nc:
        return [str(i) for i in range(nc)]
    return [str(n) for n in names]


def _reshape_to(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Resize Conv2d / BatchNorm2d modules whose stored weight shape differs (pruned models)."""
    for name, m in list(model.named_modules()):
        w = sd.get(f"{name}.weight")
        if w is None or tuple(w.shape) == tuple(getattr(m, "weight", torch.empty(0)).shape):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(m, nn.Conv2d):
            groups = m.groups
            if groups > 1 and groups == m.in_channels == m.out_channels:
                groups = w.shape[0]  # depth-wise stays depth-wise
            new = nn.Conv2d(
                w.shape[1] * groups, w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation, groups,
                bias=f"{name}.bias" in sd,
            )
        elif isinstance(m, nn.BatchNorm2d):
            new = nn.BatchNorm2d(w.shape[0], eps=m.eps, momentum=m.momentum)
        else:
            continue
        setattr(parent, attr, new)


def _load_weights(model: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    if any(k.endswith(".conv.bias") for k in sd) and not any(".bn." in k for k in sd):
        model.fuse()  # stored fused
        own = model.state_dict()
    if any(k in own and tuple(v.shape) != tuple(own[k].shape) for k, v in sd.items()):
        _reshape_to(model, sd)
        own = model.state_dict()
    missing = sorted(set(own) - set(sd) - {k for k in own if k.endswith("num_batches_tracked")})
    unexpected = sorted(set(sd) - set(own))
    bad_shape = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad_shape:
        detail = (
            f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected else f"shape {bad_shape[:3]}"
        )
        raise CheckpointError(f"{path}: weights do not match the stored architecture ({detail})")
    with torch.no_grad():
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=False)
    model.float()


# --------------------------------------------------------------------------- yolopt format


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:160]


def content_hash(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and every metadata entry.

    The ``yolopt`` entry is hashed as its canonical JSON without the hash itself, so the
    hash can live inside it. Tensors and entries are taken in name order: the digest does
    not depend on how the file lays them out.
    """
    h = hashlib.sha256()
    for key in sorted(metadata):
        value = metadata[key]
        if key == "yolopt":
            desc = json.loads(value)
            desc.pop(HASH_KEY, None)
            value = json.dumps(desc, sort_keys=True)
        h.update(json.dumps(["meta", key, value]).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps(["tensor", name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write tensors + string metadata atomically; the ``yolopt`` JSON entry gets the content hash."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    desc = json.loads(metadata["yolopt"])
    desc[HASH_KEY] = content_hash(tensors, metadata)
    metadata = {**metadata, "yolopt": json.dumps(desc)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str], dict]:
    """(tensors, header metadata, parsed ``yolopt`` JSON) of a yolopt safetensors file.

    Every way a file can be damaged - truncation, a bad header length, header JSON, offsets,
    a content-hash mismatch - is a :class:`CheckpointError` naming the file, in one line.
    """
    from safetensors.torch import load_file

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        (n,) = struct.unpack("<Q", head) if len(head) == 8 else (None,)
        if n is None or n > size - 8:
            raise CheckpointError(f"{path}: not a safetensors file, or a truncated or corrupt one (its header length "
                                  f"does not fit the file's {size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        md = header.get("__metadata__") or {}
        if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
            raise ValueError("__metadata__ is not a mapping of strings")
    except (ValueError, AttributeError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path}: corrupt safetensors header ({_first_line(e)})") from None
    if "yolopt" not in md:
        raise CheckpointError(f"{path}: a safetensors file without yolopt metadata (not a yolopt model)")
    try:
        desc = json.loads(md["yolopt"])
        if not isinstance(desc, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise CheckpointError(f"{path}: corrupt yolopt metadata in the header ({_first_line(e)})") from None
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - the safetensors library reports damage in several types
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({_first_line(e)})") from None
    want = desc.get(HASH_KEY)
    if want is None and desc.get("version", 1) != 1:
        raise CheckpointError(f"{path}: the content hash is missing from its metadata (format version "
                              f"{desc.get('version')!r}); the file is damaged or not a yolopt file")
    if want is not None and content_hash(tensors, md) != want:
        raise CheckpointError(f"{path}: corrupt file: its content does not match the SHA-256 stored in it "
                              f"(damaged in transfer or on disk); re-download or re-save it")
    return tensors, md, desc


def _load_yolopt(path: Path) -> tuple[DetectionModel, dict]:
    tensors, _, meta = read_safetensors(path)
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: unknown yolopt file kind {meta.get('format')!r}")
    if meta.get("version", 1) not in (1, FORMAT_VERSION):
        raise CheckpointError(f"{path}: yolopt model format version {meta.get('version')!r} is not supported by "
                              f"this yolopt (it reads versions 1-{FORMAT_VERSION})")
    return model_from_tensors(meta, tensors, path), meta.get("provenance", {})


def model_from_tensors(meta: dict, tensors: dict[str, torch.Tensor], source: str | Path) -> DetectionModel:
    """Rebuild a model from its yolopt metadata and tensors (``model.``-prefixed or bare names).

    The yaml gives the layer graph; the stored tensor shapes give the channel counts, so a
    pruned model comes back with its own (irregular) widths. ``source`` names it in errors.
    """
    try:
        model = DetectionModel(meta["yaml"], ch=meta["yaml"].get("ch", 3), init=False)
        for name, eps in meta.get("bn_eps", {}).items():
            model.get_submodule(name).eps = float(eps)
        for name, momentum in meta.get("bn_momentum", {}).items():
            model.get_submodule(name).momentum = momentum if momentum is None else float(momentum)
        stride = torch.tensor(meta["stride"], dtype=torch.float32)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{source}: bad architecture in metadata: {_first_line(e)}") from None
    prefix = "model." if any(k.startswith("model.model.") for k in tensors) else ""
    sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    _load_weights(model, sd, Path(source))
    model.stride = stride
    model.detect.stride = model.stride.clone()
    model.names = _names_list(meta.get("names"), model.nc)
    model.imgsz = meta.get("imgsz")
    return model


def model_metadata(model: DetectionModel, imgsz: int | None = None, provenance: dict | None = None) -> dict:
    """The JSON description stored with a model's tensors (``yolopt`` header key).

    Architecture yaml, class names, stride, image size (``imgsz`` or ``model.imgsz``), whether
    it is fused, the BatchNorm eps / momentum that differ from the builder's defaults, the
    parameter count and provenance (``model.provenance``, then ``provenance``; the yolopt
    version and the time of saving always describe this save).
    """
    from .. import __version__

    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "yaml": model.yaml,
        "names": list(model.names),
        "stride": [float(s) for s in model.stride],
        "imgsz": imgsz or getattr(model, "imgsz", None),
        "fused": bool(model.is_fused),
        "bn_eps": {n: m.eps for n, m in bns if m.eps != BN_EPS},
        "bn_momentum": {n: m.momentum for n, m in bns if m.momentum != BN_MOMENTUM},
        "params": model.num_params(),
        "provenance": {
            **(getattr(model, "provenance", None) or {}),
            **(provenance or {}),
            "yolopt_version": __version__,
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }


def save_model(model: DetectionModel, path: str | Path, imgsz: int | None = None, provenance: dict | None = None) -> Path:
    """Write ``model`` in yolopt's format (safetensors + JSON metadata + content hash), atomically."""
    meta = model_metadata(model, imgsz, provenance)
    return write_safetensors(path, model.state_dict(), {"yolopt": json.dumps(meta)})


def _verify_zip(path: Path) -> None:
    """Check every record of a zip checkpoint against its CRC-32 before anything reads it."""
    try:
        zf = zipfile.ZipFile(path)
    except Exception as e:  # noqa: BLE001 - BadZipFile, OSError, ValueError...: one line
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt zip: {_first_line(e)})") from None
    with zf:
        for info in zf.infolist():
            try:
                with zf.open(info) as rec:
                    while rec.read(1 << 20):
                        pass
            except Exception as e:  # noqa: BLE001
                why = "fails its CRC-32 check" if "CRC" in str(e) else f"is unreadable ({_first_line(e)})"
                raise CheckpointError(f"{path}: corrupt checkpoint: record {info.filename!r} {why}; the file was "
                                      f"damaged (re-download it)") from None


def load_model(path: str | Path) -> DetectionModel:
    """Load a YOLOv5 model (upstream ``.pt`` or yolopt ``.safetensors``) in eval mode, float32."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: weights file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a weights file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    kind = _file_kind(path)
    if kind == "safetensors":
        model, prov = _load_yolopt(path)
    elif kind in ("torch-zip", "torch-legacy"):
        if kind == "torch-zip":
            _verify_zip(path)
        model, prov = _load_upstream(path)
    else:
        raise CheckpointError(f"{path}: not a checkpoint (neither a PyTorch .pt nor a yolopt .safetensors file)")
    model.provenance = {"source": str(path), **{k: v for k, v in prov.items() if v is not None}}
    return model.eval()
