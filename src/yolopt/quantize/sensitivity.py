"""Precision-loss analysis: how much error each layer introduces when it alone is INT8.

For every layer of :func:`yolopt.quantize.onnx_qdq.layer_groups` a QDQ model with only that layer
quantized is built from the shared calibration ranges and compared with the fp32 model on what the
detections are made of: the decoded rows the fp32 model scores above 0.05 (boxes in units of the
input size, objectness, class scores). That is the output SQNR in dB (higher is better). The raw
logits are a poor yardstick: their energy is in the large negative background logits, not in the
boxes of the objects. With
``map_images`` each one is also evaluated (mAP50-95 delta on that many val images).

The statistics that explain the ranking come along: per layer, the activation range the calibrator
saw and how much of it the bulk of the values use (``act_range``, ``act_p99_99``), and the weight
outlier ratio (max |w| over the 99th percentile of |w|, worst output channel).

The ranking is deterministic: same calibration images and ranges in, same order out (ties broken
by graph order).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.letterbox import to_pixels
from . import onnx_qdq as Q

log = logging.getLogger("yolopt")


@dataclass
class LayerSensitivity:
    layer: str
    ops: list[str]
    sqnr_db: float  # detection SQNR (see the module doc) with only this layer in INT8
    map_delta: float | None = None  # mAP50-95 (this layer INT8) - mAP50-95 (fp32), on map_images
    act_range: float | None = None  # calibrated output range (max - min) of the layer's last node
    act_p99_99: float | None = None  # the 99.99th percentile of |activation| on the sample images
    weight_outlier: float | None = None  # worst channel: max|w| / p99|w|

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sqnr_db"] = None if math.isinf(self.sqnr_db) else round(self.sqnr_db, 3)
        return d


@dataclass
class Sensitivity:
    layers: list[LayerSensitivity]  # most sensitive (lowest SQNR) first
    images: int
    map_images: int = 0
    full_int8_sqnr_db: float | None = None
    notes: list[str] = field(default_factory=list)

    def ranking(self) -> list[str]:
        return [x.layer for x in self.layers]

    def to_dict(self) -> dict:
        return {"images": self.images, "map_images": self.map_images, "full_int8_sqnr_db": self.full_int8_sqnr_db,
                "notes": self.notes, "layers": [x.to_dict() for x in self.layers]}

    def table(self, top: int | None = 20) -> str:
        rows = ["| rank | layer | ops | SQNR dB | mAP delta | act range | act p99.99 | w outlier |",
                "|---|---|---|---|---|---|---|---|"]

        def f(v, fmt):
            return "" if v is None else format(v, fmt)

        for i, x in enumerate(self.layers[:top], 1):
            rows.append(f"| {i} | `{x.layer}` | {'+'.join(sorted(set(x.ops)))} | {f(x.sqnr_db, '.1f')} | "
                        f"{f(x.map_delta, '+.4f')} | {f(x.act_range, '.2f')} | {f(x.act_p99_99, '.2f')} | "
                        f"{f(x.weight_outlier, '.1f')} |")
        return "\n".join(rows)


def _weights_by_node(proto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    out = {}
    for n in proto.graph.node:
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits:
            out[n.name] = numpy_helper.to_array(inits[n.input[1]])
    return out


def _weight_outlier(w: np.ndarray) -> float:
    a = np.abs(w.reshape(w.shape[0], -1))
    p99 = np.percentile(a, 99, axis=1)
    return float(np.max(a.max(axis=1) / np.maximum(p99, 1e-12)))


CONF = 0.05  # rows of the decoded output whose fp32 score (obj x best class) is above this are compared


def confident_rows(y: np.ndarray, conf: float = CONF) -> np.ndarray:
    """Indices of the decoded output rows ``(1, N, 5 + nc)`` that the fp32 model scores above ``conf``."""
    y = y[0]
    score = y[:, 4] * y[:, 5:].max(axis=1)
    idx = np.nonzero(score > conf)[0]
    return idx if idx.size else np.argsort(-score)[:10]


def _detection_view(y: np.ndarray, rows: np.ndarray, imgsz: int) -> np.ndarray:
    """The rows that matter, boxes in units of the input size so boxes and scores weigh alike."""
    v = y[0, rows].astype(np.float64)
    v[:, :4] /= imgsz
    return v


def analyse(proto, ranges, inputs: list[np.ndarray], *, input_uint8: bool = True, map_eval=None,
            threads: int | None = None, progress: bool = True, **build_kw) -> Sensitivity:
    """Rank every layer of ``proto`` (fp32 ModelProto) by the error it introduces alone.

    ``inputs``: ``(1, 3, H, W)`` float inputs to compare outputs on. ``map_eval(proto) -> mAP50-95``:
    optional, evaluates a QDQ model (the caller decides data and image count). ``build_kw`` go to
    :func:`onnx_qdq.build_qdq` (per_channel, reduce_range, ablation)."""
    ref_sess = Q.session(proto, threads)
    in_name = ref_sess.get_inputs()[0].name
    refs = [ref_sess.run(None, {in_name: x})[0] for x in inputs]
    keep = [confident_rows(r) for r in refs]
    imgsz = max(inputs[0].shape[2:])
    refs = [_detection_view(r, k, imgsz) for r, k in zip(refs, keep)]
    feeds = [to_pixels(x) if input_uint8 else x for x in inputs]
    groups = Q.layer_groups(proto, (build_kw.get("ablation") or Q.QDQAblation()).op_types)
    node_out = {n.name: n.output[0] for n in proto.graph.node}
    weights = _weights_by_node(proto)

    # activation magnitudes on the first sample image (what the calibrated range is spent on)
    last_outs = [node_out[nodes[-1]] for nodes in groups.values()]
    act_sess = Q.session(Q.add_outputs(proto, last_outs), threads)
    act_names = [o.name for o in act_sess.get_outputs()]
    acts = dict(zip(act_names, act_sess.run(None, {in_name: inputs[0]})))
    del act_sess

    def sqnr_of(model) -> float:
        s = Q.session(model, threads)
        iname = s.get_inputs()[0].name
        outs = [_detection_view(s.run(None, {iname: f})[0], k, imgsz) for f, k in zip(feeds, keep)]
        return Q.sqnr_db(refs, outs)

    base_map = map_eval(proto) if map_eval else None
    full = sqnr_of(Q.build_qdq(proto, ranges, input_uint8=input_uint8, **build_kw))
    rows = []
    from tqdm import tqdm

    for g, nodes in tqdm(list(groups.items()), desc="INT8 sensitivity", unit="layer", disable=not progress,
                         leave=False):
        model = Q.build_qdq(proto, ranges, only_layers=[g], input_uint8=input_uint8, **build_kw)
        row = LayerSensitivity(g, [n.split("/")[-1].split("_")[0] for n in nodes], sqnr_of(model))
        last = node_out[nodes[-1]]
        r = ranges.data.get(last) if hasattr(ranges, "data") else None
        if r is not None:
            lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in r.range_value)
            row.act_range = hi - lo
        if last in acts:
            row.act_p99_99 = float(np.percentile(np.abs(acts[last]), 99.99))
        ws = [weights[n] for n in nodes if n in weights]
        if ws:
            row.weight_outlier = max(_weight_outlier(w) for w in ws)
        if map_eval is not None:
            row.map_delta = float(map_eval(model) - base_map)
        rows.append(row)
    order = sorted(range(len(rows)), key=lambda i: (rows[i].sqnr_db, i))
    return Sensitivity([rows[i] for i in order], len(inputs), 0, full)


def plot(sens: Sensitivity, path: str | Path, top: int = 30) -> None:
    """Horizontal bars of SQNR (dB) for the ``top`` most sensitive layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_write

    rows = sens.layers[:top][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.5))
    vals = [r.sqnr_db if math.isfinite(r.sqnr_db) else 0.0 for r in rows]
    ax.barh([r.layer for r in rows], vals, color="#c0504d")
    if sens.full_int8_sqnr_db is not None:
        ax.axvline(sens.full_int8_sqnr_db, color="k", ls="--", lw=1, label=f"all INT8: {sens.full_int8_sqnr_db:.1f} dB")
        ax.legend(loc="lower right")
    ax.set_xlabel("Detect-output SQNR with only this layer in INT8 (dB, lower = more sensitive)")
    ax.set_title(f"INT8 sensitivity, {len(sens.layers)} layers ({sens.images} images)")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def save(sens: Sensitivity, path: str | Path) -> None:
    from ..fileio import write_json

    write_json(path, sens.to_dict(), quiet=True)


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
