#!/usr/bin/env bash
# RL²F with the world-model loss on (rl2f.world_model.coef=0.1).
# One node of 8 GPUs, vLLM rollout, a 7B-12B model (recipe: recipes/rl2f_grpo_wm.yaml).
#
#   bash examples/run_rl2f_grpo_wm.sh [hydra overrides ...]
#   MODEL=/models/gemma-3-12b-it TRAIN_SOURCE=reasoning_gym bash examples/run_rl2f_grpo_wm.sh trainer.total_training_steps=100
#
# Environment: MODEL (default Qwen/Qwen2.5-7B-Instruct), DATA_DIR, TRAIN_SOURCE, VAL_SOURCE (see
# examples/data_preprocess/prepare_rl2f_data.sh), DRY_RUN=1 prints the composed config instead of training.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python}
MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}

source "$REPO/examples/data_preprocess/prepare_rl2f_data.sh"

ARGS=(
  --config-path="$REPO/recipes" --config-name=rl2f_grpo_wm
  data.train_files="$TRAIN_FILE" data.val_files="$VAL_FILE"
  actor_rollout_ref.model.path="$MODEL"
)
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  exec "$PYTHON" -m verl.trainer.main_ppo "${ARGS[@]}" "$@" --cfg job
fi
exec "$PYTHON" -m verl.trainer.main_ppo "${ARGS[@]}" "$@"
