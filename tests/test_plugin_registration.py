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
