"""Task registry, in the style of verl's registries: a module-level dict filled by a decorator.

    @register_task("my_domain")
    class MyTask(Task): ...

Third-party packages add tasks without touching rl2f through the ``rl2f.tasks`` entry-point group; each
entry point's target is imported (and may register any number of tasks as a side effect), or, if it is a
`Task` subclass or a zero-argument factory, registered under the entry point's name.

Parametrised tasks use a ``prefix:`` name: ``reasoning_gym:basic_arithmetic`` resolves through the factory
registered for the prefix ``reasoning_gym``.
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import entry_points
from typing import Callable

from .base import Task

logger = logging.getLogger(__name__)

TASK_REGISTRY: dict[str, type[Task] | Callable[[], Task]] = {}
PARAMETRIC_TASK_REGISTRY: dict[str, Callable[[str], Task]] = {}
_INSTANCES: dict[str, Task] = {}
_LOCK = threading.Lock()
_ENTRY_POINTS_LOADED = False
ENTRY_POINT_GROUP = "rl2f.tasks"


class UnknownTaskError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown task"


def register_task(name: str):
    """Class decorator: register a `Task` subclass (or a zero-argument factory) under `name`.
    Re-registering the same object is a no-op, so importing twice is safe."""

    def decorator(obj):
        existing = TASK_REGISTRY.get(name)
        if existing is not None and existing is not obj and _qualname(existing) != _qualname(obj):
            raise ValueError(f"task {name!r} is already registered by {_qualname(existing)}")
        TASK_REGISTRY[name] = obj
        _INSTANCES.pop(name, None)
        if isinstance(obj, type) and getattr(obj, "name", "base") == "base":
            obj.name = name
        return obj

    return decorator


def register_parametric_task(prefix: str):
    """Decorator for a factory ``f(param) -> Task`` serving every name ``prefix:param``."""

    def decorator(factory):
        PARAMETRIC_TASK_REGISTRY[prefix] = factory
        return factory

    return decorator


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def load_task_entry_points() -> None:
    """Import every ``rl2f.tasks`` entry point once; failures are logged as warnings, never raised."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken third-party task must not break the others
            logger.warning("rl2f: could not load task plugin %r (%s): %s: %s", ep.name, ep.value, type(exc).__name__, exc)
            continue
        if ep.name not in TASK_REGISTRY and (isinstance(target, type) and issubclass(target, Task) or callable(target)):
            TASK_REGISTRY[ep.name] = target


def get_task(name: str) -> Task:
    """The (cached) task instance for `name`. Raises `UnknownTaskError` listing the known names."""
    with _LOCK:
        if name in _INSTANCES:
            return _INSTANCES[name]
        _ensure_builtins()
        if name not in TASK_REGISTRY and ":" not in name:
            load_task_entry_points()
        if name in TASK_REGISTRY:
            task = TASK_REGISTRY[name]()
        elif ":" in name and name.split(":", 1)[0] in PARAMETRIC_TASK_REGISTRY:
            prefix, param = name.split(":", 1)
            task = PARAMETRIC_TASK_REGISTRY[prefix](param)
        else:
            load_task_entry_points()
            raise UnknownTaskError(
                f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}"
            )
        if not isinstance(task, Task):
            raise TypeError(f"task {name!r} factory returned {type(task).__name__}, not a rl2f Task")
        task.name = name
        _INSTANCES[name] = task
        return task


def list_tasks() -> list[str]:
    _ensure_builtins()
    load_task_entry_points()
    return sorted(TASK_REGISTRY) + [f"{p}:<name>" for p in sorted(PARAMETRIC_TASK_REGISTRY)]


def _ensure_builtins() -> None:
    from . import builtin  # noqa: F401  (registers the built-in tasks)
