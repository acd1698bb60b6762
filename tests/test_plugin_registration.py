"""The plugin loads through verl's own discovery (the ``verl.plugins`` entry point), in a fresh interpreter
with no environment variable, registers every component, reports failures as WARNINGs and is idempotent."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("VERL_USE_EXTERNAL_MODULES", "VERL_USE_EXTERNAL_PLUGINS", "PYTHONPATH"):
        env.pop(key, None)
    return env


def _run(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=_clean_env(), timeout=180, cwd="/", **kw)


def test_entry_point_is_declared():
    eps = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert eps.get("rl2f") == "rl2f_plugin"


def test_import_verl_registers_everything_without_env_vars():
    proc = _run(
        """
        import json, sys
        import verl                                  # nothing else: verl's plugin discovery must load rl2f
        assert "rl2f_plugin" in sys.modules, "verl did not load rl2f_plugin"
        from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
        from verl.plugin.platform.platform_manager import PlatformRegistry
        from verl.workers.rollout.replica import RolloutReplicaRegistry
        from rl2f_plugin import REGISTRATION_ERRORS
        from rl2f_plugin.tasks import list_tasks
        print(json.dumps({
            "loops": sorted(_agent_loop_registry), "trainers": sorted(TRAINER_REGISTRY),
            "platforms": list(PlatformRegistry.registered_names()),
            "replicas": sorted(RolloutReplicaRegistry._registry),
            "errors": REGISTRATION_ERRORS, "tasks": list_tasks(),
        }))
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["errors"] == {}
    assert {"rl2f_didactic", "rl2f_autodidact"} <= set(info["loops"])
    assert "rl2f_sync" in info["trainers"]
    assert "cpu" in info["platforms"]
    assert {"math", "code", "arc", "exact", "choice", "reasoning_gym:<name>"} <= set(info["tasks"])


def test_info_cli_lists_registrations():
    proc = subprocess.run([sys.executable, "-m", "rl2f_plugin", "info", "--json"], capture_output=True,
                          text=True, env=_clean_env(), timeout=180, cwd="/")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    info = json.loads(proc.stdout)
    assert info["loaded_by_verl_entry_point"] is True
    assert "rl2f_didactic" in info["agent_loops"]
    assert "math" in info["tasks"]
    assert {"self", "openai", "execution", "template"} <= set(info["teachers"])
    assert {"final", "discounted", "any_turn"} <= set(info["reward_modes"])
    assert info["reward_functions"]["compute_score"] == "reward_fns.verl_reward.compute_score"
    text = subprocess.run([sys.executable, "-m", "rl2f_plugin", "info"], capture_output=True, text=True,
                          env=_clean_env(), timeout=180, cwd="/")
    assert "agent loops:" in text.stdout and "rl2f_didactic" in text.stdout


def test_failing_component_logs_warning_and_others_still_register(tmp_path, monkeypatch, caplog):
    from rl2f_plugin import _registration

    (tmp_path / "rl2f_broken_component.py").write_text("raise RuntimeError('boom: missing dependency xyz')\n")
    (tmp_path / "rl2f_good_component.py").write_text("REGISTERED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_registration, "COMPONENT_MODULES", ("rl2f_broken_component", "rl2f_good_component"))
    monkeypatch.setattr(_registration, "REGISTRATION_ERRORS", {})
    monkeypatch.setattr(_registration, "_DONE", set())
    with caplog.at_level(logging.WARNING, logger="rl2f_plugin"):
        errors = _registration.register_all()
    assert list(errors) == ["rl2f_broken_component"]
    assert "RuntimeError: boom: missing dependency xyz" in errors["rl2f_broken_component"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("rl2f_broken_component" in r.getMessage() and "boom" in r.getMessage() for r in warnings)
    assert sys.modules["rl2f_good_component"].REGISTERED is True


def test_register_all_is_idempotent():
    import verl  # noqa: F401
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    import rl2f_plugin

    before = (dict(_agent_loop_registry), dict(TRAINER_REGISTRY))
    assert rl2f_plugin.register_all() == {}
    assert rl2f_plugin.register_all() == {}
    assert (dict(_agent_loop_registry), dict(TRAINER_REGISTRY)) == before


@pytest.mark.parametrize("policy", ["none"])
def test_verl_plugin_policy_none_disables_discovery(policy):
    env = _clean_env()
    env["VERL_USE_EXTERNAL_PLUGINS"] = policy
    proc = subprocess.run([sys.executable, "-c", "import sys, verl; print('rl2f_plugin' in sys.modules)"],
                          capture_output=True, text=True, env=env, timeout=180, cwd="/")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("False"), proc.stderr[-2000:]


def test_agent_loops_of_names_what_the_component_registers():
    """`AGENT_LOOPS_OF` (the names stood in for when a component fails) is what its import really registers."""
    import verl  # noqa: F401
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    from rl2f_plugin._registration import AGENT_LOOPS_OF

    for module, names in AGENT_LOOPS_OF.items():
        registered = {n for n, spec in _agent_loop_registry.items() if spec["_target_"].startswith(module + ".")}
        assert registered == set(names), module


def test_agent_loop_of_a_failed_component_raises_its_import_error_in_verls_worker_path(tmp_path, monkeypatch):
    """In a process where the agent-loop component failed to import (a Ray worker whose log nobody reads), verl's
    ``AgentLoopWorker._run_agent_loop`` must raise that import error, not "Agent loop ... not registered".

    Real: verl's ``_run_agent_loop`` (the worker is built with ``__new__``: its constructor needs Ray, servers and a
    tokenizer, none of which is reached before the loop is looked up) and verl's agent-loop registry."""
    import asyncio

    import verl  # noqa: F401
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop import agent_loop as verl_agent_loop

    from rl2f_plugin import _registration

    (tmp_path / "rl2f_broken_loops.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_registration, "COMPONENT_MODULES", ("rl2f_broken_loops",))
    monkeypatch.setattr(_registration, "AGENT_LOOPS_OF", {"rl2f_broken_loops": ("rl2f_broken_test_loop",)})
    monkeypatch.setattr(_registration, "REGISTRATION_ERRORS", {})
    monkeypatch.setattr(_registration, "REGISTRATION_TRACEBACKS", {})
    monkeypatch.setattr(_registration, "_DONE", set())
    monkeypatch.setattr(verl_agent_loop, "_agent_loop_registry", dict(verl_agent_loop._agent_loop_registry))
    assert list(_registration.register_all()) == ["rl2f_broken_loops"]

    worker = verl_agent_loop.AgentLoopWorker.__new__(verl_agent_loop.AgentLoopWorker)
    worker.config = OmegaConf.create({"data": {}})
    worker.llm_client = worker.tokenizer = worker.processor = worker.hf_model_type = worker.dataset_cls = None
    worker.tools = []
    trajectory = {"step": 0, "sample_index": 0, "rollout_n": 0, "validate": False}
    with pytest.raises(Exception) as info:
        asyncio.run(worker._run_agent_loop({}, trajectory, agent_name="rl2f_broken_test_loop", trace=False))
    text = f"{info.value}\n{info.value.__cause__ or ''}"
    assert "not registered" not in text
    assert "rl2f agent loop 'rl2f_broken_test_loop' is unavailable in this process: rl2f_broken_loops failed" in text
    assert "No module named 'no_such_dependency_xyz'" in text and 'rl2f_broken_loops.py", line 1' in text
