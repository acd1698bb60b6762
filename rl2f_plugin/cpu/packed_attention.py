"""Attention over packed sequences on CPU: what makes verl's remove-padding path run without flash-attn.

With ``actor_rollout_ref.model.use_remove_padding=true`` verl's FSDP engine (``workers/engine/fsdp/
transformer_impl.py``, ``prepare_model_inputs``) concatenates a micro-batch's sequences into ONE row
(``input_ids [1, total_tokens]``, ``attention_mask=None``) and passes per-sequence ``position_ids`` that restart at
each sequence; on GPU flash-attn's varlen kernel reads the sequence boundaries from them. On CPU there is no
flash-attn. transformers' own ``sdpa`` is *correct* on such input (its ``find_packed_sequence_indices`` turns the
position ids into a block-diagonal mask) but it builds that mask over the whole packed row: memory and attention
work grow with ``total_tokens²`` (32 RL²F sequences of ~150 tokens: a 4,800 x 4,800 mask per head and layer, ~30x
the attention work of the padded batch, and the scores alone exceed the machine's memory at the GPU recipes'
``ppo_max_token_len_per_gpu``).

`packed_attention` (registered with transformers as ``rl2f_packed_sdpa``) finds the same boundaries in
``position_ids`` (a position that does not follow the previous one starts a sequence, the rule of transformers'
``find_packed_sequence_indices``), re-pads only the attention's query/key/value to ``[sequences, longest, ...]``,
runs transformers' ``sdpa_attention_forward`` with ``is_causal`` on it (right padding under a causal mask never
reaches a real query) and gathers the real positions back. Everything else in the model (embeddings, MLPs,
norms, the 49k-vocabulary head) runs on the unpadded tokens only, which is where remove-padding saves its time.
Any other call (a 2-D padding mask, batch > 1, a KV cache, 3-D rope position ids) goes to transformers' ``sdpa``
unchanged, so the same ``attn_implementation`` serves the padded path too.

Select it with ``actor_rollout_ref.model.override_config.attn_implementation=rl2f_packed_sdpa`` (the CPU recipes
do). Registered in every process that imports verl's FSDP engine (`rl2f_plugin.cpu.patches`).
"""

from __future__ import annotations

import torch

ATTENTION = "rl2f_packed_sdpa"
_announced = False  # one line per process on the first packed forward (tests read it from the worker's output)


def packed_segments(position_ids: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """For packed ``position_ids`` ``[1, total]``: the flat index of every token in a ``[sequences, longest]``
    right-padded layout, the number of sequences and the longest length."""
    pos = position_ids.reshape(-1)
    total = pos.numel()
    starts = torch.ones(total, dtype=torch.bool, device=pos.device)
    starts[1:] = pos[1:] - pos[:-1] != 1
    seq = starts.long().cumsum(0) - 1
    start_at = torch.nonzero(starts).flatten()
    offset = torch.arange(total, device=pos.device) - start_at[seq]
    lengths = torch.diff(torch.cat([start_at, start_at.new_tensor([total])]))
    longest = int(lengths.max())
    return seq * longest + offset, int(start_at.numel()), longest


def _repad(states: torch.Tensor, flat: torch.Tensor, sequences: int, longest: int) -> torch.Tensor:
    """``[1, heads, total, dim]`` -> ``[sequences, heads, longest, dim]`` (zeros after each sequence's end)."""
    heads, dim = states.shape[1], states.shape[3]
    padded = states.new_zeros(heads, sequences * longest, dim).index_copy(1, flat, states[0])
    return padded.view(heads, sequences, longest, dim).transpose(0, 1)


def packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                     position_ids=None, **kwargs):
    """transformers attention-interface signature; see the module docstring."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = (attention_mask is None and position_ids is not None and position_ids.dim() == 2
              and query.shape[0] == 1 and position_ids.shape[-1] == query.shape[2] == key.shape[2])
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    flat, sequences, longest = packed_segments(position_ids)
    global _announced
    if not _announced:
        _announced = True
        print(f"{ATTENTION}: packed forward of {sequences} sequences, {flat.numel()} tokens "
              f"({sequences * longest} padded)", flush=True)
    q, k, v = (_repad(x, flat, sequences, longest) for x in (query, key, value))
    out, _ = sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True, **kwargs)
    # out: [sequences, longest, heads, dim] -> the packed row [1, total, heads, dim]
    return out.reshape(sequences * longest, *out.shape[2:]).index_select(0, flat).unsqueeze(0), None


def packed_attention_mask(attention_mask=None, **kwargs):
    """The mask interface of ``rl2f_packed_sdpa``: no mask for a packed row (`packed_attention` reads the
    boundaries from ``position_ids``), transformers' ``sdpa`` mask otherwise."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make ``attn_implementation=rl2f_packed_sdpa`` known to transformers in this process."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, packed_attention_mask)
