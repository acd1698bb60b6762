"""Import-time registration of everything rl2f adds to verl.

verl loads ``verl.plugins`` entry points while ``verl/__init__`` is still running and swallows their import
errors at DEBUG level. So each component here registers in its own try/except and a failure is logged as a
WARNING naming the component and the error; the rest still registers. Calling `register_all` again is a
no-op for what already succeeded (each component module registers at import, and Python imports once).

A failure must also show where the missing component is used, which may be another process (a Ray worker) whose
log nobody reads: there verl only asserts "Agent loop rl2f_didactic not registered". So the agent-loop names of
a component that failed are registered in verl's agent-loop registry as `UnavailableAgentLoop`, whose
construction raises `ComponentUnavailableError` with the component's own traceback, in the process where it
failed. In the driver, `rl2f_plugin.preflight` stops the run before Ray starts with the same traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import traceback

logger = logging.getLogger("rl2f_plugin")

#: Modules whose import registers a component with verl or with rl2f's registries, in order.
#: (the CPU platform must come before anything that resolves verl's platform at import time).
COMPONENT_MODULES: tuple[str, ...] = (
    "rl2f_plugin.cpu",
    "rl2f_plugin.tasks",
    "rl2f_plugin.agent_loops",
    "rl2f_plugin.trainer",
)

#: component module -> the verl agent-loop names its import registers (kept equal to what it registers by
#: tests/test_plugin_registration.py).
AGENT_LOOPS_OF: dict[str, tuple[str, ...]] = {
    "rl2f_plugin.agent_loops": ("rl2f_didactic", "rl2f_autodidact"),
}

#: component module -> "ExcType: message" for components that failed to register in this process.
REGISTRATION_ERRORS: dict[str, str] = {}
#: component module -> the full traceback of that failure.
REGISTRATION_TRACEBACKS: dict[str, str] = {}
_DONE: set[str] = set()


class ComponentUnavailableError(RuntimeError):
    """An rl2f component that failed to register in this process was asked for."""


class UnavailableAgentLoop:
    """Stands in verl's agent-loop registry for a loop whose component failed to import in this process; verl
    builds it with ``hydra.utils.instantiate(registry[name], trainer_config=..., ...)``, which raises the reason."""

    def __init__(self, agent_name: str, component: str, **_verl_kwargs):
        raise ComponentUnavailableError(
            f"rl2f agent loop {agent_name!r} is unavailable in this process: {component} failed to import "
            f"({REGISTRATION_ERRORS.get(component, 'unknown error')}).\n{REGISTRATION_TRACEBACKS.get(component, '')}")


def _register_unavailable_agent_loops(component: str) -> None:
    names = AGENT_LOOPS_OF.get(component, ())
    if not names:
        return
    try:
        from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    except Exception:  # noqa: BLE001 - verl's own agent loops cannot load either: verl reports that itself
        return
    target = f"{UnavailableAgentLoop.__module__}.{UnavailableAgentLoop.__qualname__}"
    for name in names:
        _agent_loop_registry[name] = {"_target_": target, "agent_name": name, "component": component}


def register_all() -> dict[str, str]:
    """Register every component not yet registered in this process; return the failures."""
    for module in COMPONENT_MODULES:
        if module in _DONE:
            continue
        if importlib.util.find_spec(module) is None:  # component not part of this build
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - verl would hide it; we report it
            REGISTRATION_ERRORS[module] = f"{type(exc).__name__}: {exc}"
            REGISTRATION_TRACEBACKS[module] = traceback.format_exc()
            logger.warning("rl2f: failed to register %s: %s: %s", module, type(exc).__name__, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
            _register_unavailable_agent_loops(module)
        else:
            _DONE.add(module)
            REGISTRATION_ERRORS.pop(module, None)
            REGISTRATION_TRACEBACKS.pop(module, None)
    return dict(REGISTRATION_ERRORS)
