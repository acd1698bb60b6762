#!/usr/bin/env bash
# The CPU comparison of 2026-11-27 (README; results in examples/results/compare_cpu_2026-11-27/): RLVR and RL²F
# (reward_mode final) with seeds 1 and 2 and RL²F + world-model loss with seed 1, 16 policy updates each from the same
# checkpoint on the same data, evaluated with the informative (template) teacher only, K=3, greedy.
# It is examples/study_cpu.sh with those runs and no controls; the study (four arms, three or more seeds, the
# content-free teacher, independent sampling, autodidact) is `bash examples/study_cpu.sh`.
#
#   bash examples/compare_rl2f_vs_rlvr_cpu.sh       # resumable; the environment of study_cpu.sh applies
set -euo pipefail
export ARMS="${ARMS:-rlvr_cpu rl2f_cpu rl2f_wm_cpu}"
export SEEDS="${SEEDS:-1 2}"
export RUNS="${RUNS:-rlvr_cpu:1 rl2f_cpu:1 rlvr_cpu:2 rl2f_cpu:2 rl2f_wm_cpu:1}"
export CONTROLS="${CONTROLS:-informative}"
export OUT="${OUT:-$PWD/outputs/compare_cpu}"
export TITLE="${TITLE:-CPU: RL2F vs RLVR (SmolLM2-135M, one-digit arithmetic)}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/study_cpu.sh" "$@"
