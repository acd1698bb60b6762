#!/usr/bin/env bash
# RL²F vs RLVR on one 8-GPU node: the comparison users run.
#   1. prepare the data (examples/data_preprocess/prepare_rl2f_data.sh: TRAIN_SOURCE / VAL_SOURCE);
#   2. train recipes/rlvr_grpo.yaml (single-turn GRPO) and recipes/rl2f_grpo.yaml (didactic GRPO, self teacher) for
#      the SAME number of steps from the SAME checkpoint, each saving an HF copy of its last step;
#   3. evaluate the untrained model and both trained ones with the multi-turn harness (python -m rl2f_plugin.eval)
#      on the held-out split (VAL_FILE), same teacher, same K (default 10, the paper's evaluation), greedy.
#      Each student is served by vLLM's OpenAI-compatible server (EVAL_BACKEND=vllm, default) or loaded with
#      transformers (EVAL_BACKEND=hf, slow for 7B+);
#   4. write one table (compare.md) and one plot (compare.png): cumulative accuracy by turn with 95% bootstrap CIs.
#
#   bash examples/compare_rl2f_vs_rlvr.sh
#   MODEL=/models/gemma-3-12b-it STEPS=200 TRAIN_SOURCE=reasoning_gym bash examples/compare_rl2f_vs_rlvr.sh
#
# Environment: MODEL (default Qwen/Qwen2.5-7B-Instruct), STEPS (default 100), EVAL_TURNS (default 10),
# EVAL_TEACHER (self | template | openai | none; default self), EVAL_LIMIT (evaluate only the first N rows),
# EVAL_BACKEND (vllm | hf), VLLM_PORT (default 8765), VLLM_ARGS (extra `vllm serve` arguments, e.g.
# "--tensor-parallel-size 2"), OUT (default ./outputs/compare_gpu), DATA_DIR / TRAIN_SOURCE / VAL_SOURCE (see
# prepare_rl2f_data.sh), SKIP_TRAIN=1 (evaluate existing checkpoints), DRY_RUN=1 (print the commands only),
# PYTHON. Extra arguments go to both trainings as Hydra overrides. Re-running resumes the evaluations.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python}
MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
STEPS=${STEPS:-100}
EVAL_TURNS=${EVAL_TURNS:-10}
EVAL_TEACHER=${EVAL_TEACHER:-self}
EVAL_BACKEND=${EVAL_BACKEND:-vllm}
VLLM_PORT=${VLLM_PORT:-8765}
OUT="$(mkdir -p "${OUT:-$PWD/outputs/compare_gpu}" && cd "${OUT:-$PWD/outputs/compare_gpu}" && pwd)"
run() { echo "+ $*"; if [[ "${DRY_RUN:-0}" != 1 ]]; then "$@"; fi; }

echo "[compare] 1/4 data"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  TRAIN_FILE=${TRAIN_FILE:-$HOME/data/rl2f/train.parquet}; VAL_FILE=${VAL_FILE:-$HOME/data/rl2f/test.parquet}
else
  source "$REPO/examples/data_preprocess/prepare_rl2f_data.sh"
fi
echo "[compare]     train $TRAIN_FILE, held-out $VAL_FILE"

train() {  # $1 = recipe
  local recipe="$1" dir="$OUT/$1"; shift
  local hf="$dir/checkpoints/global_step_$STEPS/actor/huggingface"
  if [[ "${SKIP_TRAIN:-0}" == 1 || -f "$hf/config.json" && -n "$(ls "$hf"/*.safetensors 2>/dev/null)" ]]; then
    echo "[compare]     $recipe: using $hf"; return 0
  fi
  mkdir -p "$dir"
  echo "[compare]     $recipe: $STEPS steps (log: $dir/train.log)"
  run "$PYTHON" -m verl.trainer.main_ppo --config-path="$REPO/recipes" --config-name="$recipe" \
      actor_rollout_ref.model.path="$MODEL" data.train_files="$TRAIN_FILE" data.val_files="$VAL_FILE" \
      trainer.total_training_steps="$STEPS" trainer.save_freq="$STEPS" \
      trainer.default_local_dir="$dir/checkpoints" trainer.experiment_name="compare_$recipe" \
      "actor_rollout_ref.actor.checkpoint.save_contents=[model,extra,hf_model]" "$@" 2>&1 | tee "$dir/train.log"
  # the evaluation needs the last step's checkpoint: say so here rather than with a missing-model error later
  if [[ "${DRY_RUN:-0}" != 1 && ! -f "$hf/config.json" ]]; then
    echo "[compare] error: $recipe wrote no checkpoint at $hf (did the run stop before step $STEPS? see $dir/train.log)" >&2
    exit 1
  fi
}

