"""Least-squares reconstruction after pruning (compress.reconstruct): it brings a pruned yolov5n's
outputs closer to the unpruned model's on images it did not fit on, leaves an unpruned copy as it
is, and refuses models it cannot pair."""

from __future__ import annotations

import copy

import pytest
import torch

from yolopt.compress import FitOptions, PruneSpec, prune, reconstruct
from yolopt.errors import YoloptError
from yolopt.models import DetectionModel, builtin_config


# one thread: these models are small, and two threads on two busy cores cost 10-40x in barrier waits
pytestmark = pytest.mark.usefixtures("one_thread")


def _images(folder, n: int, imgsz: int, start: int = 0) -> torch.Tensor:
    from yolopt.data.images import list_images, read_image
    from yolopt.data.preprocess import preprocess

    files = list_images(folder)[start:start + n]
    return preprocess([read_image(f) for f in files], imgsz, pixels=True)[0]


def _objectness_gap(student, teacher, x: torch.Tensor) -> float:
    """Mean squared difference of the objectness probabilities, over every anchor of every level."""
    with torch.no_grad():
        rs, _ = student.forward_features(x)
        rt, _ = teacher.forward_features(x)
    return float(sum(((a[..., 4].sigmoid() - b[..., 4].sigmoid()) ** 2).mean() for a, b in zip(rs, rt)) / len(rs))


def test_reconstruct_brings_a_pruned_yolov5n_back_towards_the_original(yolov5n, shared):
    fit = _images(shared / "data" / "hardhat" / "images" / "train", 8, 160)
    held_out = _images(shared / "data" / "coco128" / "images", 8, 160).float() / 255  # other images, other domain
    res = prune(yolov5n, PruneSpec(ratio=0.2, round_to=8, imgsz=160))
    pruned = res.model
    gap_pruned = _objectness_gap(pruned, yolov5n, held_out)
    stats = reconstruct(pruned, yolov5n, fit, FitOptions(positions=256), progress=False, kept=res.kept_outputs)
    gap_recon = _objectness_gap(pruned, yolov5n, held_out)
    assert gap_recon < 0.8 * gap_pruned, (gap_pruned, gap_recon)  # measured 0.65x (AMD EPYC, AVX2)
    assert len(stats.layers) == sum(isinstance(m, torch.nn.Conv2d) for m in pruned.modules())
    assert all(r["err_after"] <= r["err_before"] for r in stats.layers)
    assert stats.mean_error("err_after") < stats.mean_error("err_before")
    # the first conv sees the image itself and kept channels: nothing to correct there
    assert stats.layers[0]["layer"] == "model.0.conv" and stats.layers[0]["err_before"] == pytest.approx(0, abs=1e-6)
    # still a plain model: same output shape, loads its own state dict
    assert pruned(held_out[:1]).shape == yolov5n(held_out[:1]).shape


def _model(name: str = "yolov5n") -> DetectionModel:
    torch.manual_seed(0)
    m = DetectionModel(builtin_config(name, nc=3)).eval()
    with torch.no_grad():  # distinct BatchNorm parameters per channel, as a trained model has
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m


@pytest.fixture(scope="module")
def pruned_small():
    """``(teacher, PruneResult)``: the random-weight yolov5n pruned by 30% at 64 px, once for the module.
    Tests reconstruct deep copies of the result."""
    teacher = _model()
    return teacher, prune(teacher, PruneSpec(ratio=0.3, round_to=1, imgsz=64))


def test_reconstructing_an_unpruned_copy_changes_nothing():
    teacher = _model()
    student = copy.deepcopy(teacher)
    x = torch.rand(4, 3, 64, 64)
    reconstruct(student, teacher, x, FitOptions(positions=64), progress=False)
    for (n, a), b in zip(student.state_dict().items(), teacher.state_dict().values()):
        assert torch.equal(a, b), n


def test_without_the_pruners_record_the_kept_channels_are_found_by_their_batchnorm(pruned_small):
    teacher, res = pruned_small
    x = torch.rand(4, 3, 64, 64)
    a, b = copy.deepcopy(res.model), copy.deepcopy(res.model)
    reconstruct(a, teacher, x, FitOptions(positions=64), progress=False, kept=res.kept_outputs)
    reconstruct(b, teacher, x, FitOptions(positions=64), progress=False)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


def test_reconstruct_refuses_models_it_cannot_pair(pruned_small):
    teacher, res = pruned_small
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(YoloptError, match="unfused"):
        reconstruct(copy.deepcopy(teacher).fuse(), teacher, x, progress=False)
    p6 = _model("yolov5n6")
    with pytest.raises(YoloptError, match="not the model this one was pruned from"):
        reconstruct(p6, teacher, torch.rand(1, 3, 128, 128), progress=False)
    # BN parameters changed after pruning (e.g. fine-tuned): the kept channels cannot be told apart
    student = copy.deepcopy(res.model)
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.add_(0.01)
    with pytest.raises(YoloptError, match="reconstruct right after pruning"):
        reconstruct(student, teacher, x, progress=False)
