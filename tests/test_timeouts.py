"""Time-outs at concurrency: queueing never eats a verification's time limit, every time-out is counted as what it
is (never as a wrong answer or a leak without saying so), and the verifier pool is sized from the machine.

Real: the verifier pool (`reward_fns.worker_pool`, real worker processes running the test jobs of
``tests/pool_test_jobs.py``), the didactic episode, the leak guard, the metrics, verl's ``ppo_trainer`` config and
its ``FullyAsyncLLMServerClient`` resume loop (what ``rl2f_colocate_async`` uses). Scripted: the tasks (their
verifiers call the pool's test jobs: a fast echo, a job that blocks, a runaway loop), the teachers, and the LLM
server behind verl's client (no GPU server here). Not timed: every bound below is an order of magnitude away
from the figure it guards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import pytest

from reward_fns import worker_pool
from reward_fns.worker_pool import (PoolQueueTimeout, PoolTimeout, VerifyAccount, WorkerPool, configure_pool,
                                    default_pool_size, get_pool, run_bounded)
from rl2f_plugin import schema
from rl2f_plugin.config import ConfigError, RL2FConfig
from rl2f_plugin.episode import DidacticEpisode
from rl2f_plugin.leak_guard import LeakGuard
from rl2f_plugin.metrics import training_metrics
from rl2f_plugin.tasks import Task, VerifyResult, register_task
from rl2f_plugin.teachers import Teacher

POOL: WorkerPool | None = None  # the pool the test tasks verify with (set by the `pool` fixture)


@pytest.fixture
def pool():
    global POOL
    POOL = WorkerPool(size=1, jobs_module="pool_test_jobs")
    POOL.call("test_echo", {}, timeout=60)  # spawned and warm: start-up is not what these tests measure
    yield POOL
    POOL.shutdown()
    POOL = None


def occupy(pool: WorkerPool, seconds: float) -> threading.Thread:
    """Keep the pool's only worker busy for `seconds` (from another thread), and wait until it is."""
    t = threading.Thread(target=pool.call, args=("test_block", {"seconds": seconds}), kwargs={"timeout": 60})
    t.start()
    for _ in range(200):
        if pool._busy:
            break
        time.sleep(0.01)
    return t


@register_task("rl2f_test_pool_echo")
class PoolEchoTask(Task):
    """Correct iff the reply is "right"; the check runs as one (fast) pool job, so it queues for the worker."""

    def verify(self, response, ground_truth, extra_info=None):
        POOL.call("test_echo", {"reply": response}, timeout=30)
        return VerifyResult(1.0 if response.strip() == "right" else 0.0, extracted=response.strip())

    def is_equivalent(self, candidate, ground_truth, extra_info=None):
        return False


@register_task("rl2f_test_pool_runaway")
class PoolRunawayTask(Task):
    """Its verifier and its leak check hit the pool's job limit, and say so only as a score of 0 / "no match",
    as the maths verifier does (`reward_fns.math_verifier.check_math_answer`)."""

    def verify(self, response, ground_truth, extra_info=None):
        try:
            POOL.call("test_spin", {}, timeout=1.0)
        except PoolTimeout:
            return VerifyResult(0.0, extracted=response, reason="timeout")
        return VerifyResult(1.0)

    def is_equivalent(self, candidate, ground_truth, extra_info=None):
        try:
            POOL.call("test_spin", {}, timeout=1.0)
        except PoolTimeout:
            return False
        return True


@register_task("rl2f_test_slow_check")
class SlowCheckTask(Task):
    """A verifier and a leak check that take 1 s in the calling thread."""

    def verify(self, response, ground_truth, extra_info=None):
        time.sleep(1.0)
        return VerifyResult(1.0 if response.strip() == "right" else 0.0)

    def is_equivalent(self, candidate, ground_truth, extra_info=None):
        time.sleep(1.0)
        return False


class Scripted(Teacher):
    """Replies from a list; a number is a delay in seconds before the next reply."""

    def __init__(self, replies, **kw):
        super().__init__(**kw)
        self.replies = list(replies)

    async def feedback(self, ctx):
        reply = self.replies.pop(0)
        if isinstance(reply, float):
            await asyncio.sleep(reply)
            reply = self.replies.pop(0)
        return reply


def episode(task: str, teacher: Teacher | None = None, **rl2f) -> DidacticEpisode:
    cfg = RL2FConfig.from_dict({"max_turns": 2, "teacher": {"name": "template"}, **rl2f})
    sample = {"raw_prompt": [{"role": "user", "content": "Say right."}], "reward_model": {"ground_truth": "right"},
              "data_source": task, "index": 0, "extra_info": {}}
    from rl2f_plugin.teachers import build_teacher

    return DidacticEpisode.from_sample(sample, cfg, teacher=teacher or build_teacher(cfg.teacher))


