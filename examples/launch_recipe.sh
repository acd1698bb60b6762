#!/usr/bin/env bash
# Shared launcher of the GPU recipes: prepares + validates the data, then runs verl's stock main_ppo with
# recipes/$RECIPE.yaml. Called by examples/run_<recipe>.sh; usable directly:
#
#   bash examples/launch_recipe.sh rl2f_grpo [hydra overrides ...]
#
# Environment: MODEL (default Qwen/Qwen2.5-7B-Instruct), DATA_DIR, TRAIN_SOURCE, VAL_SOURCE (see
# examples/data_preprocess/prepare_rl2f_data.sh), DRY_RUN=1 prints the composed config instead of training.
set -euo pipefail

RECIPE=${1:?usage: launch_recipe.sh RECIPE [hydra overrides ...]}
shift
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -f "$REPO/recipes/$RECIPE.yaml" ]] || { echo "error: no recipe $REPO/recipes/$RECIPE.yaml" >&2; exit 2; }
PYTHON=${PYTHON:-python}
MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}

source "$REPO/examples/data_preprocess/prepare_rl2f_data.sh"

ARGS=(
  --config-path="$REPO/recipes" --config-name="$RECIPE"
  data.train_files="$TRAIN_FILE" data.val_files="$VAL_FILE"
  actor_rollout_ref.model.path="$MODEL"
)
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  exec "$PYTHON" -m verl.trainer.main_ppo "${ARGS[@]}" "$@" --cfg job
fi
exec "$PYTHON" -m verl.trainer.main_ppo "${ARGS[@]}" "$@"
