"""``python -m rl2f_plugin info``: what rl2f registered in this process — the first thing to run when a name
does not show up in a recipe.

It imports ``verl`` exactly as ``main_ppo`` does (so rl2f is loaded through verl's ``verl.plugins`` entry
point, not by this module) and lists, per registry, the names rl2f contributes next to verl's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def collect_registrations() -> dict[str, Any]:
    """Everything the registries of this process hold, after ``import verl``."""
    import verl  # noqa: F401  -- triggers verl's plugin discovery, which imports rl2f_plugin

    import rl2f_plugin
    from rl2f_plugin._registration import REGISTRATION_ERRORS

    info: dict[str, Any] = {
        "rl2f_version": rl2f_plugin.__version__,
        "verl_version": verl.__version__,
        "loaded_by_verl_entry_point": "rl2f_plugin" in sys.modules,
        "errors": dict(REGISTRATION_ERRORS),
    }

    def _safe(key: str, fn):
        try:
            info[key] = fn()
        except Exception as exc:  # noqa: BLE001 - a report must not crash on one registry
            info[key] = f"<unavailable: {type(exc).__name__}: {exc}>"

    def _agent_loops():
        from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

        return {name: spec.get("_target_") for name, spec in sorted(_agent_loop_registry.items())}

    def _trainers():
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

        return {name: f"{cls.__module__}.{cls.__qualname__}" for name, cls in sorted(TRAINER_REGISTRY.items())}

    def _platforms():
        from verl.plugin.platform.platform_manager import PlatformRegistry

        return list(PlatformRegistry.registered_names())

    def _replicas():
        from verl.workers.rollout.replica import RolloutReplicaRegistry

        return sorted(RolloutReplicaRegistry._registry)

    def _tasks():
        from rl2f_plugin.tasks import list_tasks

        return list_tasks()

    def _teachers():
        from rl2f_plugin.teachers import TEACHER_REGISTRY

        return {name: f"{cls.__module__}.{cls.__qualname__}" for name, cls in sorted(TEACHER_REGISTRY.items())}

    def _reward_modes():
        from rl2f_plugin.reward_modes import REWARD_MODE_REGISTRY

        return {name: f"{fn.__module__}.{fn.__qualname__}" for name, fn in sorted(REWARD_MODE_REGISTRY.items())}

    def _reward_fns():
        from reward_fns.verl_reward import compute_score as fn

        return {"compute_score": f"{fn.__module__}.{fn.__qualname__}",
                "config": "reward.custom_reward_function.path=pkg://reward_fns.verl_reward "
                          "reward.custom_reward_function.name=compute_score"}

    _safe("agent_loops", _agent_loops)
    _safe("trainer_modes", _trainers)
    _safe("platforms", _platforms)
    _safe("rollout_replicas", _replicas)
    _safe("tasks", _tasks)
    _safe("teachers", _teachers)
    _safe("reward_modes", _reward_modes)
    _safe("reward_functions", _reward_fns)
    return info


def _print_text(info: dict[str, Any]) -> None:
    print(f"rl2f {info['rl2f_version']} on verl {info['verl_version']}"
          f" (loaded through verl's plugin entry point: {'yes' if info['loaded_by_verl_entry_point'] else 'NO'})")
    for key, title in (("agent_loops", "agent loops"), ("trainer_modes", "trainer modes (trainer.v1.trainer_mode)"),
                       ("platforms", "platforms (VERL_PLATFORM)"), ("rollout_replicas", "rollout engines"),
                       ("tasks", "tasks"), ("teachers", "teachers (rl2f.teacher.name)"),
                       ("reward_modes", "reward modes (rl2f.reward_mode)"), ("reward_functions", "reward functions")):
        value = info.get(key)
        print(f"\n{title}:")
        if isinstance(value, dict):
            for name, target in value.items():
                print(f"  {name:<24} {target}")
        elif isinstance(value, list):
            print("  " + (", ".join(map(str, value)) or "<none>"))
        else:
            print(f"  {value}")
    if info["errors"]:
        print("\nFAILED to register:")
        for module, err in info["errors"].items():
            print(f"  {module}: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl2f_plugin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p_info = sub.add_parser("info", help="print what rl2f registered (agent loops, tasks, rewards, trainer modes)")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.command != "info":
        parser.print_help()
        return 0 if args.command is None else 2
    info = collect_registrations()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_text(info)
    return 1 if info["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
