"""The ``cpu`` platform for verl's PlatformRegistry (chosen with ``VERL_PLATFORM=cpu``).

verl 0.9.1 resolves its platform once per process (``verl.plugin.platform.get_platform``) and routes every
device call through it (``verl.utils.device``). This platform makes those calls mean "the host CPU":

* ``device_name`` is ``"cpu"`` and ``current_device()`` returns the string ``"cpu"``. verl's
  ``get_device_id()`` is ``get_platform().current_device()``, and its ~20 FSDP/engine call sites use the result
  as a torch device (``.to(get_device_id())``, ``torch.device(get_device_id())``, ``device_id=``). Returning
  ``"cpu"`` there is the general fix: no call site needs patching (an index ``0`` would mean ``cuda:0``).
* ``device_module`` is a small namespace standing in for ``torch.cuda``: streams/events/synchronize come from
  ``torch.cpu``; cache/allocator calls are no-ops; the memory counters report this process's resident set size
  (current and peak), so verl's ``perf/max_memory_allocated_gb`` and memory logs are meaningful on CPU.
* ``communication_backend_name()`` is ``gloo``; IPC is unsupported.
* ``ray_resource_name()`` is ``"GPU"``: verl's resource pool always places workers on accelerator bundles
  (``use_gpu=True``), so a CPU run declares *logical* GPUs to Ray (``ray_kwargs.ray_init.num_gpus``, one per
  training process); no CUDA is ever touched because this platform never calls ``torch.cuda``.
* It is never auto-detected (``is_platform_available`` is False): only ``VERL_PLATFORM=cpu`` selects it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import types
from typing import Any, Callable, Optional

import torch

from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

PLATFORM_NAME = "cpu"


def _psutil_bytes(read: Callable[[Any], int]) -> int:
    """``read(psutil)`` as an int; 0 when psutil is missing or fails."""
    try:
        import psutil

        return int(read(psutil))
    except Exception:  # noqa: BLE001
        return 0


def _rss_bytes() -> int:
    return _psutil_bytes(lambda psutil: psutil.Process(os.getpid()).memory_info().rss)


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _total_memory_bytes() -> int:
    return _psutil_bytes(lambda psutil: psutil.virtual_memory().total)


def _available_memory_bytes() -> int:
    return _psutil_bytes(lambda psutil: psutil.virtual_memory().available)


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _make_device_module() -> types.SimpleNamespace:
    """A ``torch.cuda``-shaped namespace for the host CPU (what verl calls through ``get_torch_device()``)."""
    cpu = torch.cpu
    return types.SimpleNamespace(
        __name__="rl2f_plugin.cpu.device_module",
        is_available=lambda: True,
        is_initialized=lambda: True,
        device_count=lambda: 1,
        current_device=lambda: PLATFORM_NAME,
        set_device=_noop,
        get_device_name=lambda *a, **k: "cpu",
        get_device_properties=lambda *a, **k: types.SimpleNamespace(name="cpu", total_memory=_total_memory_bytes()),
        synchronize=lambda *a, **k: cpu.synchronize(),
        Stream=cpu.Stream,
        Event=getattr(cpu, "Event", None),
        current_stream=lambda *a, **k: cpu.current_stream(),
        stream=cpu.stream,
        manual_seed=torch.manual_seed,
        manual_seed_all=torch.manual_seed,
        get_rng_state=lambda *a, **k: torch.get_rng_state(),
        set_rng_state=lambda state, *a, **k: torch.set_rng_state(state),
        empty_cache=_noop,
        ipc_collect=_noop,
        set_per_process_memory_fraction=_noop,
        reset_peak_memory_stats=_noop,
        memory_allocated=lambda *a, **k: _rss_bytes(),
        memory_reserved=lambda *a, **k: _rss_bytes(),
        max_memory_allocated=lambda *a, **k: _peak_rss_bytes(),
        max_memory_reserved=lambda *a, **k: _peak_rss_bytes(),
        mem_get_info=lambda *a, **k: (_available_memory_bytes(), _total_memory_bytes()),
    )


CPU_DEVICE_MODULE = _make_device_module()


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl platform for training and rollout on the host CPU (gloo, fp32, no CUDA)."""

    @property
    def device_name(self) -> str:
        return PLATFORM_NAME

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.SimpleNamespace:
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return False  # never auto-detected: VERL_PLATFORM=cpu selects it

    def current_device(self) -> str:  # type: ignore[override]
        return PLATFORM_NAME

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        torch.cpu.synchronize()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return (None, None)

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "RL2F_CPU_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def cpu_platform_selected() -> bool:
    """True when this process runs (or will run) verl on the ``cpu`` platform."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME
