"""The GPU recipes in recipes/ compose through verl's real Hydra config (ppo_trainer from the installed verl
0.9.1; in-process with Hydra's compose API, and through ``python -m verl.trainer.main_ppo ... --cfg job`` as the
launch scripts run it), pass verl's own pre-flight checks (`validate_config`, as main_ppo runs them) and
resolve to the values the recipes promise (paper companion defaults, rl2f section, agent loop, trainer mode,
reward path).

Nothing is mocked; no GPU is needed because nothing is launched (``--cfg job`` only prints the config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
RECIPES_DIR = REPO / "recipes"
RECIPES = ["rl2f_grpo", "rl2f_grpo_wm", "rlvr_grpo"]
RL2F_RECIPES = ["rl2f_grpo", "rl2f_grpo_wm"]
CPU_RECIPES = ["rl2f_cpu", "rl2f_wm_cpu", "rlvr_cpu"]  # composed here only for the reward path


def _compose(name: str, overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
        cfg = compose(config_name=name, overrides=overrides or [])
    return cfg


@pytest.fixture(scope="module", params=RECIPES)
def recipe(request):
    cfg = _compose(request.param)
    OmegaConf.resolve(cfg)
    return request.param, cfg


def test_verl_preflight_checks_pass(recipe):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    name, cfg = recipe
    # No KL anywhere -> no reference model; GRPO -> no critic.
    assert need_reference_policy(cfg) is False
    assert need_critic(cfg) is False
    validate_config(cfg, use_reference_policy=False, use_critic=False)


def test_typed_sections_instantiate(recipe):
    """The sections verl turns into dataclasses accept every key the recipe sets (a misspelt key in a
    ``_target_`` section would raise here)."""
    from verl.utils.config import omega_conf_to_dataclass

    _, cfg = recipe
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    algo = omega_conf_to_dataclass(cfg.algorithm)
    assert actor.use_kl_loss is False and actor.ppo_mini_batch_size == 32
    assert rollout.name == "vllm" and rollout.n == 8 and rollout.tensor_model_parallel_size == 2
    assert algo.adv_estimator == "grpo" and algo.use_kl_in_reward is False


def test_shared_sizing_and_companion_defaults(recipe):
    name, cfg = recipe
    assert cfg.trainer.nnodes == 1 and cfg.trainer.n_gpus_per_node == 8
    assert cfg.actor_rollout_ref.rollout.name == "vllm"
    assert cfg.actor_rollout_ref.rollout.n == 8                       # GRPO group size 8
    assert cfg.actor_rollout_ref.actor.use_kl_loss is False           # no KL loss
    assert cfg.algorithm.use_kl_in_reward is False                    # no KL in reward
    assert cfg.actor_rollout_ref.actor.entropy_coeff == 0
    assert cfg.data.return_raw_chat is True
    # The same reward function in every recipe, in the packaged-module form verl 0.9.1 loads.
    assert cfg.reward.custom_reward_function.path == "pkg://reward_fns.verl_reward"
    assert cfg.reward.custom_reward_function.name == "compute_score"
    # Same data and model in the baseline and in RL²F.
    base = _compose("rlvr_grpo")
    assert cfg.data.train_files == base.data.train_files and cfg.data.val_files == base.data.val_files
    assert cfg.actor_rollout_ref.model.path == base.actor_rollout_ref.model.path
    assert cfg.data.train_batch_size == base.data.train_batch_size


@pytest.mark.parametrize("name", RL2F_RECIPES)
def test_rl2f_recipes(name):
    from rl2f_plugin.config import RL2FConfig

    cfg = _compose(name)
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "rl2f_didactic"
    assert cfg.trainer.v1.trainer_mode == "rl2f_sync"
    section = RL2FConfig.from_trainer_config(cfg)  # unknown keys / bad values raise, naming the key
    assert section.max_turns == 4                                  # 4 turns in training
    assert section.teacher.name == "self"
    assert section.leak_guard.enable is True
    # the whole conversation shares the response budget: larger than one single-turn answer
    assert cfg.data.max_response_length > _compose("rlvr_grpo").data.max_response_length
    expected_coef = {"rl2f_grpo": 0.0, "rl2f_grpo_wm": 0.1}[name]
    assert section.world_model.coef == pytest.approx(expected_coef)


@pytest.mark.parametrize("name, rows", [("rl2f_grpo", 4428), ("rl2f_grpo_wm", 4428), ("rlvr_grpo", 4428),
                                         ("rl2f_cpu", 128), ("rl2f_wm_cpu", 128), ("rlvr_cpu", 128),
                                         ("rlvr_cpu", 16)])
def test_runs_end_at_total_training_steps_not_at_an_epoch(name, rows):
    """verl 0.9.1's fit loop (``trainer/ppo/v1/trainer_base.py``) runs ``while current_epoch < total_epochs and
    global_steps <= total_training_steps`` and saves / validates the last step only when it reaches
    ``total_training_steps``. A recipe whose ``total_epochs`` ends the loop first (``total_epochs: 1`` with 200 steps
    of a 4.4k-row set: 34 steps) never writes the final checkpoint the comparison scripts evaluate. Rows: Omni-MATH
    (~4.4k, the GPU default), the CPU default (128) and the CI e2e set (16). The loop itself is run in
    tests/test_gpu_recipes_on_cpu.py (a run whose steps span more than one epoch)."""
    cfg = _compose(name)
    steps_per_epoch = rows // cfg.data.train_batch_size
    steps = cfg.trainer.total_training_steps
    for wanted in (steps, 200, 1000):  # the recipe's own and what a user may ask on the command line
        assert cfg.trainer.total_epochs * steps_per_epoch >= wanted, (
            f"{name}: {cfg.trainer.total_epochs} epoch(s) of {steps_per_epoch} steps end before step {wanted}")


def test_rl2f_student_replies_are_capped_at_the_rlvr_answer_budget():
    """Budget-matched comparison: one RL²F student reply gets at most what one RLVR answer gets (without a cap a
    single reply can take the whole conversation budget, 2x RLVR's)."""
    from rl2f_plugin.config import RL2FConfig

    rlvr_budget = _compose("rlvr_grpo").data.max_response_length
    for name in RL2F_RECIPES:
        cfg = _compose(name)
        cap = RL2FConfig.from_trainer_config(cfg).max_student_tokens
        assert cap == rlvr_budget, f"{name}: rl2f.max_student_tokens={cap}, rlvr_grpo answers get {rlvr_budget}"
        assert cap < cfg.data.max_response_length
    cpu = RL2FConfig.from_trainer_config(_compose("rl2f_cpu")).max_student_tokens
    assert cpu == _compose("rlvr_cpu").data.max_response_length


def test_world_model_recipe_differs_only_in_the_loss():
    plain = OmegaConf.to_container(_compose("rl2f_grpo"), resolve=True)
    wm = OmegaConf.to_container(_compose("rl2f_grpo_wm"), resolve=True)
    plain["rl2f"]["world_model"].pop("coef")
    wm["rl2f"]["world_model"].pop("coef")
    plain["trainer"].pop("experiment_name")
    wm["trainer"].pop("experiment_name")
    for cfg in (plain, wm):  # derived from experiment_name
        cfg["trainer"].pop("default_local_dir")
        cfg["actor_rollout_ref"]["rollout"]["trace"].pop("experiment_name")
    assert plain == wm


def test_rlvr_is_stock_single_turn_grpo():
    cfg = _compose("rlvr_grpo")
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "single_turn_agent"
    assert cfg.trainer.v1.trainer_mode == "sync"
    assert "rl2f" not in cfg


def test_command_line_overrides_reach_the_rl2f_section():
    from rl2f_plugin.config import RL2FConfig

    cfg = _compose("rl2f_grpo", ["rl2f.max_turns=10", "rl2f.teacher.name=template",
                                 "actor_rollout_ref.model.path=/models/gemma-3-12b-it"])
    section = RL2FConfig.from_trainer_config(cfg)
    assert section.max_turns == 10 and section.teacher.name == "template"
    assert cfg.actor_rollout_ref.model.path == "/models/gemma-3-12b-it"


def test_agent_loops_named_by_the_recipes_are_registered():
    import verl  # noqa: F401  (loads rl2f through verl's plugin entry point)
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    for name in RECIPES:
        loop = _compose(name).actor_rollout_ref.rollout.agent.default_agent_loop
        assert loop in _agent_loop_registry, f"{name}: agent loop {loop!r} is not registered with verl"


def test_trainer_modes_named_by_the_recipes_are_registered():
    import verl  # noqa: F401
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    for name in RECIPES:
        mode = _compose(name).trainer.v1.trainer_mode
        assert mode in TRAINER_REGISTRY, f"{name}: trainer mode {mode!r} is not registered with verl"


@pytest.mark.parametrize("name", RECIPES + CPU_RECIPES)
def test_reward_path_loads_with_verls_loader(name):
    """verl's own loader (``get_custom_reward_fn``, as the trainer's reward loop calls it) resolves the recipe's
    ``pkg://`` path (a dotted module) to rl2f's ``compute_score``."""
    from verl.trainer.ppo.reward import get_custom_reward_fn

    from reward_fns.verl_reward import compute_score

    fn = get_custom_reward_fn(_compose(name))
    assert fn.args[0] is compute_score  # verl's partial(_call_with_kwargs, raw_fn, reward_kwargs)
    # verl's signature; the same function scores a multi-turn rl2f response by its final answer
    result = fn(data_source="reasoning_gym/chain_sum", solution_str="<answer>7</answer>", ground_truth="7",
                extra_info={"task": "reasoning_gym:chain_sum", "rg_entry": json.dumps(
                    {"question": "3 + 4 =", "answer": "7", "metadata": {}})})
    assert result["score"] == 1.0


def test_launch_scripts_prepare_validate_and_compose(tmp_path):
    """examples/run_*.sh end to end except the training itself (DRY_RUN=1 stops at ``main_ppo --cfg job``):
    offline data preparation (reasoning-gym train, CHAMP validation), validation of both files, and the
    recipe composed with the prepared files, the model and a command-line override."""
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES",)}
    env.update(DATA_DIR=str(tmp_path / "data"), TRAIN_SOURCE="reasoning_gym", VAL_SOURCE="champ",
               RG_GENERATORS="basic_arithmetic,chain_sum", RG_TRAIN_SIZE="16", RG_TEST_SIZE="4",
               DRY_RUN="1", MODEL="/models/some-8b-instruct", PYTHON=sys.executable)
    # every run_<recipe>.sh is the shared launcher with its recipe name (checked below), so running the RL²F
    # and the RLVR launcher covers every line while keeping CI short.
    for name in ("rl2f_grpo", "rl2f_grpo_wm", "rlvr_grpo"):
        script = (REPO / "examples" / f"run_{name}.sh").read_text()
        assert script.rstrip().endswith(f'launch_recipe.sh" {name} "$@"'), name
    for i, name in enumerate(["rl2f_grpo", "rlvr_grpo"]):
        proc = subprocess.run(["bash", str(REPO / "examples" / f"run_{name}.sh"), "trainer.total_training_steps=7"],
                              capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if i == 0:  # prepared once, reused by the next scripts
            assert "wrote     16 rows" in proc.stdout and "wrote    270 rows" in proc.stdout
        else:
            assert "wrote" not in proc.stdout
        assert "train.parquet: 16 rows, OK" in proc.stdout and "champ/test.parquet: 270 rows, OK" in proc.stdout
        cfg = yaml.safe_load(proc.stdout[proc.stdout.index("actor_rollout_ref:"):])
        assert cfg["data"]["train_files"] == str(tmp_path / "data" / "reasoning_gym" / "train.parquet")
        assert cfg["data"]["val_files"] == str(tmp_path / "data" / "champ" / "test.parquet")
        assert cfg["actor_rollout_ref"]["model"]["path"] == "/models/some-8b-instruct"
        assert cfg["trainer"]["total_training_steps"] == 7 and cfg["trainer"]["experiment_name"] == name


def test_launch_script_stops_on_invalid_data(tmp_path):
    """A bad row stops the launch before verl starts, with the file / row / field in the message."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    (data / "reasoning_gym").mkdir(parents=True)
    (data / "champ").mkdir()
    row = {"data_source": "x", "prompt": [{"role": "user", "content": "1+1?"}],
           "reward_model": {"style": "rule", "ground_truth": "2"}, "extra_info": {"task": "math", "index": 0}}
    bad = dict(row, reward_model={"style": "rule", "ground_truth": None})
    pq.write_table(pa.Table.from_pylist([row, bad]), data / "reasoning_gym" / "train.parquet")
    pq.write_table(pa.Table.from_pylist([row]), data / "champ" / "test.parquet")
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES",)}
    env.update(DATA_DIR=str(data), TRAIN_SOURCE="reasoning_gym", VAL_SOURCE="champ", DRY_RUN="1",
               PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "examples" / "run_rlvr_grpo.sh")], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 1
    assert f"{data}/reasoning_gym/train.parquet row 1: reward_model.ground_truth is missing" in proc.stderr
    assert "actor_rollout_ref:" not in proc.stdout