echo "[compare] 2/4 training (same base model, same data, same steps)"
train rlvr_grpo "$@"
train rl2f_grpo "$@"

evaluate() {  # $1 = label, $2 = model folder or hub id
  local label="$1" model="$2" out="$OUT/eval/$1.jsonl"
  local common=(--data "$VAL_FILE" --out "$out" --name "$label" --teacher "$EVAL_TEACHER" --max-turns "$EVAL_TURNS"
                --recipe "$REPO/recipes/rl2f_grpo.yaml" ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} --no-progress)
  if [[ "$EVAL_BACKEND" == hf ]]; then
    run "$PYTHON" -m rl2f_plugin.eval "${common[@]}" --student "hf:$model" --concurrency 16 --batch-size 16 || [[ $? == 1 ]]
    return 0
  fi
  # vLLM's OpenAI-compatible server, token-id prompts (the harness' default), stopped after the run
  echo "+ vllm serve $model --port $VLLM_PORT ${VLLM_ARGS:-}"
  [[ "${DRY_RUN:-0}" == 1 ]] || {
    "$PYTHON" -m vllm.entrypoints.openai.api_server --model "$model" --served-model-name "$label" \
        --port "$VLLM_PORT" ${VLLM_ARGS:-} > "$OUT/eval/$label.vllm.log" 2>&1 &
    local pid=$!
    trap "kill $pid 2>/dev/null || true" EXIT
    for _ in $(seq 1 180); do
      curl -sf "http://127.0.0.1:$VLLM_PORT/v1/models" >/dev/null && break
      kill -0 "$pid" 2>/dev/null || { echo "[compare] vLLM died; see $OUT/eval/$label.vllm.log"; exit 1; }
      sleep 5
    done
  }
  run "$PYTHON" -m rl2f_plugin.eval "${common[@]}" --student "openai:http://127.0.0.1:$VLLM_PORT" \
      --model "$label" --tokenizer "$model" --concurrency 64 --timeout 300 --retries 3 || [[ $? == 1 ]]
  [[ "${DRY_RUN:-0}" == 1 ]] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; trap - EXIT; }
}

echo "[compare] 3/4 multi-turn evaluation on the held-out split (K=$EVAL_TURNS, teacher $EVAL_TEACHER, $EVAL_BACKEND)"
mkdir -p "$OUT/eval"
evaluate base "$MODEL"
evaluate rlvr "$OUT/rlvr_grpo/checkpoints/global_step_$STEPS/actor/huggingface"
evaluate rl2f "$OUT/rl2f_grpo/checkpoints/global_step_$STEPS/actor/huggingface"

echo "[compare] 4/4 table and plot"
run "$PYTHON" -m rl2f_plugin.eval --compare "$OUT/eval/base.jsonl" "$OUT/eval/rlvr.jsonl" "$OUT/eval/rl2f.jsonl" \
    --labels "$(basename "$MODEL") (untrained)" "RLVR ($STEPS steps)" "RL2F ($STEPS steps)" \
    --table "$OUT/compare.md" --plot "$OUT/compare.png" --summary-json "$OUT/compare.json" \
    --title "RL2F vs RLVR, $(basename "$VAL_FILE" .parquet), K=$EVAL_TURNS, teacher=$EVAL_TEACHER"
echo "[compare] wrote $OUT/compare.md, $OUT/compare.png (transcripts: $OUT/eval/*.jsonl)"
