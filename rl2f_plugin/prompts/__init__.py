"""Versioned prompt templates of rl2f's teachers, critics and leak judge.

Each template is a text file ``<name>_<version>.txt`` in this package, filled with `string.Template`
(``$placeholder`` syntax, so braces in maths or code inside the substituted values are harmless). Changing a
prompt means adding ``<name>_v2.txt`` and selecting it with ``rl2f.teacher.prompt_version: v2`` — old runs stay
reproducible.
"""

from __future__ import annotations

import functools
import string
from importlib import resources

__all__ = ["PromptNotFoundError", "available_prompts", "load_prompt", "render_prompt"]


class PromptNotFoundError(FileNotFoundError):
    pass


def available_prompts() -> list[str]:
    """File stems of every packaged template, e.g. ``teacher_v1``."""
    return sorted(p.name[:-4] for p in resources.files(__name__).iterdir() if p.name.endswith(".txt"))


@functools.lru_cache(maxsize=None)
def load_prompt(name: str, version: str = "v1") -> string.Template:
    """The template ``<name>_<version>.txt``; a clear error lists what exists."""
    fname = f"{name}_{version}.txt"
    path = resources.files(__name__).joinpath(fname)
    if not path.is_file():
        raise PromptNotFoundError(
            f"rl2f prompt template {fname!r} not found in rl2f_plugin/prompts/; available: {', '.join(available_prompts())}"
        )
    return string.Template(path.read_text(encoding="utf-8"))


def render_prompt(name: str, version: str = "v1", **values: object) -> str:
    """Fill the template; every ``$placeholder`` must be given (a missing one raises naming it)."""
    template = load_prompt(name, version)
    try:
        return template.substitute({k: "" if v is None else str(v) for k, v in values.items()}).strip()
    except KeyError as exc:
        raise KeyError(f"prompt template {name}_{version}.txt needs a value for ${exc.args[0]}") from None
