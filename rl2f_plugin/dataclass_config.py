"""Typed configuration sections: dataclasses built from (Hydra/OmegaConf or plain) mappings, validated at
construction, with errors that name the key (``rl2f.teacher.max_tokens must be an integer, got 'many'``).

`build_options(cls, mapping, path)` builds dataclass `cls` from `mapping`: unknown keys are errors listing the
known ones, values are checked against the field annotations (int, float, bool, str, ``X | None``, nested
dataclasses), and the dataclass' own ``__post_init__`` checks ranges with `require`. Used by `rl2f_plugin.config`
(the ``rl2f:`` section) and by teachers' ``Options``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["ConfigError", "build_options", "check_value", "merge", "plain", "require"]


class ConfigError(ValueError):
    """A key of the ``rl2f:`` section is unknown or has a bad value; the message names the key."""


def plain(value: Any) -> Any:
    """OmegaConf containers as plain Python containers (resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


# --- generic construction of a dataclass from a mapping, with errors naming the key ---------------------------
def check_value(path: str, value: Any, hint: Any) -> Any:
    """`value` checked against the annotation `hint` (int, float, bool, str, X | None, Any); ints become floats."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} must be a string, got {value!r}")
    return value


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_options(cls: type, data: Any, path: str) -> Any:
    """An instance of dataclass `cls` from the mapping `data` (None = all defaults). Nested dataclass fields are
    built the same way; unknown keys and ill-typed values raise `ConfigError` naming ``path.key``."""
    if isinstance(data, cls):
        return data
    data = plain(data)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} must be a mapping, got {data!r}")
    hints = _type_hints(cls)
    extra_allowed = getattr(cls, "_extra_keys_allowed", False)
    known = {f.name for f in dataclasses.fields(cls) if f.init and not (extra_allowed and f.name == "extra")}
    unknown = sorted(set(data) - known)
    if unknown and not extra_allowed:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key; known keys: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        if name not in known:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_options(hint, value, f"{path}.{name}")
        else:
            kwargs[name] = check_value(f"{path}.{name}", value, hint)
    if extra_allowed:
        kwargs["extra"] = {k: data[k] for k in unknown}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def require(ok: bool, path: str, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{path} must be {what}, got {value!r}")



def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` merged over `base`, recursively for mappings (neither is modified)."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out
