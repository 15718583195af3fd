"""Checkpoints written under upstream's class names (v6 `Model`, v7 `DetectionModel`), older yamls."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

import yolopt
from yolopt.models import DetectionModel, builtin_config
from yolopt.models import common as yc
from yolopt.models import yolo as yy


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread(one_thread):
    """Torch on one thread for this module (conftest): the models here are small, and two cores shared with other
    work lose more to spinning threads than they gain."""


def _pickle_as_upstream(model: nn.Module, path, top_name: str, key: str = "model") -> None:
    """torch.save `model` so the pickle names upstream's modules (models.yolo.X, models.common.X)."""
    fake_yolo, fake_common = types.ModuleType("models.yolo"), types.ModuleType("models.common")
    pkg = types.ModuleType("models")
    pkg.yolo, pkg.common = fake_yolo, fake_common
    renamed = {yy.Detect: ("models.yolo", "Detect"), yy.DetectionModel: ("models.yolo", top_name)}
    for name in ("Conv", "C3", "Bottleneck", "SPPF", "SPP", "Concat", "Focus", "BottleneckCSP"):
        renamed[getattr(yc, name)] = ("models.common", name)
    saved = {cls: (cls.__module__, cls.__qualname__) for cls in renamed}
    sys.modules.update({"models": pkg, "models.yolo": fake_yolo, "models.common": fake_common})
    try:
        for cls, (mod, name) in renamed.items():
            cls.__module__, cls.__qualname__ = mod, name
            setattr(fake_yolo if mod == "models.yolo" else fake_common, name, cls)
        ckpt = {"epoch": 3, "best_fitness": None, key: model, "optimizer": None, "date": "2023-01-01"}
        if key == "ema":
            ckpt["model"] = None
        torch.save(ckpt, path)
    finally:
        for cls, (mod, name) in saved.items():
            cls.__module__, cls.__qualname__ = mod, name
        for k in ("models", "models.yolo", "models.common"):
            sys.modules.pop(k, None)


@pytest.mark.parametrize("top_name,key", [("DetectionModel", "model"), ("Model", "ema")])
def test_upstream_named_checkpoint_loads(tmp_path, top_name, key):
    m = DetectionModel(builtin_config("yolov5n", nc=3)).eval()
    m.names = ["a", "b", "c"]
    path = tmp_path / "ck.pt"
    _pickle_as_upstream(m.half(), path, top_name, key)
    loaded = yolopt.load(path)
    assert loaded.names == ["a", "b", "c"] and loaded.provenance["epoch"] == 3
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m.float()(x), rtol=0, atol=0)


def test_v5_era_yaml_with_focus_spp_csp(tmp_path):
    cfg = {
        "nc": 2,
        "depth_multiple": 0.33,
        "width_multiple": 0.25,
        "activation": "nn.LeakyReLU(0.1)",
        "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
        "backbone": [
            [-1, 1, "Focus", [64, 3]],
            [-1, 1, "Conv", [128, 3, 2]],
            [-1, 3, "BottleneckCSP", [128]],
            [-1, 1, "Conv", [256, 3, 2]],
            [-1, 1, "SPP", [256, [5, 9, 13]]],
        ],
        "head": [
            [-1, 1, "Conv", [128, 1, 1]],
            [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],
            [[-1, 2], 1, "Concat", [1]],
            [-1, 1, "C3", [128, False]],
            [[8, 4], 1, "Detect", ["nc", "anchors"]],
        ],
    }
    m = DetectionModel(cfg).eval()
    assert m.stride.tolist() == [4.0, 8.0]
    assert isinstance(m.model[1].act, nn.LeakyReLU) and m.model[1].act.negative_slope == 0.1
    with torch.no_grad():
        y = m(torch.rand(1, 3, 64, 64))
    assert y.shape == (1, 3 * (16 * 16 + 8 * 8), 7)
    m2 = yolopt.load(yolopt.save(m, tmp_path / "v5.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(m2(torch.ones(1, 3, 64, 64)), m(torch.ones(1, 3, 64, 64)), rtol=0, atol=0)


def test_unknown_module_in_yaml_is_reported():
    cfg = builtin_config("yolov5n")
    cfg["backbone"][2] = [-1, 1, "C2f", [128]]
    with pytest.raises(ValueError, match="layer 2 uses module C2f, which yolopt does not support"):
        DetectionModel(cfg)
