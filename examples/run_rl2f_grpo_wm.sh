#!/usr/bin/env bash
# RL²F with the world-model loss on (rl2f.world_model.coef=0.1).
# One node of 8 GPUs, vLLM rollout, a 7B-12B model (recipe: recipes/rl2f_grpo_wm.yaml).
#
#   bash examples/run_rl2f_grpo_wm.sh [hydra overrides ...]
#   MODEL=/models/gemma-3-12b-it TRAIN_SOURCE=reasoning_gym bash examples/run_rl2f_grpo_wm.sh trainer.total_training_steps=100
#
# Environment: see examples/launch_recipe.sh (MODEL, DATA_DIR, TRAIN_SOURCE, VAL_SOURCE, DRY_RUN).
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/launch_recipe.sh" rl2f_grpo_wm "$@"