def metrics_of(ep: DidacticEpisode) -> dict[str, float]:
    return training_metrics([ep.record.extra_fields()])


# --------------------------------------------------------------------------------------- verification
def test_queue_wait_does_not_consume_the_verify_budget(pool):
    """Before: ``asyncio.wait_for(to_thread(verify), verify_timeout_s)`` also timed the wait for the busy worker,
    so this correct reply scored 0 ("verifier timeout")."""
    busy = occupy(pool, 3.0)
    ep = episode("rl2f_test_pool_echo", verify_timeout_s=1.0)
    step = asyncio.run(ep.step("right"))
    busy.join()
    turn = step.record.turns[0]
    assert step.reward == 1.0 and turn.verdict.correct, turn.verdict.reason
    assert not turn.verify_timed_out and not turn.verify_queue_timed_out
    assert turn.verify_queue_s > 1.0  # it did wait for the worker, and that wait is measured
    m = metrics_of(ep)
    assert m["rl2f/timeouts/verify"] == 0.0 and m["rl2f/verify_queue_s/max"] > 1.0


def test_waiting_has_its_own_bound_and_count(pool):
    busy = occupy(pool, 3.0)
    ep = episode("rl2f_test_pool_echo", verify_timeout_s=30.0, verify_queue_timeout_s=0.5)
    t0 = time.monotonic()
    step = asyncio.run(ep.step("right", can_continue=False))
    waited = time.monotonic() - t0
    busy.join()
    turn = step.record.turns[0]
    assert turn.verify_queue_timed_out and not turn.verify_timed_out and step.reward == 0.0
    assert "queue timeout" in turn.verdict.reason
    assert waited < 2.5  # released at the queue bound, not after the 3 s job
    ef = step.record.extra_fields()
    assert ef[schema.EF_VERIFY_QUEUE_TIMEOUTS] == 1 and ef[schema.EF_VERIFY_TIMEOUTS] == 0
    assert metrics_of(ep)["rl2f/timeouts/verify_queue"] == 1.0


def test_pool_queue_bound_raises_its_own_error_and_is_accounted(pool):
    pool.queue_timeout = 0.3
    busy = occupy(pool, 2.0)
    account = VerifyAccount()

    async def go():
        return await run_bounded(pool.call, "test_echo", {}, 30, exec_timeout=30, queue_timeout=60, account=account)

    with pytest.raises(PoolQueueTimeout):
        asyncio.run(go())
    busy.join()
    assert account.queue_timeouts == 1 and account.job_timeouts == 0 and account.queued_s() >= 0.3


def test_verify_timeout_is_counted_as_timeout_not_as_a_wrong_answer():
    """Before: the timed-out reply was only a 0 with a reason string; no field or metric said "timeout"."""
    ep = episode("rl2f_test_slow_check", verify_timeout_s=0.1, max_turns=1)
    step = asyncio.run(ep.step("right"))
    turn = step.record.turns[0]
    assert step.reward == 0.0 and turn.verify_timed_out and "verifier timeout" in turn.verdict.reason
    ef = step.record.extra_fields()
    assert ef[schema.EF_VERIFY_TIMEOUTS] == 1 and ef[schema.REWARD_EXTRA_INFO]["verify_timeouts"] == 1.0
    assert metrics_of(ep)["rl2f/timeouts/verify"] == 1.0


def test_a_verifier_job_timeout_inside_the_task_is_counted(pool):
    """The maths verifier turns the pool's job limit into a plain 0; the episode still counts it as a timeout."""
    ep = episode("rl2f_test_pool_runaway", max_turns=1)
    step = asyncio.run(ep.step("anything"))
    assert step.record.turns[0].verify_timed_out
    assert step.record.extra_fields()[schema.EF_VERIFY_TIMEOUTS] == 1


def test_blocked_verification_does_not_starve_the_event_loops_default_executor(pool):
    """verl's own helpers (tokenisation) use ``run_in_executor(None, ...)``. Before, verifications waiting for a
    verifier worker held the default executor's threads (``asyncio.to_thread``)."""
    busy = occupy(pool, 4.0)

    async def go():
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        ep = episode("rl2f_test_pool_echo")
        verify = asyncio.ensure_future(ep.step("right"))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)
        waited = time.monotonic() - t0
        await verify
        return waited

    waited = asyncio.run(go())
    busy.join()
    assert waited < 2.0


