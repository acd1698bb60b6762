#!/usr/bin/env bash
# What each teacher adds at turns 2-3 for the UNTRAINED embedded model on the CPU default task (the numbers behind
# the CPU default's choice of teacher in the README). Same held-out problems, same K, one line per configuration:
#   none (autodidact: the model critiques itself), template without hints ("your answer X is incorrect"),
#   template with the task's privileged hint (the CPU default: "... It is too large."), content_free (the control:
#   "Your answer is incorrect. Try again.", the same attempts with no information), self (the policy as its own
#   privileged teacher, the paper's default), each greedy and sampled at the training temperature.
#
#   bash examples/measure_cpu_teachers.sh                # 48 problems, K=3, 48 student tokens per turn
#   LIMIT=200 SAMPLES=2 bash examples/measure_cpu_teachers.sh
#
# Environment: LIMIT (problems, default 48), TURNS (K, default 3), SAMPLES (sampled interactions per problem,
# default 2), TEACHERS (default "none template_nohint template content_free self"), OUT (default ./outputs/teachers_cpu),
# RL2F_CACHE, PYTHON. Re-running resumes (finished problems are kept in each JSONL).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
LIMIT="${LIMIT:-48}"; TURNS="${TURNS:-3}"; SAMPLES="${SAMPLES:-2}"
TEACHERS="${TEACHERS:-none template_nohint template content_free self}"
OUT="$(mkdir -p "${OUT:-$PWD/outputs/teachers_cpu}" && cd "${OUT:-$PWD/outputs/teachers_cpu}" && pwd)"
export HF_HUB_OFFLINE=1
MODEL="$(RL2F_CACHE="${RL2F_CACHE:-$HOME/.cache/rl2f}" "$PY" -m rl2f_plugin.cpu_model 2>/dev/null | tail -n 1)"
DATA="$OUT/data"
[[ -f "$DATA/test.parquet" ]] || "$PY" "$REPO/examples/data_preprocess/cpu_default_data.py" --out-dir "$DATA"

runs=()
for teacher in $TEACHERS; do
  case "$teacher" in
    template_nohint) args=(--teacher template --rl2f teacher.template.hints=false) ;;
    *) args=(--teacher "$teacher") ;;
  esac
  for mode in greedy sampled; do
    name="${teacher}_${mode}"
    sampling=(); [[ $mode == sampled ]] && sampling=(--temperature 1.0 --n-samples "$SAMPLES")
    echo "[teachers] $name"
    start=$(date +%s)
    "$PY" -m rl2f_plugin.eval --data "$DATA/test.parquet" --out "$OUT/$name.jsonl" --name "$name" \
        --student "hf:$MODEL" "${args[@]}" --max-turns "$TURNS" --recipe "$REPO/recipes/rl2f_cpu.yaml" \
        --response-length $(( (48 + 64) * TURNS )) --max-new-tokens 48 --prompt-length 1024 --limit "$LIMIT" \
        --concurrency 16 --batch-size 16 --no-progress "${sampling[@]}" >"$OUT/$name.log" 2>&1 || [[ $? == 1 ]]
    echo "[teachers]   $(( $(date +%s) - start )) s; $(grep -E 'problem\(s\) run' "$OUT/$name.log" | tail -n 1)"
    runs+=("$OUT/$name.jsonl")
  done
done
"$PY" -m rl2f_plugin.eval --compare "${runs[@]}" --table "$OUT/teachers.md" --plot "$OUT/teachers.png" \
    --summary-json "$OUT/teachers.json" --title "Untrained SmolLM2-135M, CPU default task, K=$TURNS"
cat "$OUT/teachers.md"
