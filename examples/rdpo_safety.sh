#!/usr/bin/env bash
# rDPO end to end on the bundled model, safety preset: critique -> harm-classifier scores ->
# soft-labelled pairs -> DPO training. Small settings so it finishes on a laptop CPU; drop the
# --limit/--critique.* options for the config's full size. Rerunning resumes from what is in the run directory.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
PY=${PYTHON:-.venv/bin/python}
RUN=${RUN:-runs/example_rdpo_safety}
$PY -m negalign rdpo configs/rdpo_safety.yaml --run-dir "$RUN" --limit 16 \
    --critique.max_new_tokens 64 --critique.critique_max_new_tokens 48
echo "pairs and their statistics:"; cat "$RUN/pairs.stats.json"
echo "model: $RUN/model"
