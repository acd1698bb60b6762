"""Names and defaults shared by rl2f's components (agent loops, loss, trainer, metrics, evaluation).

One place for the keys that travel through verl's data structures, so the loop that writes them and the
loss / metrics that read them cannot drift apart.

The ``rl2f:`` section of a recipe (top level of the Hydra config, next to ``trainer:``) is read with
`rl2f_section(config)`; every key has the default below, so a recipe only states what it changes.
"""

from __future__ import annotations

from typing import Any

# --- per-sample fields written by the rl2f agent loops -------------------------------------------------
#: Top-level per-token field (same length as ``response_ids``): 1 on teacher-feedback tokens, else 0.
FEEDBACK_MASK_KEY = "feedback_mask"

#: Keys inside ``AgentLoopOutput.extra_fields``.
EF_TURN_CORRECT = "rl2f_turn_correct"          # list[int] (0/1), one per student turn
EF_TURN_SCORES = "rl2f_turn_scores"            # list[float], verifier score per student turn
EF_SOLVED_AT_TURN = "rl2f_solved_at_turn"      # int, 1-based turn of the first correct answer, 0 = never
EF_NUM_STUDENT_TURNS = "rl2f_num_student_turns"  # int
EF_LEAK_COUNT = "rl2f_leak_count"              # int, leaks caught by the leak guard in this trajectory
EF_LEAKED_TURNS = "rl2f_leaked_turns"          # int, feedback turns that fell back to safe feedback after leaks
EF_FEEDBACK_TOKENS = "rl2f_feedback_tokens"    # int, number of feedback tokens in the response
EF_FEEDBACK_TURNS = "rl2f_feedback_turns"      # int, feedback turns given (metrics fall back to student turns - 1)
EF_TEACHER_LATENCY = "rl2f_teacher_latency_s"  # float, total seconds spent waiting for the teacher
EF_TRUNCATED = "rl2f_truncated"                # int 0/1, the response-length budget was hit
EF_TASK = "rl2f_task"                          # str, task name
EF_MAX_TURNS = "rl2f_max_turns"                # int, K used for this trajectory
REWARD_EXTRA_INFO = "reward_extra_info"        # verl's key: dict of numbers logged in validation

# --- defaults of the ``rl2f:`` config section ------------------------------------------------------------
DEFAULTS: dict[str, Any] = {
    "max_turns": 4,                 # student turns per trajectory (K)
    "max_student_tokens": None,     # cap on one student reply (None: what is left of data.max_response_length)
    "reward_mode": "final",         # final | discounted | any_turn
    "gamma": 0.7,                   # turn discount for reward_mode=discounted
    "teacher": {
        "name": "self",             # self | openai | execution | template
        "max_tokens": 256,
        "temperature": 0.7,
        "prompt_version": "v1",
        # teacher == openai: any OpenAI-compatible endpoint (key read from the env var named api_key_env)
        "openai": {"base_url": None, "model": None, "api_key_env": "OPENAI_API_KEY", "timeout_s": 60.0,
                   "max_retries": 3, "backoff_s": 0.5, "max_concurrency": 32},
        # teacher == execution: optionally rewrite the failing-test report with an LLM teacher (self | openai)
        "execution": {"rewrite_with": None, "max_detail_chars": 1500},
    },
    "leak_guard": {
        "enable": True,
        "max_regenerations": 2,
        "llm_judge": False,
        "check_spans": True,        # verifier equivalence of answer-like spans (numbers, fractions, \boxed{}, x = ...)
        "max_spans": 64,
        "timeout_s": 10.0,          # a leak check that takes longer counts as a leak
    },
    "world_model": {
        "coef": 0.0,                # weight of the cross-entropy on feedback tokens (0 = verl's loss exactly)
    },
}


def rl2f_section(config: Any) -> dict[str, Any]:
    """The ``rl2f:`` section of a (Hydra/OmegaConf or plain dict) trainer config, merged over `DEFAULTS`."""
    section: Any = None
    if config is not None:
        try:
            section = config.get("rl2f") if hasattr(config, "get") else getattr(config, "rl2f", None)
        except Exception:  # noqa: BLE001
            section = None
    if section is not None and not isinstance(section, dict):
        from omegaconf import OmegaConf

        section = OmegaConf.to_container(section, resolve=True)
    return _deep_merge(DEFAULTS, section or {})


def _deep_merge(base: dict, override: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
