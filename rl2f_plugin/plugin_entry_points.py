"""Loading third-party extensions from an entry-point group (``rl2f.tasks``, ``rl2f.teachers``): each entry point
is imported once per process; one that fails to import is logged as a warning naming it, and never stops the
others."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

logger = logging.getLogger("rl2f_plugin")

_LOADED: set[str] = set()


def load_entry_points(group: str) -> Iterator[tuple[str, Any]]:
    """(name, loaded target) of every entry point of `group`, the first time `group` is asked for; then nothing."""
    if group in _LOADED:
        return
    _LOADED.add(group)
    for ep in entry_points(group=group):
        try:
            target = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
            logger.warning("rl2f: could not load %s plugin %r (%s): %s: %s", group, ep.name, ep.value,
                           type(exc).__name__, exc)
            continue
        yield ep.name, target
