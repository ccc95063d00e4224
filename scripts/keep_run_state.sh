#!/usr/bin/env bash
# Keep what a training run needs to go on in a later session, in files git tracks:
# docs/training-runs/<NAME>/ gets the run's config.json and log.jsonl and, from its best.pt,
# the weights alone (float16, as the package ships them: best-weights.pt, ~8.5 MB).
# `napari-lit train-model ... --keep docs/training-runs/<NAME>` does the same after each
# validation; this script is for a run started without it. Commit the folder.
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
.venv/bin/python -c "
import sys
from napari_lit.training.recipe import keep_run
print(keep_run(sys.argv[1], sys.argv[2]))
" "$1" "docs/training-runs/$2"
ls -l "docs/training-runs/$2"
