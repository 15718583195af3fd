"""Export a fused YOLOv5 model to ONNX, OpenVINO IR, TorchScript or a TensorRT engine, and verify it.

Every artifact is first written into a temporary folder next to the target, loaded back through
:mod:`yolopt.runtime`, compared with the PyTorch model, and only then moved into place (a failed
export leaves nothing behind).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..errors import ExportError
from ..models.checkpoint import load_model
from .verify import VerifyResult, verify

log = logging.getLogger("yolopt")

FORMATS = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".torchscript", "tensorrt": ".engine"}
TRT_MAGIC = b"YOLOPT1\0"


@dataclass
class ExportResult:
    format: str
    path: Path
    files: list[Path]
    size_mb: float
    seconds: float
    verify: VerifyResult | None = None
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": self.format, "path": str(self.path), "files": [str(f) for f in self.files],
                "size_mb": self.size_mb, "seconds": self.seconds, "metadata": self.metadata,
                "verify": self.verify.to_dict() if self.verify else None}


def _metadata(model, imgsz, batch, dynamic, half, nms) -> dict:
    return {
        "format": "yolopt-export",
        "yolopt_version": __version__,
        "names": list(model.names),
        "nc": int(model.nc),
        "stride": [int(s) for s in model.stride],
        "imgsz": list(imgsz),
        "batch": int(batch),
        "dynamic": bool(dynamic),
        "half": bool(half),
        "nms": nms,
    }


def _enc(meta: dict) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in meta.items()}


def _prepare(model, device: torch.device, half: bool):
    m = copy.deepcopy(model).float().eval()
    if not m.is_fused:
        m.fuse()
    m.detect._grids = {}  # grids must be traced, not baked in from an earlier run
    for p in m.parameters():
        p.requires_grad_(False)
    m = m.to(device)
    return m.half() if half else m


def export_onnx_file(model, path: Path, imgsz, batch=1, dynamic=False, half=False, nms=None, opset=17,
                     simplify=True, meta: dict | None = None, device="cpu") -> Path:
    """Write an ONNX file (fused, onnxslim-cleaned, optional in-graph NMS, metadata_props)."""
    import onnx

    device = torch.device(device)
    gpu_half = half and device.type == "cuda"
    if half and not gpu_half:
        raise ExportError(f"{path.name}: --half ONNX export traces the model in FP16 and needs a CUDA GPU "
                          "(on a CPU use --format openvino --half)")
    m = _prepare(model, device, gpu_half)
    x = torch.zeros(batch, 3, *imgsz, device=device, dtype=torch.float16 if gpu_half else torch.float32)
    dyn = None
    if dynamic:
        dyn = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(m, x, str(path), dynamo=False, opset_version=opset, input_names=["images"],
                              output_names=["output0"], dynamic_axes=dyn, do_constant_folding=True)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"{path}: torch.onnx.export failed ({str(e).strip().splitlines()[0]})") from None
    proto = onnx.load(str(path))
    if simplify:
        try:
            import onnxslim

            proto = onnxslim.slim(proto)
        except ImportError:
            raise ExportError("onnxslim is not installed (pip install 'yolopt[deploy]')") from None
    if nms:
        from .onnx_nms import append_nms

        proto = append_nms(proto, nms["conf"], nms["iou"], nms["max_det"])
    del proto.metadata_props[:]
    for k, v in _enc(meta or {}).items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "yolopt"
    proto.producer_version = __version__
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def export_openvino_files(onnx_path: Path, xml_path: Path, half: bool, meta: dict) -> list[Path]:
    try:
        import openvino as ov
    except ImportError:
        raise ExportError("OpenVINO export needs the `openvino` package (pip install 'yolopt[deploy]')") from None
    ovm = ov.convert_model(str(onnx_path))
    for k, v in _enc(meta).items():
        ovm.set_rt_info(v, ["yolopt", k])
    ov.save_model(ovm, str(xml_path), compress_to_fp16=bool(half))
    return [xml_path, xml_path.with_suffix(".bin")]


def export_torchscript_file(model, path: Path, imgsz, batch, half, meta, device="cpu") -> Path:
    m = _prepare(model, torch.device(device), half)
    x = torch.zeros(batch, 3, *imgsz, device=device, dtype=torch.float16 if half else torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(m, x, strict=False, check_trace=False)
        ts = torch.jit.freeze(ts.eval()) if hasattr(torch.jit, "freeze") else ts
    torch.jit.save(ts, str(path), _extra_files={"config.txt": json.dumps(_enc(meta))})
    return path


def export_tensorrt_file(onnx_path: Path, path: Path, imgsz, batch, dynamic, half, meta, workspace_gb=4.0,
                         max_batch=None) -> Path:
    from ..runtime.backends import require_tensorrt

    try:
        trt = require_tensorrt(path)
    except Exception as e:  # noqa: BLE001
        raise ExportError(str(e)) from None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT could not parse the ONNX model ({errs[:300]})")
    inp = network.get_input(0)
    if dynamic:
        profile = builder.create_optimization_profile()
        h, w = imgsz
        mb = max_batch or max(1, batch * 2)
        profile.set_shape(inp.name, (1, 3, 32, 32), (batch, 3, h, w), (mb, 3, max(h, w) * 2, max(h, w) * 2))
        config.add_optimization_profile(profile)
    if half:
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast FP16; building the engine in FP16 anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{path}: TensorRT engine build failed (see the TensorRT log above)")
    head = json.dumps(_enc(meta)).encode()
    with open(path, "wb") as f:
        f.write(TRT_MAGIC + len(head).to_bytes(4, "little") + head)
        f.write(bytes(serialized))
    return path


def default_output(weights: Path, fmt: str) -> Path:
    if fmt == "openvino":
        return weights.parent / f"{weights.stem}_openvino" / f"{weights.stem}.xml"
    return weights.with_suffix(FORMATS[fmt])


def export(weights, format: str = "onnx", imgsz: int | tuple[int, int] = 640, batch: int = 1, dynamic: bool = False,
           half: bool = False, nms: bool = False, opset: int = 17, out=None, conf: float = 0.25, iou: float = 0.45,
           max_det: int = 300, simplify: bool = True, verify_images: list | None = None, atol: float | None = None,
           model=None) -> ExportResult:
    """Export ``weights`` (a .pt/.safetensors path; or pass a loaded ``model``) and verify the artifact."""
    fmt = format.lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{format}' (choose from {', '.join(FORMATS)})")
    weights = Path(weights) if weights is not None else Path("model.pt")
    if model is None:
        model = load_model(weights)
    if isinstance(imgsz, int):
        imgsz = (imgsz, imgsz)
    s = int(model.stride.max())
    if imgsz[0] % s or imgsz[1] % s or min(imgsz) <= 0:
        raise ExportError(f"--imgsz {imgsz[0]}x{imgsz[1]} must be a positive multiple of the model stride {s}")
    if batch < 1:
        raise ExportError(f"--batch {batch}: must be at least 1")
    if nms and fmt in ("torchscript", "tensorrt"):
        raise ExportError(f"--nms is available for onnx and openvino exports, not {fmt}")
    if not 0 <= conf <= 1 or not 0 <= iou <= 1:
        raise ExportError(f"NMS thresholds must be in [0, 1], got conf={conf} iou={iou}")
    if fmt == "tensorrt":
        from ..runtime.backends import require_tensorrt

        try:
            require_tensorrt(weights)
        except Exception as e:  # noqa: BLE001
            raise ExportError(str(e).replace(f"{weights}: ", f"{weights}: --format tensorrt: ")) from None
    out = Path(out) if out else default_output(weights, fmt)
    if fmt != "openvino" and out.suffix.lower() != FORMATS[fmt]:
        out = out.with_suffix(FORMATS[fmt]) if out.suffix else out.parent / (out.name + FORMATS[fmt])
    if fmt == "openvino" and out.suffix.lower() != ".xml":
        out = out / f"{weights.stem}.xml"  # a folder
    if half and fmt in ("onnx", "torchscript") and not torch.cuda.is_available():
        raise ExportError(f"--half {fmt} export needs a CUDA GPU (FP16 tracing); on a CPU use --format openvino --half")
    nms_cfg = {"conf": conf, "iou": iou, "max_det": max_det} if nms else None
    meta = _metadata(model, imgsz, batch, dynamic, half, nms_cfg)
    device = "cuda:0" if (half and torch.cuda.is_available()) else "cpu"

    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.stem}.export.", dir=out.parent))
    try:
        tmp_out = tmpdir / out.name
        files: list[Path]
        if fmt == "onnx":
            files = [export_onnx_file(model, tmp_out, imgsz, batch, dynamic, half, nms_cfg, opset, simplify, meta,
                                      device=device)]
        elif fmt == "openvino":
            onnx_tmp = tmpdir / "_intermediate.onnx"
            export_onnx_file(model, onnx_tmp, imgsz, batch, dynamic, False, nms_cfg, opset, simplify, meta)
            files = export_openvino_files(onnx_tmp, tmp_out, half, meta)
        elif fmt == "torchscript":
            files = [export_torchscript_file(model, tmp_out, imgsz, batch, half, meta, device=device)]
        else:
            onnx_tmp = tmpdir / "_intermediate.onnx"
            export_onnx_file(model, onnx_tmp, imgsz, batch, dynamic, False, nms_cfg, opset, simplify, meta)
            files = [export_tensorrt_file(onnx_tmp, tmp_out, imgsz, batch, dynamic, half, meta)]
        t_export = time.perf_counter() - t0

        from ..runtime import load as load_backend

        backend = load_backend(tmp_out)
        ref = copy.deepcopy(model).float().eval()
        if not ref.is_fused:
            ref.fuse()
        vres = verify(backend, ref, imgsz, batch=batch, dynamic=dynamic, half=half, atol=atol, images=verify_images,
                      raise_on_fail=False)
        del backend
        if not vres.passed:
            raise ExportError(f"{out}: verification FAILED, artifact not written: {vres.summary()}")
        final = []
        for f in sorted(files, key=lambda p: p.suffix == ".xml"):  # .bin before .xml
            dest = out.parent / f.name
            os.replace(f, dest)
            final.append(dest)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    size = sum(f.stat().st_size for f in final) / 1e6
    return ExportResult(fmt, out, final, size, t_export, vres, meta)
