#!/usr/bin/env bash
# Keep a training run's resume state (last.pt, best.pt, config.json, log.jsonl) in this
# clone's git objects, on the branch run-state/<name> (one commit, replaced each time), so a
# run survives a fresh checkout of the working tree; `restore` writes it back.
#   bash scripts/keep_run_state.sh save RUN_DIR NAME
#   bash scripts/keep_run_state.sh restore RUN_DIR NAME
set -euo pipefail
cd "$(dirname "$0")/.."
what=$1 dir=$2 name=$3
ref=refs/heads/run-state/$name
if [ "$what" = save ]; then
  entries=""
  for f in last.pt best.pt config.json log.jsonl; do
    [ -f "$dir/$f" ] || continue
    entries+="100644 blob $(git hash-object -w "$dir/$f")"$'\t'"$f"$'\n'
  done
  tree=$(printf '%s' "$entries" | git mktree)
  commit=$(git commit-tree "$tree" -m "run state of $name, $(date -u +%FT%TZ)")
  git update-ref "$ref" "$commit"
  git reflog expire --expire=now --all && git gc -q --prune=now
  echo "saved $dir as $ref ($commit)"
else
  mkdir -p "$dir"
  for f in $(git ls-tree --name-only "$ref"); do
    git cat-file blob "$ref:$f" > "$dir/$f"
  done
  echo "restored $ref into $dir"
fi
