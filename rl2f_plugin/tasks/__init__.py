"""Problem domains ("tasks") and their registry. See `base.Task` for the plugin API.

Import order is the dependency order (base <- registry <- builtin): the built-in tasks register themselves
with the registry when this package is imported, so `get_task` / `list_tasks` always know them.
"""

from .base import Task, VerifyResult, format_ground_truth
from .registry import (
    PARAMETRIC_TASK_REGISTRY,
    TASK_REGISTRY,
    UnknownTaskError,
    get_task,
    list_tasks,
    register_parametric_task,
    register_task,
)
from . import builtin  # noqa: F401  (last: registers the built-in tasks)

__all__ = [
    "Task", "VerifyResult", "format_ground_truth", "TASK_REGISTRY", "PARAMETRIC_TASK_REGISTRY",
    "UnknownTaskError", "get_task", "list_tasks", "register_task", "register_parametric_task",
]
