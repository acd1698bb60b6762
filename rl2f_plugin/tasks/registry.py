"""Task registry, in the style of verl's registries: a module-level dict filled by a decorator.

    @register_task("my_domain")
    class MyTask(Task): ...

Third-party packages add tasks without touching rl2f through the ``rl2f.tasks`` entry-point group; each
entry point's target is imported (and may register any number of tasks as a side effect), or, if it is a
`Task` subclass or a zero-argument factory, registered under the entry point's name.

Parametrised tasks use a ``prefix:`` name: ``reasoning_gym:basic_arithmetic`` resolves through the factory
registered for the prefix ``reasoning_gym``.

The built-in tasks (`rl2f_plugin.tasks.builtin`) register themselves with this module; the package
``rl2f_plugin.tasks`` imports them right after it, so they are always registered once the package is imported
(and any import of this module imports the package first). This module does not import them: the import
graph stays acyclic (base <- registry <- builtin).
"""

from __future__ import annotations

import threading
from typing import Callable

from ..plugin_entry_points import load_entry_points
from .base import Task


TASK_REGISTRY: dict[str, type[Task] | Callable[[], Task]] = {}
PARAMETRIC_TASK_REGISTRY: dict[str, Callable[[str], Task]] = {}
_INSTANCES: dict[str, Task] = {}
_LOCK = threading.Lock()
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
    """Import every ``rl2f.tasks`` entry point once (`rl2f_plugin.plugin_entry_points`)."""
    for name, target in load_entry_points(ENTRY_POINT_GROUP):
        if name not in TASK_REGISTRY and (isinstance(target, type) and issubclass(target, Task) or callable(target)):
            TASK_REGISTRY[name] = target


def get_task(name: str) -> Task:
    """The (cached) task instance for `name`. Raises `UnknownTaskError` listing the known names."""
    with _LOCK:
        if name in _INSTANCES:
            return _INSTANCES[name]
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
    load_task_entry_points()
    return sorted(TASK_REGISTRY) + [f"{p}:<name>" for p in sorted(PARAMETRIC_TASK_REGISTRY)]
