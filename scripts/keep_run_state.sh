#!/usr/bin/env bash
# Keep what a training run needs to go on in a later session, in files git tracks:
# docs/training-runs/<NAME>/ gets the run's config.json and log.jsonl and, from its best.pt,
# the weights alone (float16, as the package ships them: best-weights.pt, ~8.5 MB).
#
# Why tracked files: a new session's checkout holds only what has landed on main. The run
# folder (runs/, ignored), branches other than main and objects kept in the clone's .git did
# not survive between sessions (runs R and R2 lost their checkpoints that way). The optimizer
# state (last.pt, ~51 MB) is not kept: a later session goes on with a new run warm-started
# from the kept weights (--init-weights docs/training-runs/<NAME>/best-weights.pt), a chain of
# warm restarts as the shipped weights were made.
#
#   bash scripts/keep_run_state.sh RUN_DIR NAME
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1 name=$2
out=docs/training-runs/$name
mkdir -p "$out"
for f in config.json log.jsonl; do
  [ -f "$dir/$f" ] && cp "$dir/$f" "$out/$f"
done
if [ -f "$dir/best.pt" ]; then
  .venv/bin/python -c "
import sys
from pathlib import Path
from napari_lit.training.recipe import export_weights
export_weights(Path(sys.argv[1]), Path(sys.argv[2]))
" "$dir/best.pt" "$out/best-weights.pt"
fi
ls -l "$out"
