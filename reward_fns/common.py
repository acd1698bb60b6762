"""What every verifier shares: the `VerifyResult` it returns and the configurable limits.

This is the lowest layer of rl2f: it imports nothing from `reward_fns` or `rl2f_plugin`, and
`rl2f_plugin.tasks` re-exports `VerifyResult` (a task's ``verify`` returns the same class).

Limits (seconds / sizes) come from, in order: an explicit argument, `set_limits` (verl's ``reward_kwargs``),
the environment variable, the default.

=====================  ==========================  =======  =============================================
limit                  environment variable        default  meaning
=====================  ==========================  =======  =============================================
math_timeout           RL2F_MATH_TIMEOUT           5.0      execution time per maths check (hard: worker killed)
code_timeout           RL2F_CODE_TIMEOUT           10.0     wall clock per sandboxed program run
code_memory_mb         RL2F_CODE_MEMORY_MB         1024     RLIMIT_AS of a sandboxed program
rg_timeout             RL2F_RG_TIMEOUT             10.0     execution time per reasoning-gym ``score_answer``
max_answer_chars       RL2F_MAX_ANSWER_CHARS       2000     longer extracted answers score 0 unchecked
=====================  ==========================  =======  =============================================

The pool's limits count execution only: waiting for a worker and a worker's wait for a CPU are not counted
(`reward_fns.worker_pool`; a wall-clock backstop of 4x the limit + 1 s remains).

Process-level knobs (environment only): ``RL2F_VERIFY_WORKERS`` (verifier worker processes per process
that verifies, default: the usable CPUs shared by the node's agent-loop workers, at most 8; ``rl2f.verify_workers``
sets it from a recipe), ``RL2F_VERIFY_QUEUE_TIMEOUT`` (longest wait for a free worker, default 600 s),
``RL2F_VERIFY_MEMORY_MB`` (their RLIMIT_AS, default 4096),
``RL2F_SANDBOX_PARALLEL`` (concurrent sandbox runs, default = cores); the code sandbox's isolation settings
(``RL2F_SANDBOX_ISOLATION``, ``RL2F_SANDBOX_UID``, ``RL2F_SANDBOX_PYTHON``) are in `reward_fns.sandbox_isolation`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LIMITS: dict[str, float] = {
    "math_timeout": 5.0,
    "code_timeout": 10.0,
    "code_memory_mb": 1024,
    "rg_timeout": 10.0,
    "max_answer_chars": 2000,
}


#: Process-wide overrides set by `set_limits` (verl's ``reward_kwargs``); they beat the environment.
_OVERRIDES: dict[str, float] = {}


def set_limits(**limits: float) -> None:
    """Set process-wide verifier limits (what ``reward_kwargs`` do), e.g. ``set_limits(math_timeout=3)``."""
    for key, value in limits.items():
        if key not in DEFAULT_LIMITS:
            raise KeyError(f"unknown verifier limit {key!r}; known: {', '.join(DEFAULT_LIMITS)}")
        _OVERRIDES[key] = float(value)


def limit(name: str, override: float | None = None) -> float:
    """The value of limit `name` (see the module docstring)."""
    if override is not None:
        return float(override)
    if name in _OVERRIDES:
        return _OVERRIDES[name]
    env = os.environ.get(f"RL2F_{name.upper()}")
    if env:
        try:
            return float(env)
        except ValueError as exc:
            raise ValueError(f"environment variable RL2F_{name.upper()}={env!r} is not a number") from exc
    return float(DEFAULT_LIMITS[name])


@dataclass
class VerifyResult:
    """What a verifier says about one student answer (returned by the verifiers and by `Task.verify`)."""

    score: float
    """In [0, 1]; 1.0 means correct."""
    extracted: str | None = None
    """The final answer pulled out of the reply (None if the reply had none)."""
    reason: str = ""
    """Short human-readable reason, e.g. "no \\boxed{} answer", "timeout", "2/5 tests failed"."""
    details: dict[str, Any] = field(default_factory=dict)
    """Task-specific material (JSON-able, short values), e.g. the failing unit test, expected vs got and the
    error for code."""

    @property
    def correct(self) -> bool:
        return self.score >= 1.0 - 1e-9


def trim(text: Any, n: int = 300) -> str:
    """`text` as a string of at most `n` characters (middle elided)."""
    s = text if isinstance(text, str) else repr(text)
    if len(s) <= n:
        return s
    half = (n - 5) // 2
    return f"{s[:half]} ... {s[-half:]}"
