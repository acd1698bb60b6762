"""The typed ``rl2f:`` config, the reward-mode registry, and teachers added by a third-party package.

Real: recipes composed by Hydra on verl's own ``ppo_trainer`` config, the teacher and reward-mode registries, and
an installed distribution (``.dist-info`` with ``entry_points.txt``) in a fresh interpreter for the plugin test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rl2f_plugin.config import ConfigError, LeakGuardConfig, RL2FConfig
from rl2f_plugin.reward_modes import REWARD_MODE_REGISTRY, register_reward_mode, trajectory_reward
from rl2f_plugin.teachers import TeacherConfig, build_teacher

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_round_trip():
    cfg = RL2FConfig()
    assert cfg.max_turns == 4 and cfg.reward_mode == "final" and cfg.teacher.name == "self"
    assert cfg.leak_guard == LeakGuardConfig() and cfg.world_model.coef == 0.0
    again = RL2FConfig.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize("section,message", [
    ({"max_turns": 0}, r"rl2f.max_turns must be an integer >= 1, got 0"),
    ({"max_turns": "two"}, r"rl2f.max_turns must be an integer, got 'two'"),
    ({"max_turn": 2}, r"rl2f.max_turn: unknown key; known keys: gamma, leak_guard, max_student_tokens, max_turns"),
    ({"gamma": 1.5}, r"rl2f.gamma must be in \[0, 1\], got 1.5"),
    ({"reward_mode": "best"}, r"rl2f.reward_mode must be one of the registered reward modes \(any_turn, discounted, final\)"),
    ({"on_teacher_error": "ignore"}, r"rl2f.on_teacher_error must be fallback \| stop \| raise"),
    ({"leak_guard": {"max_regenerations": -1}}, r"rl2f.leak_guard.max_regenerations must be an integer >= 0"),
    ({"leak_guard": {"enable": "yes"}}, r"rl2f.leak_guard.enable must be true or false, got 'yes'"),
    ({"leak_guard": 3}, r"rl2f.leak_guard must be a mapping, got 3"),
    ({"world_model": {"coef": -0.1}}, r"rl2f.world_model.coef must be a number >= 0"),
    ({"teacher": {"name": "oracle"}}, r"unknown teacher 'oracle' \(rl2f.teacher.name\); registered teachers: "),
    ({"teacher": {"hints": False}}, r"rl2f.teacher.hints: unknown key"),
    ({"teacher": {"name": "template", "template": {"hint": False}}}, r"rl2f.teacher.template.hint: unknown key; known keys: hints"),
    ({"teacher": {"openai": {"timeout_s": "soon"}}}, r"rl2f.teacher.openai.timeout_s must be a number, got 'soon'"),
    ({"teacher": {"self": {"x": 1}}}, r"rl2f.teacher.self: teacher 'self' takes no options"),
])
def test_bad_values_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        RL2FConfig.from_dict(section)


def test_recipes_give_valid_configs():
    """Every recipe's rl2f: section, composed by Hydra on verl's config, builds (a typo in a recipe fails here)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    names = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml") if not p.stem.startswith("_"))
    assert "rl2f_cpu" in names
    for name in names:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base=None):
            cfg = compose(config_name=name)
        rl2f = RL2FConfig.from_trainer_config(cfg)
        if name.startswith("rl2f_"):
            assert "rl2f" in cfg, name
    GlobalHydra.instance().clear()
    assert rl2f is not None


def test_cpu_recipe_values():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base=None):
        cfg = RL2FConfig.from_trainer_config(compose(config_name="rl2f_wm_cpu"))
    GlobalHydra.instance().clear()
    assert (cfg.max_turns, cfg.max_student_tokens, cfg.teacher.name, cfg.world_model.coef) == (2, 48, "template", 0.1)
    assert cfg.teacher.options_for("template").hints is True


def test_overrides_merge_over_the_section():
    cfg = RL2FConfig.from_trainer_config({"rl2f": {"max_turns": 5, "teacher": {"name": "template", "max_tokens": 9}}},
                                         overrides={"teacher": {"temperature": 0.0}, "gamma": 0.5})
    assert (cfg.max_turns, cfg.gamma, cfg.teacher.name, cfg.teacher.max_tokens, cfg.teacher.temperature) == (5, 0.5, "template", 9, 0.0)


