"""Reward modes: how an episode's per-turn correctness becomes its scalar reward (``rl2f.reward_mode``).

A registry in verl's style; adding a mode is one decorated function here or in a plugin module::

    @register_reward_mode("last_two")
    def last_two(turn_correct: Sequence[int], gamma: float) -> float: ...

`turn_correct` holds one 0/1 per student turn of the episode (the episode stops at the first correct answer),
`gamma` is ``rl2f.gamma``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["REWARD_MODE_REGISTRY", "RewardMode", "get_reward_mode", "register_reward_mode", "trajectory_reward"]

RewardMode = Callable[[Sequence[int], float], float]
REWARD_MODE_REGISTRY: dict[str, RewardMode] = {}


def register_reward_mode(name: str) -> Callable[[RewardMode], RewardMode]:
    def decorator(fn: RewardMode) -> RewardMode:
        existing = REWARD_MODE_REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != fn.__qualname__:
            raise ValueError(f"reward mode {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        REWARD_MODE_REGISTRY[name] = fn
        return fn

    return decorator


def get_reward_mode(name: str) -> RewardMode:
    if name not in REWARD_MODE_REGISTRY:
        raise KeyError(f"unknown reward mode {name!r} (rl2f.reward_mode); registered: {', '.join(sorted(REWARD_MODE_REGISTRY))}")
    return REWARD_MODE_REGISTRY[name]


def trajectory_reward(turn_correct: Sequence[int], mode: str, gamma: float) -> float:
    """The reward of an episode with per-turn correctness `turn_correct` under reward mode `mode`."""
    return float(get_reward_mode(mode)(list(turn_correct), float(gamma))) if turn_correct else 0.0


def _first_correct(turn_correct: Sequence[int]) -> int | None:
    return next((i for i, c in enumerate(turn_correct) if c), None)


@register_reward_mode("final")
def final(turn_correct: Sequence[int], gamma: float) -> float:
    """1 if the last answer is correct (the paper's sparse conversation-level reward)."""
    return float(turn_correct[-1])


@register_reward_mode("discounted")
def discounted(turn_correct: Sequence[int], gamma: float) -> float:
    """gamma^(t-1) for the first correct answer at turn t, else 0."""
    first = _first_correct(turn_correct)
    return 0.0 if first is None else float(gamma ** first)


@register_reward_mode("any_turn")
def any_turn(turn_correct: Sequence[int], gamma: float) -> float:
    """1 if any answer is correct."""
    return 0.0 if _first_correct(turn_correct) is None else 1.0
