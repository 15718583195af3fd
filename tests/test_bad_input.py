"""Every kind of bad input exits non-zero with one clear line, and nothing unsafe runs."""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

import yolopt
from yolopt.errors import CheckpointError
from conftest import run_cli


def _one_line_error(r, *needles):
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("yolopt: error")]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path, bus_jpg):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    torch.save({"model": _Evil(marker)}, ckpt)
    with pytest.raises(CheckpointError, match="system"):
        yolopt.load(ckpt)
    r = run_cli("predict", ckpt, bus_jpg)
    _one_line_error(r, str(ckpt), "system", "refusing")
    assert not marker.exists(), "code from the pickle ran"


def test_unsupported_module(tmp_path, bus_jpg):
    models = types.ModuleType("models")
    common = types.ModuleType("models.common")

    class CBAM(torch.nn.Module):
        pass

    CBAM.__module__ = "models.common"
    CBAM.__qualname__ = "CBAM"
    common.CBAM = CBAM
    models.common = common
    sys.modules["models"], sys.modules["models.common"] = models, common
    try:
        ckpt = tmp_path / "cbam.pt"
        torch.save({"model": CBAM()}, ckpt)
    finally:
        del sys.modules["models"], sys.modules["models.common"]
    line = _one_line_error(run_cli("predict", ckpt, bus_jpg), str(ckpt))
    assert "checkpoint uses module models.common.CBAM, which yolopt does not support" in line


def test_missing_weights(tmp_path, bus_jpg):
    _one_line_error(run_cli("predict", tmp_path / "nope.pt", bus_jpg), "nope.pt", "not found")


def test_not_a_checkpoint_and_truncated(tmp_path, yolov5n_pt, bus_jpg):
    junk = tmp_path / "junk.pt"
    junk.write_text("hello, I am not a model\n")
    _one_line_error(run_cli("predict", junk, bus_jpg), "junk.pt", "not a checkpoint")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(yolov5n_pt.read_bytes()[: 2_000_000])
    _one_line_error(run_cli("predict", trunc, bus_jpg), "trunc.pt", "truncated")
    img_as_pt = tmp_path / "image.pt"
    shutil.copy(bus_jpg, img_as_pt)
    _one_line_error(run_cli("predict", img_as_pt, bus_jpg), "image.pt")


def _mini_dataset(root: Path, shared: Path, names, labels: dict[str, str] | None = None, n_images: int = 2) -> Path:
    src = sorted((shared / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[:n_images]
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for f in src:
        shutil.copy(f, root / "images" / "val" / f.name)
        lab = shared / "data" / "coco128" / "labels" / "train2017" / f"{f.stem}.txt"
        if lab.exists():
            shutil.copy(lab, root / "labels" / "val" / lab.name)
    for name, text in (labels or {}).items():
        (root / "labels" / "val" / name).write_text(text)
    cfg = {"path": ".", "train": "images/val", "val": "images/val", "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    return root / "data.yaml"


@pytest.fixture()
def coco_names(yolov5n):
    return list(yolov5n.names)


def test_data_yaml_problems(tmp_path, yolov5n_pt):
    _one_line_error(run_cli("val", yolov5n_pt, "--data", tmp_path / "missing.yaml"), "missing.yaml", "not found")
    bad = tmp_path / "nonames.yaml"
    bad.write_text("path: .\nval: images\n")
    _one_line_error(run_cli("val", yolov5n_pt, "--data", bad), "nonames.yaml", "names")


def test_empty_image_folder(tmp_path, yolov5n_pt, coco_names):
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"path": ".", "val": "images/val", "names": coco_names}))
    _one_line_error(run_cli("val", yolov5n_pt, "--data", tmp_path / "data.yaml"), "images/val", "empty")


def test_wrong_class_count(tmp_path, yolov5n_pt, shared):
    data = _mini_dataset(tmp_path, shared, ["helmet", "vest"], labels=None, n_images=1)
    # coco labels have ids up to 79: either the label check or the class-count check must fire
    r = run_cli("val", yolov5n_pt, "--data", data)
    line = _one_line_error(r)
    assert "class" in line


def test_wrong_class_count_clean_labels(tmp_path, yolov5n_pt, shared):
    data = _mini_dataset(tmp_path, shared, ["helmet", "vest"], n_images=1)
    for f in (tmp_path / "labels" / "val").glob("*.txt"):
        f.write_text("0 0.5 0.5 0.2 0.2\n")
    line = _one_line_error(run_cli("val", yolov5n_pt, "--data", data), "data.yaml")
    assert "2 classes" in line and "80" in line