def test_teacher_options_have_their_defaults_in_the_teacher():
    t = build_teacher({"name": "execution"})
    assert t.options == type(t).Options() and t.options.max_detail_chars == 1500
    t = build_teacher(TeacherConfig(name="execution", extra={"execution": {"max_detail_chars": 80}}))
    assert t.options.max_detail_chars == 80


def test_defaults_live_in_one_place():
    """No module re-states a default of the rl2f: section as a dict of defaults (the old DEFAULTS, LOOP_DEFAULTS,
    OPENAI_DEFAULTS, EXECUTION_DEFAULTS and the leak guard's keyword defaults)."""
    import inspect

    import rl2f_plugin.leak_guard as lg

    offenders = []
    for path in (REPO / "rl2f_plugin").rglob("*.py"):
        text = path.read_text()
        for name in ("DEFAULTS: dict", "_DEFAULTS: dict", '.get("max_regenerations", ', '.get("timeout_s", '):
            if name in text:
                offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert not offenders
    params = inspect.signature(lg.LeakGuard.__init__).parameters
    assert not {f.name for f in dataclasses.fields(LeakGuardConfig)} & set(params)


def test_reward_mode_is_one_function():
    assert set(REWARD_MODE_REGISTRY) >= {"final", "discounted", "any_turn"}

    @register_reward_mode("rl2f_test_first_turn_only")
    def first_turn_only(turn_correct, gamma):
        return float(turn_correct[0])

    try:
        assert RL2FConfig.from_dict({"reward_mode": "rl2f_test_first_turn_only"}).reward_mode == "rl2f_test_first_turn_only"
        assert trajectory_reward([0, 1], "rl2f_test_first_turn_only", 0.7) == 0.0
        assert trajectory_reward([1], "rl2f_test_first_turn_only", 0.7) == 1.0
        with pytest.raises(KeyError, match="unknown reward mode 'nope'.*registered: .*any_turn"):
            trajectory_reward([1], "nope", 0.7)
        with pytest.raises(ValueError, match="already registered"):
            register_reward_mode("final")(lambda turn_correct, gamma: 0.0)
    finally:
        REWARD_MODE_REGISTRY.pop("rl2f_test_first_turn_only")


PLUGIN_TEACHER = '''
from dataclasses import dataclass

from rl2f_plugin.teachers import Teacher

class EncouragingTeacher(Teacher):
    @dataclass
    class Options:
        cheer: str = "You can do it!"

    async def feedback(self, ctx):
        return f"Not yet ({ctx.verify_result.reason}). {self.options.cheer}"
'''


def test_third_party_teacher_through_entry_points(tmp_path):
    """The README's "Adding a teacher" example: a package declares ``[rl2f.teachers]`` and rl2f finds it by name,
    with its own options validated, in a fresh interpreter (this process' registry is untouched)."""
    (tmp_path / "my_teachers").mkdir()
    (tmp_path / "my_teachers" / "__init__.py").write_text(PLUGIN_TEACHER)
    dist = tmp_path / "my_teachers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-teachers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[rl2f.teachers]\nencouraging = my_teachers:EncouragingTeacher\n")
    code = '''
        import asyncio, json
        from rl2f_plugin.config import ConfigError, RL2FConfig
        from rl2f_plugin.episode import DidacticEpisode
        from rl2f_plugin.teachers import build_teacher
        cfg = RL2FConfig.from_dict({"teacher": {"name": "encouraging", "encouraging": {"cheer": "Go on!"}}})
        sample = {"raw_prompt": [{"role": "user", "content": "Calculate 4 + 3."}], "reward_model": {"ground_truth": "7"},
                  "data_source": "reasoning_gym:basic_arithmetic", "index": 0, "extra_info": {}}
        ep = DidacticEpisode.from_sample(sample, cfg, teacher=build_teacher(cfg.teacher))
        step = asyncio.run(ep.step("<answer>6</answer>"))
        try:
            RL2FConfig.from_dict({"teacher": {"name": "encouraging", "encouraging": {"cheers": 1}}})
            err = None
        except ConfigError as exc:
            err = str(exc)
        print(json.dumps({"feedback": step.feedback, "error": err}))
    '''
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=180, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["feedback"] == "Not yet (incorrect). Go on!"
    assert out["error"].startswith("rl2f.teacher.encouraging.cheers: unknown key; known keys: cheer")
