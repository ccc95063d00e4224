#!/usr/bin/env bash
# Optional: napari-lit's GPU path (tracker, LIT-LoRA, adaptation timing) on a CUDA machine,
# with napari-lit installed beside a CUDA build of torch. Results go to benchmarks/results/gpu/;
# benchmarks/benchmarks_doc.py compares them with the CPU results of the same sequences.
#
#   PYTHON=python3 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/dev}
OUT=benchmarks/results/gpu
PY=${PYTHON:-.venv/bin/python}
SEQS="c2c12-phase-timelapse totalseg-ct-abdomen davis-dog davis-car-shadow"
mkdir -p "$OUT"
$PY benchmarks/adaptation_speed.py --device cuda --out $OUT/adaptation_speed_cuda.json
BENCH="$PY -m napari_lit.cli bench $DATA --sequences $SEQS --init mask --device cuda --quiet"
$BENCH --method propagate --json $OUT/propagate-mask-cuda.json
$BENCH --method lit --tau 0.5 --json $OUT/lit-tau0.5-cuda.json