@pytest.mark.parametrize(
    "text,needle",
    [
        ("0 0.5 0.5 0.1 0.1\n80 0.5 0.5 0.1 0.1\n", ":2: class id 80 out of range"),
        ("0 0.5 0.5 0.1\n", ":1: expected 5 columns"),
        ("0 0.5 0.5 0.1 0.1\n3 1.5 0.5 0.1 0.1\n", ":2: coordinates outside [0, 1]"),
        ("zero 0.5 0.5 0.1 0.1\n", ":1: non-numeric"),
    ],
)
def test_bad_labels(tmp_path, yolov5n_pt, shared, coco_names, text, needle):
    src = sorted((shared / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[0]
    data = _mini_dataset(tmp_path, shared, coco_names, labels={f"{src.stem}.txt": text}, n_images=1)
    line = _one_line_error(run_cli("val", yolov5n_pt, "--data", data), f"{src.stem}.txt{needle}")
    assert line


def test_corrupt_image_is_skipped_and_counted(tmp_path, yolov5n_pt, shared, coco_names):
    data = _mini_dataset(tmp_path, shared, coco_names, n_images=2)
    (tmp_path / "images" / "val" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    out = tmp_path / "m.json"
    r = run_cli("val", yolov5n_pt, "--data", data, "--json", out, "--batch", "2")
    assert r.returncode == 0, r.stderr
    assert "broken.jpg" in r.stderr and "warning" in r.stderr
    import json

    m = json.loads(out.read_text())
    assert m["images"] == 2 and len(m["skipped"]) == 1 and m["skipped"][0].endswith("broken.jpg")


def test_predict_skips_corrupt_image(tmp_path, yolov5n_pt, bus_jpg):
    (tmp_path / "broken.png").write_bytes(b"garbage")
    shutil.copy(bus_jpg, tmp_path / "bus.jpg")
    r = run_cli("predict", yolov5n_pt, tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    assert "broken.png" in r.stderr
    import json

    assert [Path(g["image"]).name for g in json.loads(r.stdout)] == ["bus.jpg"]


def test_imgsz_rounded_to_stride(yolov5n_pt, bus_jpg):
    r = run_cli("predict", yolov5n_pt, bus_jpg, "--imgsz", "630", "--json")
    assert r.returncode == 0, r.stderr
    assert "not a multiple of the model stride 32; using 640" in r.stderr


def test_missing_source(yolov5n_pt, tmp_path):
    _one_line_error(run_cli("predict", yolov5n_pt, tmp_path / "nothing.jpg"), "nothing.jpg", "no such file")


def test_predict_never_overwrites_inputs(yolov5n_pt, tmp_path, bus_jpg):
    shutil.copy(bus_jpg, tmp_path / "bus.jpg")
    before = (tmp_path / "bus.jpg").read_bytes()
    r = run_cli("predict", yolov5n_pt, tmp_path / "bus.jpg", "--out", tmp_path)
    assert r.returncode != 0
    assert "would overwrite the input image (--out)" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "bus.jpg").read_bytes() == before


@pytest.mark.parametrize("cmd,args,option", [
    ("predict", ["--imgsz", "0"], "--imgsz"),
    ("predict", ["--imgsz", "-5"], "--imgsz"),
    ("val", ["--imgsz", "100000"], "--imgsz"),
    ("bench", ["--imgsz", "0"], "--imgsz"),
    ("train", ["--imgsz", "-5"], "--imgsz"),
    ("predict", ["--conf", "2"], "--conf"),
    ("predict", ["--conf", "-1"], "--conf"),
    ("val", ["--iou", "5"], "--iou"),
    ("val", ["--batch", "0"], "--batch"),
    ("predict", ["--max-det", "0"], "--max-det"),
    ("export", ["--imgsz", "0"], "--imgsz"),
    ("profile", ["--imgsz", "16"], "--imgsz"),
])
def test_numeric_options_one_rule_one_line(tmp_path, yolov5n_pt, bus_jpg, cmd, args, option):
    """Every command validates numbers the same way, before any work: one line, exit 2, the option named."""
    pos = {"predict": [yolov5n_pt, bus_jpg], "val": [yolov5n_pt, "--data", "x.yaml"], "bench": [yolov5n_pt],
           "train": ["--data", "x.yaml", "--cfg", "yolov5n"], "export": [yolov5n_pt, "--format", "onnx"],
           "profile": [yolov5n_pt]}[cmd]
    r = run_cli(cmd, *pos, *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert option in r.stderr and f"yolopt {cmd}: error:" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_export_rounds_imgsz_up_like_every_command(tmp_path, yolov5n_pt):
    r = run_cli("export", yolov5n_pt, "--format", "onnx", "--imgsz", "33", "--out", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    assert "not a multiple of the model stride 32; using 64" in r.stderr
    from yolopt import runtime

    assert runtime.open(tmp_path / "m.onnx").imgsz == (64, 64)


@pytest.mark.parametrize("cmd,args,option", [
    ("val", ["--data", "x.yaml", "--json", "/proc/x.json"], "--json /proc/x.json"),
    ("predict", ["{bus}", "--out", "/proc/annot"], "--out /proc/annot"),
    ("predict", ["{bus}", "--json", "{file}/d.json"], "--json"),
    ("bench", ["--json", "{file}/b.json"], "--json"),
    ("profile", ["--plot", "{file}"], "--plot"),
    ("export", ["--format", "onnx", "--json", "/proc/e.json"], "--json /proc/e.json"),
])
def test_outputs_checked_before_any_work(tmp_path, yolov5n_pt, bus_jpg, cmd, args, option):
    """A path that cannot be written is one line before the work starts (no 24 s val, then a traceback)."""
    f = tmp_path / "some_file.txt"
    f.write_text("x")
    args = [a.replace("{bus}", str(bus_jpg)).replace("{file}", str(f)) for a in args]
    r = run_cli(cmd, yolov5n_pt, *args, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and option in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["some_file.txt"]  # nothing ran, nothing written


def test_val_data_that_is_not_yaml(yolov5n_pt, bus_jpg):
    r = run_cli("val", yolov5n_pt, "--data", bus_jpg)
    assert r.returncode == 1 and r.stderr.strip() == f"yolopt: error: {bus_jpg}: not a YAML data file (binary " \
        "content; give the dataset's .yaml)"


def test_broken_pipe_exits_quietly(yolov5n_pt):
    import subprocess

    cmd = f"'{sys.executable}' -m yolopt info '{yolov5n_pt}' | head -c 10 >/dev/null; echo rc=${{PIPESTATUS[0]}}"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.stdout.strip() == "rc=0"


def test_export_out_existing_folder_gets_a_file_inside(tmp_path, yolov5n_pt):
    exp = tmp_path / "exp"
    exp.mkdir()
    r = run_cli("export", yolov5n_pt, "--format", "onnx", "--imgsz", "64", "--out", exp, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (exp / "yolov5n.onnx").is_file() and not (tmp_path / "exp.onnx").exists()


def test_synth_refuses_a_non_empty_folder_unless_forced(tmp_path):
    out = tmp_path / "s"
    assert run_cli("data", "synth", "--out", out, "--images", "10", "--imgsz", "64").returncode == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    r = run_cli("data", "synth", "--out", out, "--images", "4", "--imgsz", "64")
    assert r.returncode == 1 and "not empty" in r.stderr and "--force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing touched
    r = run_cli("data", "synth", "--out", out, "--images", "4", "--imgsz", "64", "--force")
    assert r.returncode == 0, r.stderr
    assert len(list((out / "images").rglob("*.jpg"))) == 4  # a clean set of 4, not a mix with the old 10


def test_predict_with_nothing_readable_fails(tmp_path, yolov5n_pt):
    fake = tmp_path / "text.jpg"
    fake.write_text("not an image")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    r = run_cli("predict", yolov5n_pt, fake, trunc, "--json", tmp_path / "d.json")
    assert r.returncode == 1 and "none of the 2 input(s)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "d.json").exists()


def test_profile_tables_are_not_cut_when_piped(yolov5n_pt, tmp_path):
    r = run_cli("profile", yolov5n_pt, "--imgsz", "64", "--repeats", "1", "--warmup", "0", "--runtimes",
                "--no-pipeline", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) > 80  # rich would cut at 80 columns off a terminal
    assert "…" not in r.stdout.split("findings")[0]  # no ellipsised cells in the tables


def test_library_error_fields_become_the_commands_flags(capsys):
    """A library error names spec fields; the CLI shows the flags of the running command that set them."""
    from yolopt.cli import build_parser, error_line
    from yolopt.errors import YoloptError

    parser = build_parser()
    line = error_line(YoloptError("quantization-aware training needs a labelled dataset", fields=("qat", "data")),
                      parser, "quantize")
    assert line == "yolopt: error: quantization-aware training needs a labelled dataset (--qat, --data)"
    assert error_line(YoloptError("bad", fields=("no_such_field",)), parser, "quantize") == "yolopt: error: bad"
    assert error_line(YoloptError("plain"), parser, None) == "yolopt: error: plain"
