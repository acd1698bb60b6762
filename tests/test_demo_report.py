"""The CPU demo's report: per-step lines from main_ppo's console output and verl's file-logger JSONL, and the
per-step PNG. Fed with lines/records in the exact format verl 0.9.1 writes (console `step:N - k:v - ...`, file
logger `{"step": N, "data": {...}}`)."""

from __future__ import annotations

import json
import subprocess
import sys

from rl2f_plugin.cpu import demo_report


def _records():
    for step, (acc1, acc2, ce) in enumerate([(0.0, 0.25, 1.2), (0.25, 0.5, 0.9)], start=1):
        yield {"step": step, "data": {"critic/score/mean": acc2, "rl2f/acc_turn1": acc1, "rl2f/acc_turn2": acc2,
                                      "rl2f/solve_rate": acc2, "actor/pg_loss": 0.01, "actor/wm_ce": ce,
                                      "response_length/mean": 100.0, "timing_s/step": 60.0, "timing_s/gen": 40.0,
                                      "timing_s/old_log_prob": 5.0, "timing_s/update_actor": 12.0,
                                      "timing_s/update_weights": 1.5}}


def test_console_step_line_is_condensed():
    line = ("step:3 - critic/score/mean:np.float64(0.5) - rl2f/acc_turn1:0.25 - rl2f/acc_turn2:0.5 - "
            "actor/wm_ce:0.75 - timing_s/step:61.2 - training/global_step:3")
    step, metrics = demo_report.parse_step_line(line)
    assert step == 3 and metrics["critic/score/mean"] == 0.5 and metrics["actor/wm_ce"] == 0.75
    text = demo_report.compact(step, metrics)
    assert "reward=0.500" in text and "cum_acc_by_turn[t1=0.25 t2=0.50]" in text and "wm_ce=0.750" in text


def test_summary_prints_each_step_and_writes_the_plot(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    png = tmp_path / "metrics.png"
    # run as the demo runs it (python -m rl2f_plugin.cpu.demo_report)
    proc = subprocess.run([sys.executable, "-m", "rl2f_plugin.cpu.demo_report", "summary", "--metrics", str(metrics),
                           "--plot", str(png)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("step ")]
    assert len(lines) == 2 and "cum_acc_by_turn[t1=0.25 t2=0.50]" in lines[1] and "wm_ce=0.900" in lines[1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert ("shown: reward > 0 in 2 of 2 steps [1, 2]; a feedback turn turned a wrong answer right (last turn > t1) "
            "in 2 steps [1, 2]") in proc.stdout


def test_shown_counts_only_steps_where_feedback_fixed_an_answer():
    steps = {1: {"critic/score/mean": 0.0, "rl2f/acc_turn1": 0.0, "rl2f/acc_turn2": 0.0},
             2: {"critic/score/mean": 0.1, "rl2f/acc_turn1": 0.1, "rl2f/acc_turn2": 0.1},
             3: {"critic/score/mean": 0.2, "rl2f/acc_turn1": 0.1, "rl2f/acc_turn2": 0.2},
             4: {"critic/score/mean": 0.3}}  # single-turn (rlvr) step: no turns to compare
    assert demo_report.shown(steps) == ("shown: reward > 0 in 3 of 4 steps [2, 3, 4]; a feedback turn turned a wrong "
                                        "answer right (last turn > t1) in 1 steps [3]")


def test_summary_without_metrics_fails_clearly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rl2f_plugin.cpu.demo_report", "summary", "--metrics",
                           str(tmp_path / "missing.jsonl")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no metrics at" in proc.stdout
