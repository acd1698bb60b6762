"""The CPU study's plumbing: learning curves merged across resumed runs, and the study script (and the 2026-11-27
comparison, which is the study script with its runs) training every arm under the same conditions (same data, steps,
batch and seeds), evaluating each trained model with every control, and resuming.

The training itself is covered by tests/test_cpu_e2e.py (real main_ppo); here the script runs with DRY_RUN=1,
which prints each command instead of running it (the model is still converted/cached for real).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rl2f_plugin.eval.learning_curves import format_table, load_run, main as curves_main

REPO = Path(__file__).resolve().parent.parent


def _write_metrics(path: Path, steps: dict[int, dict[str, float]], torn_tail: bool = False) -> None:
    with open(path, "w") as f:
        for step, data in steps.items():
            f.write(json.dumps({"step": step, "data": data}) + "\n")
        if torn_tail:
            f.write('{"step": 99, "da')


def test_learning_curves_merge_resumed_files_later_record_wins(tmp_path):
    run = tmp_path / "rl2f_s1"
    run.mkdir()
    first, second = run / "metrics-20260101-000000.jsonl", run / "metrics-20260101-010000.jsonl"
    # first attempt: steps 1-3, killed while writing; the resumed attempt redoes step 3 (checkpoint at 2) and goes on
    _write_metrics(first, {s: {"critic/score/mean": 0.1, "rl2f/acc_turn1": 0.1, "timing_s/step": 10.0}
                           for s in (1, 2, 3)}, torn_tail=True)
    _write_metrics(second, {s: {"critic/score/mean": 0.5, "rl2f/acc_turn1": 0.4, "timing_s/step": 20.0}
                            for s in (3, 4)})
    os.utime(first, (1, 1))
    os.utime(second, (2, 2))
    curve = load_run("RL2F s1", str(run))
    assert sorted(curve.steps) == [1, 2, 3, 4]
    assert curve.steps[3]["critic/score/mean"] == 0.5  # the redone step replaces the lost one
    assert curve.wall_seconds == pytest.approx(10 + 10 + 20 + 20)
    assert curve.turn1_accuracy() == ([1, 2, 3, 4], [0.1, 0.1, 0.4, 0.4])
    table = format_table([curve])
    assert "| RL2F s1 | 4 | 1.0 min | 15.0 | 0.300 | 0.300 |" in table


def test_learning_curves_cli_single_turn_run_and_plot(tmp_path):
    rlvr = tmp_path / "metrics.jsonl"
    _write_metrics(rlvr, {s: {"critic/score/mean": 0.1 * s, "timing_s/step": 5.0} for s in range(1, 6)})
    png, md = tmp_path / "curves.png", tmp_path / "curves.md"
    assert curves_main(["--run", f"RLVR s1={rlvr}", "--plot", str(png), "--table", str(md)]) == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| RLVR s1 | 5 |" in md.read_text()
    # a single-turn run's turn-1 accuracy is its reward
    assert load_run("x", str(rlvr)).turn1_accuracy()[1] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    with pytest.raises(FileNotFoundError, match="no metrics"):
        load_run("empty", str(tmp_path / "nothing_here"))


def test_compare_script_trains_every_recipe_alike_and_resumes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES",)}
    env.update(DRY_RUN="1", OUT=str(tmp_path / "cmp"), STEPS="6", SAVE_FREQ="2", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "examples" / "compare_rl2f_vs_rlvr_cpu.sh"), "trainer.nnodes=1"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    train_cmds = [ln for ln in lines if "verl.trainer.main_ppo" in ln]
    # each run is evaluated right after its training (an interrupted comparison still has finished pairs)
    order = [("train" if "main_ppo" in ln else "eval") for ln in lines if "main_ppo" in ln or "eval --data" in ln]
    assert order == ["eval"] + ["train", "eval"] * 5
    runs = [(re.search(r"--config-name=(\S+)", c).group(1), re.search(r"data\.seed=(\d+)", c).group(1))
            for c in train_cmds]
    assert runs == [("rlvr_cpu", "1"), ("rl2f_cpu", "1"), ("rlvr_cpu", "2"), ("rl2f_cpu", "2"), ("rl2f_wm_cpu", "1")]

    def shared(cmd: str) -> list[str]:  # everything but the recipe, its seed and its own output folders
        out = []
        for arg in cmd.split():
            if re.match(r"(--config-name|data\.seed|actor_rollout_ref\.rollout\.seed|trainer\.experiment_name|"
                        r"trainer\.default_local_dir|hydra\.run\.dir|RL2F_OUTPUT_DIR|VERL_FILE_LOGGER_PATH|"
                        r"RL2F_CPU_ROLLOUT_LOG|rl2f\.reward_mode|rl2f\.gamma)=", arg):
                continue
            out.append(arg)
        return out

    assert all(shared(c) == shared(train_cmds[0]) for c in train_cmds)
    first = train_cmds[0]
    for arg in ("trainer.total_training_steps=6", "trainer.save_freq=2", "trainer.resume_mode=auto",
                "data.shuffle=true", "actor_rollout_ref.rollout.seed=1", "trainer.nnodes=1"):
        assert arg in first.split(), arg
    eval_cmds = [ln for ln in proc.stdout.splitlines() if "rl2f_plugin.eval --data" in ln]
    assert [re.search(r"--name (\S+)", c).group(1) for c in eval_cmds] == [
        "base", "rlvr_cpu_s1", "rl2f_cpu_s1", "rlvr_cpu_s2", "rl2f_cpu_s2", "rl2f_wm_cpu_s1"]
    assert all("--teacher template" in c and "--max-turns 3" in c for c in eval_cmds)


def test_compare_script_skips_runs_marked_done_without_their_checkpoints(tmp_path):
    """Results copied to another machine without checkpoints: a run with its DONE marker is neither trained nor
    evaluated again; the others are."""
    out = tmp_path / "cmp"
    (out / "rlvr_cpu_s1").mkdir(parents=True)
    (out / "rlvr_cpu_s1" / "DONE").write_text("2026-11-27T09:00:00Z\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES",)}
    env.update(DRY_RUN="1", OUT=str(out), STEPS="6", RUNS="rlvr_cpu:1 rl2f_cpu:1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "examples" / "compare_rl2f_vs_rlvr_cpu.sh")],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "rlvr_cpu_s1: done earlier" in proc.stdout and "rlvr_cpu_s1: evaluated earlier" in proc.stdout
    trained = re.findall(r"--config-name=(\S+)", proc.stdout)
    evaluated = re.findall(r"rl2f_plugin\.eval --data \S+ --out \S+ --name (\S+)", proc.stdout)
    assert trained == ["rl2f_cpu"] and evaluated == ["base", "rl2f_cpu_s1"]


def _dry_study(tmp_path, out, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES",)}
    env.update(DRY_RUN="1", OUT=str(out), STEPS="2", PYTHON=sys.executable, **env_extra)
    return subprocess.run(["bash", str(REPO / "examples" / "study_cpu.sh")], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, env=env)


def test_study_script_arms_seeds_and_controls(tmp_path):
    out = tmp_path / "study"
    # results of an earlier session: one run complete, one evaluation of the untrained model complete
    (out / "rlvr_cpu_s2").mkdir(parents=True)
    (out / "rlvr_cpu_s2" / "DONE").write_text("2026-12-02T10:00:00Z\n")
    (out / "eval").mkdir()
    (out / "eval" / "base.content_free.done").write_text("2026-12-02T10:00:00Z\n")
    proc = _dry_study(tmp_path, out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    trains = [ln for ln in lines if "verl.trainer.main_ppo" in ln]

    def arm_of(cmd):
        recipe = re.search(r"--config-name=(\S+)", cmd).group(1)
        mode = re.search(r"rl2f\.reward_mode=(\S+)", cmd)
        gamma = re.search(r"rl2f\.gamma=(\S+)", cmd)
        return recipe, mode and mode.group(1), gamma and gamma.group(1), re.search(r"data\.seed=(\d+)", cmd).group(1)

    arms = [("rlvr_cpu", None, None), ("rl2f_cpu", "final", None), ("rl2f_cpu", "discounted", "0.7"),
            ("rl2f_wm_cpu", "final", None)]
    # seed by seed, every arm (rlvr_cpu_s2 is DONE: neither trained nor evaluated again)
    assert [arm_of(c) for c in trains] == [(*a, s) for s in "123" for a in arms if (a[0], s) != ("rlvr_cpu", "2")]
    shared = {tuple(a for a in c.split() if not re.match(
        r"(--config-name|data\.seed|actor_rollout_ref\.rollout\.seed|trainer\.experiment_name|trainer\.default_local_dir|"
        r"hydra\.run\.dir|RL2F_OUTPUT_DIR|VERL_FILE_LOGGER_PATH|RL2F_CPU_ROLLOUT_LOG|rl2f\.reward_mode|rl2f\.gamma)=", a))
        for c in trains}
    assert len(shared) == 1  # same data, checkpoint, steps and schedule for every arm
    assert "trainer.total_training_steps=2" in trains[0].split()
    evals = [ln for ln in lines if "rl2f_plugin.eval --data" in ln]
    got = [(re.search(r"--name (\S+)", c).group(1), c) for c in evals]
    names = [n for n, _ in got]
    runs = [f"{a}_s{s}" for s in "123" for a in ("rlvr_cpu", "rl2f_cpu", "rl2f_discounted_cpu", "rl2f_wm_cpu")
            if (a, s) != ("rlvr_cpu", "2")]
    expected = ["base", "base.independent", "base.informative_t1", "base.autodidact"]  # base.content_free was complete
    for r in runs:
        expected += [r, f"{r}.content_free", f"{r}.independent", f"{r}.informative_t1"] + (
            [f"{r}.autodidact"] if "wm" in r else [])
    assert names == expected
    for name, cmd in got:
        assert "--max-turns 3" in cmd and f"--out {out}/eval/{name}.jsonl" in cmd
        if name.endswith(".content_free"):
            assert "--teacher content_free" in cmd
        elif name.endswith(".independent"):
            assert "--independent --n-samples 3" in cmd and "--teacher" not in cmd
        elif name.endswith(".informative_t1"):  # the informative teacher, sampled as the independent samples are
            assert "--teacher template --n-samples 3 --temperature 1.0" in cmd and "--independent" not in cmd
        elif name.endswith(".autodidact"):
            assert "--teacher none" in cmd
        else:
            assert "--teacher template" in cmd
    assert "base, content_free: evaluated earlier" in proc.stdout and "rlvr_cpu_s2: done earlier" in proc.stdout


def test_study_script_report_covers_every_planned_run_when_continuing_a_subset(tmp_path):
    """Continuing with RUNS="<a few runs>" trains and evaluates those, but study.md and curves still cover every arm of
    every seed (ARMS x SEEDS) that has results, not just the subset."""
    out = tmp_path / "study"
    for run in ("rlvr_cpu_s1", "rl2f_cpu_s3"):  # training metrics of two earlier runs, neither of them in RUNS
        (out / run).mkdir(parents=True)
        _write_metrics(out / run / "metrics.jsonl", {s: {"critic/score/mean": 0.25 * s, "timing_s/step": 5.0} for s in (1, 2)})
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES",)}
    env.update(OUT=str(out), ONLY="report", RUNS="rl2f_wm_cpu:2", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "examples" / "study_cpu.sh")], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = [ln for ln in proc.stdout.splitlines() if "rl2f_plugin.eval.study" in ln]
    assert report and re.search(r"--seeds 1 2 3 --baseline rlvr_cpu", report[-1]), report
    curves = (out / "curves.md").read_text()
    assert "RLVR s1" in curves and "RL2F (final) s3" in curves


def test_study_script_rejects_unknown_arms_and_controls(tmp_path):
    proc = _dry_study(tmp_path, tmp_path / "s", ARMS="rlvr_cpu rl2f_typo")
    assert proc.returncode != 0 and "unknown arm 'rl2f_typo'" in proc.stderr
    proc = _dry_study(tmp_path, tmp_path / "s", CONTROLS="informative pass_at_k")
    assert proc.returncode == 2 and "unknown control 'pass_at_k'" in proc.stderr
