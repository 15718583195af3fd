"""Does QAT on COCO images generalise? QAT on one half of coco128, INT8 scored on the other half.

    PYTHONPATH=src python benchmarks/qat_heldout.py [--model ../shared/weights/yolov5n.pt] \
        [--coco ../shared/data/coco128] [--runs 4:2e-4,3:1e-4,10:5e-4] [--batch 8] [--folds AB] \
        [--cache runs/qat_heldout] [--out benchmarks/results/qat_heldout_<cpu>.json]

coco128 is the only labelled COCO set here, so scoring QAT on the images it trained on says nothing about
new images. This splits it: half ``A`` (even-indexed images) and half ``B`` (odd-indexed). For fold ``AB``:

* PTQ: ``quantize`` calibrates on the 64 ``A`` images and scores fp32 and INT8 on ``B`` (all-INT8 graph,
  7-bit weights, decode float: the default graph with no layer float);
* QAT, for each ``EPOCHS:LR`` in ``--runs``: ``qat_finetune`` on the ``A`` images *without labels* (the float
  model is the teacher), then the same calibration and graph; the tuned fp32 weights and their INT8 graph are
  scored on ``B``. Its best epoch is chosen on ``A`` (the only images it may look at).

``--folds AB,BA`` also runs the reverse split. Every step is cached under ``--cache`` (QAT runs resume), so a
killed run continues. Writes one JSON with the machine block.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_split(coco: Path, cache: Path) -> None:
    """Halves ``A`` / ``B`` of coco128 as symlinks, and the yamls ``AB`` (train A, val B), ``BA``, ``AA``, ``BB``."""
    imgs = sorted(p for p in (coco / "images" / "train2017").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if len(imgs) < 4:
        raise SystemExit(f"{coco}: expected coco128's images/train2017")
    names = [ln for ln in (coco / "coco128.yaml").read_text().splitlines()
             if ln.startswith("names") or ln.startswith("  ")]
    for half, sel in (("A", imgs[0::2]), ("B", imgs[1::2])):
        for sub in ("images", "labels"):
            (cache / half / sub).mkdir(parents=True, exist_ok=True)
        for p in sel:
            d = cache / half / "images" / p.name
            if not d.exists():
                d.symlink_to(p.resolve())
            lab = coco / "labels" / "train2017" / (p.stem + ".txt")
            dl = cache / half / "labels" / lab.name
            if lab.exists() and not dl.exists():
                dl.symlink_to(lab.resolve())
    for tr, va in (("A", "B"), ("B", "A"), ("A", "A"), ("B", "B")):
        (cache / f"{tr}{va}.yaml").write_text(f"path: {cache.resolve()}\ntrain: {tr}/images\nval: {va}/images\nnc: 80\n"
                                              + "\n".join(names) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "weights" / "yolov5n.pt"))
    ap.add_argument("--coco", default=str(ROOT.parent / "shared" / "data" / "coco128"))
    ap.add_argument("--runs", default="4:2e-4", help="QAT runs, EPOCHS:LR separated by commas")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--folds", default="AB", help="AB (train A, score B) and/or BA")
    ap.add_argument("--cache", default=str(ROOT / "runs" / "qat_heldout"))
    ap.add_argument("--out")
    args = ap.parse_args()

    import torch

    import yolopt
    from yolopt.fileio import write_json
    from yolopt.machine import machine_info
    from yolopt.quantize import QuantizeSpec, quantize
    from yolopt.quantize.calib import CalibrationSet
    from yolopt.quantize.qat import QATSpec, qat_finetune

    torch.set_num_threads(2)
    cache = Path(args.cache).resolve()
    make_split(Path(args.coco), cache)
    runs = [(int(e), float(lr)) for e, lr in (r.split(":") for r in args.runs.split(","))]
    t0 = time.perf_counter()

    def ptq(model, fold: str, name: str) -> dict:
        """fp32 and INT8 mAP on the fold's val half, calibrated on its train half (cached)."""
        path = cache / f"{name}.result.json"
        if path.is_file():
            return json.loads(path.read_text())
        spec = QuantizeSpec(data=str(cache / f"{fold}.yaml"), calib=64, speed_aware=False, latency=False,
                            imgsz=args.imgsz, out=cache / f"{name}.onnx", progress=False)
        rep = quantize(model, spec).report
        res = {k: {m: round(rep[k][m], 4) for m in ("map50_95", "map50")} for k in ("fp32", "int8")}
        write_json(path, res)
        return res

    folds = {}
    for fold in args.folds.split(","):
        tr = fold[0]
        base = ptq(yolopt.load(args.model), fold, f"{fold}_ptq")
        print(f"{fold} fp32 {base['fp32']['map50_95']:.4f}  PTQ int8 {base['int8']['map50_95']:.4f}", flush=True)
        rows = []
        for epochs, lr in runs:
            tag = f"{fold}_qat_e{epochs}_lr{lr:g}_b{args.batch}"
            model = yolopt.load(args.model)
            calib = CalibrationSet.from_data(str(cache / f"{fold}.yaml"), args.imgsz, 64, seed=0)
            t = time.perf_counter()
            tuned = qat_finetune(model, QATSpec(data=str(cache / tr / "images"), val_data=str(cache / f"{tr}{tr}.yaml"),
                                                epochs=epochs, imgsz=args.imgsz, batch=args.batch, lr0=lr,
                                                out=cache / tag, progress=False), calib)
            train_s = round(time.perf_counter() - t)
            r = ptq(tuned, fold, tag)
            row = {"epochs": epochs, "lr0": lr, "batch": args.batch, "qat_seconds": train_s,
                   "fp32_tuned": r["fp32"], "int8": r["int8"],
                   "int8_gain_over_ptq": round(r["int8"]["map50_95"] - base["int8"]["map50_95"], 4),
                   "int8_drop_vs_fp32": round(base["fp32"]["map50_95"] - r["int8"]["map50_95"], 4)}
            rows.append(row)
            print(f"{tag}: tuned fp32 {r['fp32']['map50_95']:.4f}  int8 {r['int8']['map50_95']:.4f} "
                  f"(PTQ {base['int8']['map50_95']:.4f}, fp32 {base['fp32']['map50_95']:.4f})", flush=True)
        folds[fold] = {"train": f"{tr} (64 images, no labels)", "val": f"{fold[1]} (64 images)",
                       "fp32": base["fp32"], "ptq_int8": base["int8"], "qat": rows}
    mi = machine_info()
    out = Path(args.out) if args.out else ROOT / "benchmarks/results" / (
        "qat_heldout_" + ("vnni" if mi.get("vnni") else "novnni") + ".json")
    write_json(out, {"model": Path(args.model).name, "imgsz": args.imgsz, "folds": folds,
                     "total_seconds": round(time.perf_counter() - t0, 1), "machine": mi})
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
