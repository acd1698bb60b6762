"""Import-time registration of everything rl2f adds to verl.

verl loads ``verl.plugins`` entry points while ``verl/__init__`` is still running and swallows their import
errors at DEBUG level. So each component here registers in its own try/except and a failure is logged as a
WARNING naming the component and the error; the rest still registers. Calling `register_all` again is a
no-op for what already succeeded (each component module registers at import, and Python imports once).
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger("rl2f_plugin")

#: Modules whose import registers a component with verl or with rl2f's registries, in order.
#: (the CPU platform must come before anything that resolves verl's platform at import time).
COMPONENT_MODULES: tuple[str, ...] = (
    "rl2f_plugin.cpu",
    "rl2f_plugin.tasks",
    "rl2f_plugin.agent_loops",
    "rl2f_plugin.trainer",
)

#: component module -> "ExcType: message" for components that failed to register in this process.
REGISTRATION_ERRORS: dict[str, str] = {}
_DONE: set[str] = set()


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
            logger.warning("rl2f: failed to register %s: %s: %s", module, type(exc).__name__, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
        else:
            _DONE.add(module)
            REGISTRATION_ERRORS.pop(module, None)
    return dict(REGISTRATION_ERRORS)
