#!/usr/bin/env bash
# RL²F: GRPO on multi-turn didactic interactions, self teacher, world-model loss off.
# One node of 8 GPUs, vLLM rollout, a 7B-12B model (recipe: recipes/rl2f_grpo.yaml).
#
#   bash examples/run_rl2f_grpo.sh [hydra overrides ...]
#   MODEL=/models/gemma-3-12b-it TRAIN_SOURCE=reasoning_gym bash examples/run_rl2f_grpo.sh trainer.total_training_steps=100
#
# Environment: see examples/launch_recipe.sh (MODEL, DATA_DIR, TRAIN_SOURCE, VAL_SOURCE, DRY_RUN).
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/launch_recipe.sh" rl2f_grpo "$@"
