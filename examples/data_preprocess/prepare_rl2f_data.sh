#!/usr/bin/env bash
# Prepare (once) and validate the train / validation parquet files the GPU recipes use.
# Sourced by examples/run_{rl2f_grpo,rl2f_grpo_wm,rlvr_grpo}.sh, which then read TRAIN_FILE and VAL_FILE.
#
#   TRAIN_SOURCE  omni_math (default; the paper's training set, needs a reachable dataset hub)
#                 | reasoning_gym (offline: reasoning-gym maths generators, RG_GENERATORS, RG_TRAIN_SIZE rows)
#   VAL_SOURCE    champ (default; offline, 270 competition problems with solutions and hints)
#                 | hardmath2 (the paper's test set; needs a hub and HARDMATH2_HUB=<owner/name> or HARDMATH2_FILE)
#   DATA_DIR      where the files go (default ~/data/rl2f); existing files are reused unless FORCE_PREP=1.
set -euo pipefail

_PREP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-$HOME/data/rl2f}
TRAIN_SOURCE=${TRAIN_SOURCE:-omni_math}
VAL_SOURCE=${VAL_SOURCE:-champ}
RG_GENERATORS=${RG_GENERATORS:-basic_arithmetic,chain_sum,fraction_simplification,simple_equations,polynomial_equations,gsm_symbolic}
RG_TRAIN_SIZE=${RG_TRAIN_SIZE:-8192}
RG_TEST_SIZE=${RG_TEST_SIZE:-256}
FORCE_PREP=${FORCE_PREP:-0}

_need() { [[ "$FORCE_PREP" == 1 || ! -f "$1" ]]; }

case "$TRAIN_SOURCE" in
  omni_math)
    TRAIN_FILE="$DATA_DIR/omni_math/train.parquet"
    if _need "$TRAIN_FILE"; then
      "$PYTHON" "$_PREP_DIR/omni_math_data.py" --out-dir "$DATA_DIR/omni_math"
    fi ;;
  reasoning_gym)
    TRAIN_FILE="$DATA_DIR/reasoning_gym/train.parquet"
    if _need "$TRAIN_FILE"; then
      "$PYTHON" "$_PREP_DIR/reasoning_gym_data.py" --generators "$RG_GENERATORS" \
        --train-size "$RG_TRAIN_SIZE" --test-size "$RG_TEST_SIZE" --seed 0 --out-dir "$DATA_DIR/reasoning_gym"
    fi ;;
  *) echo "unknown TRAIN_SOURCE=$TRAIN_SOURCE (omni_math | reasoning_gym)" >&2; exit 2 ;;
esac

case "$VAL_SOURCE" in
  champ)
    VAL_FILE="$DATA_DIR/champ/test.parquet"
    if _need "$VAL_FILE"; then
      "$PYTHON" "$_PREP_DIR/champ_data.py" --out-dir "$DATA_DIR/champ"
    fi ;;
  hardmath2)
    VAL_FILE="$DATA_DIR/hardmath2/test.parquet"
    if _need "$VAL_FILE"; then
      if [[ -n "${HARDMATH2_FILE:-}" ]]; then
        "$PYTHON" "$_PREP_DIR/hardmath2_data.py" --local "$HARDMATH2_FILE" --out-dir "$DATA_DIR/hardmath2"
      else
        "$PYTHON" "$_PREP_DIR/hardmath2_data.py" --hub-name "${HARDMATH2_HUB:?set HARDMATH2_HUB=<owner/name> or HARDMATH2_FILE}" \
          --out-dir "$DATA_DIR/hardmath2"
      fi
    fi ;;
  *) echo "unknown VAL_SOURCE=$VAL_SOURCE (champ | hardmath2)" >&2; exit 2 ;;
esac

# Every row has a ground truth and a known task (errors name file, row and field).
"$PYTHON" -m rl2f_plugin.data_validation "$TRAIN_FILE" "$VAL_FILE"
export TRAIN_FILE VAL_FILE
