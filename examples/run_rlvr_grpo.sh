#!/usr/bin/env bash
# the baseline: stock single-turn GRPO on the same data and reward.
# One node of 8 GPUs, vLLM rollout, a 7B-12B model (recipe: recipes/rlvr_grpo.yaml).
#
#   bash examples/run_rlvr_grpo.sh [hydra overrides ...]
#   MODEL=/models/gemma-3-12b-it TRAIN_SOURCE=reasoning_gym bash examples/run_rlvr_grpo.sh trainer.total_training_steps=100
#
# Environment: see examples/launch_recipe.sh (MODEL, DATA_DIR, TRAIN_SOURCE, VAL_SOURCE, DRY_RUN).
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/launch_recipe.sh" rlvr_grpo "$@"
