"""rl2f: RL from natural-language feedback (RL²F, arXiv 2602.16066) as a verl plugin.

Importing this package registers everything rl2f adds to verl (agent loops, trainer modes, the CPU backend)
and to its own registries (tasks). verl imports it automatically in every process through the
``verl.plugins`` entry point, so no environment variable is needed.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._registration import REGISTRATION_ERRORS, register_all  # noqa: E402

register_all()

__all__ = ["__version__", "register_all", "REGISTRATION_ERRORS"]
