"""Calibration batches and the prune report (JSON + markdown)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..errors import YoloptError
from ..fileio import atomic_write, write_json


def calibration_batch(source: str | Path, imgsz: int, n: int = 16, split: str = "train"
                      ) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """A function returning one fixed batch ``(imgs (n,3,imgsz,imgsz) in [0,1], targets (m,6))``.

    ``source``: a data yaml (labelled images of ``split``, letterboxed, no augmentation) or a folder of
    images (no labels: ``targets`` is empty; enough for the channel means, not for ``taylor``).
    """
    source = Path(source)
    if source.is_dir():
        from ..data.images import list_images, read_image
        from ..data.preprocess import preprocess

        files = list_images(source)[:n]
        if not files:
            raise YoloptError(f"{source}: no images for calibration")
        x, _ = preprocess([read_image(f) for f in files], imgsz)
        batch = (x, torch.zeros(0, 6))
    else:
        from ..engine.loader import TrainDataset, collate, index_split
        from ..engine.loss import DEFAULT_HYP

        idx, _ = index_split(source, split)
        ds = TrainDataset(idx, imgsz, DEFAULT_HYP, augment=False)
        step = max(len(ds) // n, 1)
        imgs, targets, *_ = collate([ds[(k, 0, False)] for k in range(0, len(ds), step)[:n]])
        batch = (imgs.float() / 255, targets)
    return lambda: batch


def _fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def render_markdown(rep: dict) -> str:
    """The markdown summary of a prune report (see ``yolopt prune``)."""
    s = rep["summary"]
    lines = [f"# Prune report: {rep['model']}", "",
             f"method **{rep['method']}**, channel ratio {_fmt(rep.get('ratio'), '.3f')}"
             f"{' (global)' if rep.get('global') else ''}, round-to {rep.get('round_to')}, steps {rep.get('steps')}, "
             f"imgsz {rep['imgsz']}, backend {rep.get('backend')}", ""]
    for w in rep.get("warnings", []):
        lines.append(f"> **warning:** {w}")
    if rep.get("warnings"):
        lines.append("")
    lines += ["| | before | after pruning | after fine-tuning |", "|---|---|---|---|"]
    rows = [("params", "params", ",d"), ("GFLOPs", "gflops", ".3f"), ("latency p50 (ms)", "latency_ms", ".2f"),
            ("mAP50-95", "map50_95", ".4f"), ("mAP50", "map50", ".4f")]
    for label, key, spec in rows:
        v = s.get(key, {})
        lines.append(f"| {label} | {_fmt(v.get('before'), spec)} | {_fmt(v.get('pruned'), spec)} | "
                     f"{_fmt(v.get('finetuned'), spec)} |")
    if rep.get("machine"):
        m = rep["machine"]
        lines += ["", f"machine: {m.get('cpu', '?')} ({m.get('cores', '?')} cores), threads {rep.get('threads')}"]
    if rep.get("layers"):
        lines += ["", "## Channels per layer", "", "| layer | in before | out before | in after | out after |",
                  "|---|---|---|---|---|"]
        for r in rep["layers"]:
            changed = r["out_after"] != r["out_before"] or r["in_after"] != r["in_before"]
            lines.append(f"| {r['layer']}{' (pruned)' if changed else ''} | {r['in_before']} | {r['out_before']} | "
                         f"{r['in_after']} | {r['out_after']} |")
    if rep.get("note"):
        lines += ["", rep["note"]]
    return "\n".join(lines) + "\n"


def write_report(rep: dict, json_path: str | Path, md_path: str | Path) -> None:
    write_json(json_path, rep)
    text = render_markdown(rep)
    atomic_write(md_path, lambda tmp: Path(tmp).write_text(text))
