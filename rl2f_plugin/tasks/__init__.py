"""Problem domains ("tasks") and their registry. See `base.Task` for the plugin API."""

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

__all__ = [
    "Task", "VerifyResult", "format_ground_truth", "TASK_REGISTRY", "PARAMETRIC_TASK_REGISTRY",
    "UnknownTaskError", "get_task", "list_tasks", "register_task", "register_parametric_task",
]
