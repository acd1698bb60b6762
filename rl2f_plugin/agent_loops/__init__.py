"""rl2f's verl agent loops. Importing this package registers ``rl2f_didactic`` and ``rl2f_autodidact`` in verl's
agent-loop registry (``verl.experimental.agent_loop.agent_loop._agent_loop_registry``) with verl's own
``register`` decorator; select them per sample with the dataset's ``agent_name`` column or with
``actor_rollout_ref.rollout.agent.default_agent_loop``. The interaction itself is `rl2f_plugin.episode`."""

from .didactic import AutodidactAgentLoop, DidacticAgentLoop
from .output import RL2FAgentLoopOutput

__all__ = ["AutodidactAgentLoop", "DidacticAgentLoop", "RL2FAgentLoopOutput"]
