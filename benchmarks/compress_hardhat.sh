#!/usr/bin/env bash
# The hardhat acceptance run of `yolopt compress` (docs/compress.md, "yolopt compress on hardhat").
# Start it, or continue a killed run from its last finished epoch (the same command; the run folder holds
# everything: the plan, the split, each stage's training checkpoint):
#   nohup benchmarks/compress_hardhat.sh > runs/compress/hardhat.log 2>&1 &
# Default recipe settings (round-to 16, fill, 3 h budget); the options given are the data, the two targets of the
# acceptance (0.5x the FLOPs, widening only while the measured ONNX Runtime latency stays under 0.65x the base's)
# and the run folder.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${YOLOPT_SHARED:-../shared}
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m yolopt compress benchmarks/models/hardhat_base.safetensors \
    --data "$SHARED/data/hardhat/hardhat.yaml" --target-flops 0.5 --max-latency-ratio 0.65 \
    --out runs/compress/hardhat