# --------------------------------------------------------------------------------------- leak guard
def test_leak_guard_timeout_withholds_feedback_but_is_not_a_leak():
    """Before: each timed-out check was counted as a leak (leak_rate 1.0 here) and the fallback as a leaked turn."""
    ep = episode("rl2f_test_slow_check", verify_timeout_s=30, teacher=Scripted(["Recheck step 2.", "Recheck step 3."]),
                 leak_guard={"timeout_s": 0.1, "max_regenerations": 1})
    step = asyncio.run(ep.step("wrong"))
    turn = step.record.turns[0]
    assert step.feedback == ep.safe_feedback() and turn.fell_back
    assert turn.leaks == 0 and turn.leak_guard_timeouts == 2
    ef = step.record.extra_fields()
    assert ef[schema.EF_LEAK_COUNT] == 0 and ef[schema.EF_LEAKED_TURNS] == 0
    assert ef[schema.EF_GUARD_TIMEOUT_TURNS] == 1 and ef[schema.EF_FALLBACKS] == 1
    asyncio.run(ep.step("right"))
    m = metrics_of(ep)
    assert m["rl2f/leak_rate"] == 0.0 and m["rl2f/timeouts/leak_guard"] == 2.0 and m["rl2f/fallbacks"] == 1.0


def test_a_span_check_that_hits_the_verifiers_limit_is_not_a_clean_verdict(pool):
    """Before: the span's check timed out inside the verifier, came back as "not equivalent", and the feedback went
    to the student unverified."""
    guard = LeakGuard(PoolRunawayTask(), "right")
    report = asyncio.run(guard.acheck("Try 12 instead."))
    assert report.timed_out and not report.leaked


# --------------------------------------------------------------------------------------- teacher
def test_teacher_timeout_is_counted():
    ep = episode("rl2f_test_slow_check", verify_timeout_s=30, teacher_timeout_s=0.1, teacher=Scripted([1.0, "late"]),
                 leak_guard={"enable": False})
    step = asyncio.run(ep.step("wrong"))
    turn = step.record.turns[0]
    assert turn.teacher_timed_out and step.feedback == ep.safe_feedback()
    ef = step.record.extra_fields()
    assert ef[schema.EF_TEACHER_TIMEOUTS] == 1 and ef[schema.EF_FALLBACKS] == 1 and ef[schema.EF_LEAKED_TURNS] == 0


def test_self_teacher_call_paused_across_a_weight_update_does_not_time_out(monkeypatch):
    """``rl2f_colocate_async`` (verl's PPOTrainerColocateAsync): at the end of sampling verl aborts in-flight requests
    and sleeps the replicas; the trajectories keep running and verl's ``FullyAsyncLLMServerClient`` re-sends an
    aborted request until generation resumes after the weight update. A `self` teacher request caught there waits
    the whole training step. Before: that wait counted against ``teacher_timeout_s`` and the student got the
    generic fallback. Here verl's client is real and the replica behind it aborts the first teacher request and
    holds the retry for a 2.5 s "training step" (teacher_timeout_s 1.0 stands for 120 s vs a multi-minute step)."""
    from verl.workers.rollout.llm_server import FullyAsyncLLMServerClient, LLMServerClient
    from verl.workers.rollout.replica import TokenOutput

    from rl2f_plugin.agent_loops.testing import ScriptedServer, make_loop, qwen_style_tokenizer, trainer_config

    tok = qwen_style_tokenizer()
    cfg = trainer_config(rl2f={"max_turns": 2, "teacher": {"name": "self"}, "teacher_timeout_s": 1.0,
                               "leak_guard": {"enable": False}})
    replica = ScriptedServer(tok, ["4", "5"], ["Recount the apples."])
    seen = {"aborted": 0, "resumed": 0}

    async def replica_generate(self, request_id, *, prompt_ids, sampling_params, **kw):
        if request_id.startswith("rl2f-aux-") and not seen["aborted"]:
            seen["aborted"] += 1  # the step boundary: verl aborts the request...
            return TokenOutput(token_ids=[], log_probs=[], stop_reason="aborted", num_preempted=0,
                               extra_fields={"global_steps": 7})
        if request_id.startswith("rl2f-aux-") and not seen["resumed"]:
            seen["resumed"] += 1
            await asyncio.sleep(2.5)  # ...and the retry waits out sleep, update and weight sync
        return await replica.generate(request_id, prompt_ids=prompt_ids, sampling_params=sampling_params)

    monkeypatch.setattr(LLMServerClient, "generate", replica_generate)
    client = FullyAsyncLLMServerClient(cfg, load_balancer_handle=None)
    sample = {"raw_prompt": [{"role": "user", "content": "What is 2 + 3?"}], "reward_model": {"ground_truth": "5"},
              "data_source": "exact", "extra_info": {"index": 0}, "index": 0}

    async def go():
        loop = make_loop("rl2f_didactic", config=cfg, server_manager=client, tokenizer=tok, hf_model_type="qwen2")
        return await loop.run({}, **sample)

    out = asyncio.run(go())
    ef = out.extra_fields
    assert seen == {"aborted": 1, "resumed": 1}
    assert ef[schema.EF_TEACHER_TIMEOUTS] == 0 and ef[schema.EF_FALLBACKS] == 0
    assert ef[schema.EF_SOLVED_AT_TURN] == 2 and ef[schema.EF_FEEDBACK_TURNS] == 1


