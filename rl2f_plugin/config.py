"""The ``rl2f:`` section of a recipe as one typed config, validated when it is built.

    rl2f:                      # top level of the Hydra config, next to trainer:
      max_turns: 2
      teacher: {name: template, template: {hints: true}}

Every key has its default here, and only here (``rl2f.teacher``: `rl2f_plugin.teachers.base.TeacherConfig`;
teacher-specific options: in the teacher's own ``Options`` dataclass, e.g. ``OpenAITeacher.Options``). `RL2FConfig.from_trainer_config`
reads the section of a full trainer config (OmegaConf or dict); an unknown key, a value of the wrong type or out of
range raises `ConfigError` naming the key (``rl2f.leak_guard.max_regenerations must be an integer >= 0, got -1``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reward_fns.worker_pool import default_pool_size

from .dataclass_config import ConfigError, build_options, merge, plain, require
from .reward_modes import REWARD_MODE_REGISTRY
from .teachers.base import TeacherConfig

__all__ = ["ConfigError", "RL2FConfig", "TeacherConfig", "LeakGuardConfig", "WorldModelConfig"]

ON_TEACHER_ERROR = ("fallback", "stop", "raise")
#: Default of ``rl2f.verify_queue_timeout_s`` (also the leak guard's when it is built on its own).
DEFAULT_VERIFY_QUEUE_TIMEOUT_S = 600.0

# --- the sections -------------------------------------------------------------------------------------------------
@dataclass
class LeakGuardConfig:
    """``rl2f.leak_guard``: keeps the teacher from handing the student the answer (`rl2f_plugin.leak_guard`)."""

    enable: bool = True
    max_regenerations: int = 2      # teacher retries after a caught leak, then the safe generic feedback
    llm_judge: bool = False         # also ask an LLM (the teacher's model) whether the feedback leaks
    check_spans: bool = True        # verifier equivalence of answer-like spans (numbers, fractions, \boxed{}, x = ...)
    max_spans: int = 64
    timeout_s: float = 10.0         # execution limit of one leak check (queueing excluded); a timeout withholds the
                                    # feedback and is counted as a leak-guard timeout, not a leak

    def __post_init__(self):
        require(self.max_regenerations >= 0, "rl2f.leak_guard.max_regenerations", "an integer >= 0", self.max_regenerations)
        require(self.max_spans >= 1, "rl2f.leak_guard.max_spans", "an integer >= 1", self.max_spans)
        require(self.timeout_s > 0, "rl2f.leak_guard.timeout_s", "a number > 0", self.timeout_s)


@dataclass
class WorldModelConfig:
    """``rl2f.world_model``: the auxiliary cross-entropy on teacher-feedback tokens (`rl2f_plugin.losses`)."""

    coef: float = 0.0               # 0 = verl's actor loss exactly

    def __post_init__(self):
        require(self.coef >= 0, "rl2f.world_model.coef", "a number >= 0", self.coef)


@dataclass
class RL2FConfig:
    """The whole ``rl2f:`` section."""

    max_turns: int = 4                  # student turns per episode (K)
    max_student_tokens: int | None = None  # cap on one student reply (None: what is left of the response budget)
    reward_mode: str = "final"          # a registered reward mode (rl2f_plugin.reward_modes): final | discounted | any_turn
    gamma: float = 0.7                  # turn discount of reward_mode=discounted
    verify_timeout_s: float = 30.0      # execution limit of one verify() call (queueing excluded); scores 0, counted
                                        # as a verify timeout
    verify_queue_timeout_s: float = DEFAULT_VERIFY_QUEUE_TIMEOUT_S  # limit on waiting for verifier capacity
    verify_workers: int = 0             # verifier processes per agent-loop worker; 0 = auto (the node's usable CPUs
                                        # / agent-loop workers on the node, at most 8; RL2F_VERIFY_WORKERS if set)
    teacher_timeout_s: float = 120.0    # per feedback request (all retries of one attempt included); time the
                                        # teacher spends generating on the policy's own server is not counted
    on_teacher_error: str = "fallback"  # fallback (safe generic feedback, counted) | stop (end the episode) | raise
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    leak_guard: LeakGuardConfig = field(default_factory=LeakGuardConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)

    def __post_init__(self):
        require(self.max_turns >= 1, "rl2f.max_turns", "an integer >= 1", self.max_turns)
        if self.max_student_tokens is not None:
            require(self.max_student_tokens >= 1, "rl2f.max_student_tokens", "null or an integer >= 1",
                     self.max_student_tokens)
        require(self.reward_mode in REWARD_MODE_REGISTRY, "rl2f.reward_mode",
                 f"one of the registered reward modes ({', '.join(sorted(REWARD_MODE_REGISTRY))})", self.reward_mode)
        require(0.0 <= self.gamma <= 1.0, "rl2f.gamma", "in [0, 1]", self.gamma)
        require(self.verify_timeout_s > 0, "rl2f.verify_timeout_s", "a number > 0", self.verify_timeout_s)
        require(self.verify_queue_timeout_s > 0, "rl2f.verify_queue_timeout_s", "a number > 0",
                 self.verify_queue_timeout_s)
        require(self.verify_workers >= 0, "rl2f.verify_workers", "an integer >= 0 (0 = auto)", self.verify_workers)
        require(self.teacher_timeout_s > 0, "rl2f.teacher_timeout_s", "a number > 0", self.teacher_timeout_s)
        require(self.on_teacher_error in ON_TEACHER_ERROR, "rl2f.on_teacher_error", " | ".join(ON_TEACHER_ERROR),
                 self.on_teacher_error)
        self.teacher.validate()

    @classmethod
    def from_dict(cls, section: Any) -> "RL2FConfig":
        return build_options(cls, section, "rl2f")

    @classmethod
    def from_trainer_config(cls, config: Any, overrides: Mapping[str, Any] | None = None) -> "RL2FConfig":
        """The ``rl2f:`` section of a full trainer config (OmegaConf or dict; absent = all defaults), with
        `overrides` (e.g. an agent-loop YAML entry's extra keys) merged over it key by key."""
        section: Any = None
        if config is not None:
            section = config.get("rl2f") if hasattr(config, "get") else getattr(config, "rl2f", None)
        section = plain(section) or {}
        if overrides:
            section = merge(section, {k: plain(v) for k, v in overrides.items()})
        out = cls.from_dict(section)
        if not out.verify_workers and not os.environ.get("RL2F_VERIFY_WORKERS"):
            out.verify_workers = default_pool_size(agent_workers_per_node(config))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (the ``rl2f:`` section with every default filled in)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["teacher"] = self.teacher.to_dict()
        out["leak_guard"] = dataclasses.asdict(self.leak_guard)
        out["world_model"] = dataclasses.asdict(self.world_model)
        return out


def agent_workers_per_node(config: Any) -> int:
    """verl's agent-loop workers on one node: ``rollout.agent.num_workers`` spread over ``trainer.nnodes``
    (`verl.experimental.agent_loop.AgentLoopManager` places them round-robin over the nodes); 1 without a
    trainer config. Each worker runs its own verifier pool, so they share the node's CPUs."""
    def get(path: str, default: Any) -> Any:
        node = config
        for key in path.split("."):
            if node is None:
                return default
            node = node.get(key) if hasattr(node, "get") else getattr(node, key, None)
        return default if node is None else node

    if config is None:
        return 1
    workers = int(get("actor_rollout_ref.rollout.agent.num_workers", 1) or 1)
    nodes = int(get("trainer.nnodes", 1) or 1)
    return max(1, math.ceil(workers / max(1, nodes)))
