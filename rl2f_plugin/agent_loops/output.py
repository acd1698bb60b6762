"""`AgentLoopOutput` with RL²F's per-token feedback mask."""

from __future__ import annotations

from typing import Any

import torch
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

from ..schema import FEEDBACK_MASK_KEY


class RL2FAgentLoopOutput(AgentLoopOutput):
    """verl's agent-loop output plus ``feedback_mask``: one entry per response token, 1 on the *content* tokens
    of teacher feedback (or, in autodidact mode, of the self-critique), 0 elsewhere.

    `as_dict` (what verl's v1 TransferQueue worker stores per sample) emits it as an int64 tensor under
    ``schema.FEEDBACK_MASK_KEY`` next to ``response_mask``, so the loss receives ``data["feedback_mask"]``.
    """

    feedback_mask: list[int] = []

    def as_dict(self) -> dict[str, Any]:
        output = super().as_dict()
        mask = output.pop("feedback_mask", None)
        if mask is None:
            mask = self.feedback_mask
        if len(mask) != len(self.response_ids):
            raise ValueError(f"feedback_mask has {len(mask)} entries but the response has {len(self.response_ids)} tokens")
        output[FEEDBACK_MASK_KEY] = torch.tensor(list(mask), dtype=torch.int64)
        return output