# --------------------------------------------------------------------------------------- pool size
def test_pool_size_follows_the_machine_and_the_workers_sharing_it(monkeypatch):
    monkeypatch.setattr(worker_pool.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert default_pool_size(8) == 8 and default_pool_size(16) == 4 and default_pool_size(128) == 1
    assert default_pool_size(1) == worker_pool.MAX_AUTO_WORKERS
    monkeypatch.setattr(worker_pool.os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_pool_size(1) == 2 and default_pool_size(8) == 1


def test_pool_size_from_the_trainer_config_and_configurable(monkeypatch):
    from rl2f_plugin.agent_loops.testing import trainer_config

    monkeypatch.delenv("RL2F_VERIFY_WORKERS", raising=False)
    monkeypatch.setattr(worker_pool.os, "sched_getaffinity", lambda pid: set(range(96)))
    gpu_like = trainer_config(overrides=["actor_rollout_ref.rollout.agent.num_workers=8", "trainer.nnodes=1"])
    assert RL2FConfig.from_trainer_config(gpu_like).verify_workers == 8  # 96 CPUs / 8 workers = 12, capped at 8
    two_nodes = trainer_config(overrides=["actor_rollout_ref.rollout.agent.num_workers=32", "trainer.nnodes=2"])
    assert RL2FConfig.from_trainer_config(two_nodes).verify_workers == 6  # 16 workers per node share 96 CPUs
    gpu_like.rl2f.verify_workers = 3
    assert RL2FConfig.from_trainer_config(gpu_like).verify_workers == 3
    with pytest.raises(ConfigError, match=r"rl2f.verify_workers must be an integer >= 0"):
        RL2FConfig.from_dict({"verify_workers": -1})
    with pytest.raises(ConfigError, match=r"rl2f.verify_queue_timeout_s must be a number > 0"):
        RL2FConfig.from_dict({"verify_queue_timeout_s": 0})


def test_configure_pool_resizes_the_process_pool(monkeypatch):
    monkeypatch.setattr(worker_pool, "_CONFIGURED", {})
    pool = get_pool()
    before = (pool.size, pool.queue_timeout)
    try:
        configure_pool(size=3, queue_timeout=42.0)
        assert (pool.size, pool.queue_timeout) == (3, 42.0)
        configure_pool(size=0)  # 0 = keep
        assert pool.size == 3
    finally:
        pool.size, pool.queue_timeout = before


def test_a_job_slowed_by_cpu_contention_is_not_timed_out():
    """A busy machine is a queue for the CPU: the job's limit counts its execution, not its wait on the kernel's run
    queue. Before: its worker, sharing one CPU with three busy processes, took ~4x its 0.8 s of CPU in wall time and
    was stopped at 1.5 s by a wall-clock alarm (PoolTimeout)."""
    import os
    import subprocess
    import sys

    cpu = min(os.sched_getaffinity(0))
    pool = WorkerPool(size=1, jobs_module="pool_test_jobs")
    spinners = []
    try:
        pool.call("test_echo", {}, timeout=60)
        os.sched_setaffinity(pool.worker_pids()[0], {cpu})
        # each spinner in its own session: with the kernel's autogroup scheduling a session is one scheduling
        # entity, and the pool worker has a session of its own, so spinners sharing this one would take only half
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
                    for _ in range(3)]
        for p in spinners:
            os.sched_setaffinity(p.pid, {cpu})
        t0 = time.monotonic()
        assert pool.call("test_work", {"cpu_seconds": 0.8}, timeout=2.0) == {"done": True}
        assert time.monotonic() - t0 > 2.0  # it really was slowed past the limit in wall-clock terms
    finally:
        for p in spinners:
            p.kill()
            p.wait()
        pool.shutdown()

