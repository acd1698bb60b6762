"""rl2f's verl agent loops. Importing this package registers ``rl2f_didactic`` and ``rl2f_autodidact`` in verl's
agent-loop registry (``verl.experimental.agent_loop.agent_loop._agent_loop_registry``) with verl's own
``register`` decorator; select them per sample with the dataset's ``agent_name`` column or with
``actor_rollout_ref.rollout.agent.default_agent_loop``."""

from .didactic import (
    EF_FINAL_RESPONSE,
    EF_TEACHER_ERRORS,
    LOOP_DEFAULTS,
    AutodidactAgentLoop,
    DidacticAgentLoop,
    resolve_config,
    trajectory_reward,
)
from .output import RL2FAgentLoopOutput

__all__ = [
    "AutodidactAgentLoop", "DidacticAgentLoop", "RL2FAgentLoopOutput", "EF_FINAL_RESPONSE", "EF_TEACHER_ERRORS",
    "LOOP_DEFAULTS", "resolve_config", "trajectory_reward",
]
