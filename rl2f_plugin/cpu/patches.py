"""Small, named, version-guarded runtime adjustments of verl 0.9.1 for the CPU platform.

Each entry in `PATCHES` is applied lazily, right after the verl module it touches is first imported (a post-import
hook, see `when_imported`), so importing rl2f does not pull heavy verl modules into every Ray process. Each patch
first calls `require_verl_version`, which raises on any verl other than the one the patch was written against.

* ``gloo_default_backend`` (patch of ``verl.utils.distributed.initialize_global_process_group_ray``): verl builds
  the default backend string ``f"cpu:gloo,{device}:{backend}"``; with device ``cpu`` that is
  ``"cpu:gloo,cpu:gloo"``, which torch rejects ("Duplicate device type cpu"). On the cpu platform the default
  becomes ``"gloo"``; an explicit ``backend=`` and every other platform are left untouched. Every training
  worker calls this function first, so on the cpu platform it also sets torch's intra-op thread count to
  ``RL2F_CPU_TRAIN_THREADS`` (default: all cores): Ray starts actors with ``OMP_NUM_THREADS=1``, which made
  the actor update ~2x slower on 2 cores.
* ``preflight_before_ray`` (patch of ``verl.utils.device.auto_set_device``): ``verl.trainer.main_ppo.main``
  calls it first with the composed config, before ``ray.init``; the wrapper runs the original, then
  `rl2f_plugin.preflight.run_preflight` on training configs, so a missing model or dataset, an unknown task or a
  GPU-only option on CPU stops the run with one line saying what to change (``RL2F_PREFLIGHT=0`` disables).
  verl loads rl2f while ``verl/__init__`` runs, before ``main_ppo`` binds the name, so main_ppo gets the wrapper.
* ``fsdp_engines_on_cpu`` (no patch, public API): verl registers ``FSDPEngineWithLMHead`` /
  ``FSDPEngineWithValueHead`` for devices cuda and npu only; once ``verl.workers.engine.fsdp.transformer_impl``
  is imported, they are also registered for device ``cpu`` through ``EngineRegistry.register``.
* ``packed_attention`` (no patch, transformers' public ``AttentionInterface``): when verl's FSDP engine module is
  imported, ``attn_implementation=rl2f_packed_sdpa`` is registered with transformers (`rl2f_plugin.cpu.
  packed_attention`: attention over the packed rows of verl's remove-padding path without flash-attn).
"""

from __future__ import annotations

import functools
import importlib.abc
import logging
import sys
import threading
from typing import Callable

logger = logging.getLogger("rl2f_plugin.cpu")

#: The verl version these patches were written against and tested with.
SUPPORTED_VERL_VERSION = "0.9.1"


class VerlVersionError(RuntimeError):
    pass


def require_verl_version(patch_name: str, version: str | None = None) -> None:
    """Raise `VerlVersionError` unless verl is exactly `SUPPORTED_VERL_VERSION`."""
    if version is None:
        import verl

        version = getattr(verl, "__version__", None)
    if version != SUPPORTED_VERL_VERSION:
        raise VerlVersionError(
            f"rl2f CPU patch '{patch_name}' targets verl=={SUPPORTED_VERL_VERSION} but verl {version} is installed: "
            f"install verl=={SUPPORTED_VERL_VERSION} or update rl2f_plugin/cpu/patches.py"
        )


# --- post-import hooks -------------------------------------------------------------------------------------
_HOOKS: dict[str, list[Callable]] = {}
_HOOK_LOCK = threading.RLock()


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Runs callbacks right after a watched module has executed (before the importer gets it back)."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original_exec = loader.exec_module

        def exec_module(module, _orig=original_exec, _name=fullname):
            _orig(module)
            _run_hooks(_name, module)

        loader.exec_module = exec_module
        return spec


_FINDER = _PostImportFinder()


def _run_hooks(name: str, module) -> None:
    with _HOOK_LOCK:
        callbacks = _HOOKS.pop(name, [])
    for cb in callbacks:
        cb(module)


def when_imported(module_name: str, callback: Callable) -> None:
    """Call ``callback(module)`` once `module_name` is imported (now, if it already is)."""
    module = sys.modules.get(module_name)
    if module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False) is False:
        callback(module)
        return
    with _HOOK_LOCK:
        _HOOKS.setdefault(module_name, []).append(callback)
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)


# --- the patches -------------------------------------------------------------------------------------------
APPLIED: dict[str, bool] = {}


TRAIN_THREADS_ENV = "RL2F_CPU_TRAIN_THREADS"


def _set_train_threads() -> int:
    import os

    import torch

    threads = int(os.environ.get(TRAIN_THREADS_ENV, "0") or 0) or (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def _wrap(module, attr: str, name: str, make_wrapper: Callable[[Callable], Callable]) -> None:
    """Replace ``module.attr`` with ``make_wrapper(original)``, tagged with the patch `name` and the original
    (``__rl2f_patch__``, ``__wrapped_original__``); a function already wrapped by this patch is left alone."""
    require_verl_version(name)
    original = getattr(module, attr)
    if getattr(original, "__rl2f_patch__", None) == name:
        return
    wrapper = functools.wraps(original)(make_wrapper(original))
    wrapper.__rl2f_patch__ = name
    wrapper.__wrapped_original__ = original
    setattr(module, attr, wrapper)
    APPLIED[name] = True


def patch_gloo_default_backend(distributed_module) -> None:
    """See module docstring: ``gloo_default_backend``."""

    def make_wrapper(original):
        def initialize_global_process_group_ray(timeout_second=None, backend=None):
            if backend is None:
                from verl.utils.device import get_device_name

                if get_device_name() == "cpu":
                    backend = "gloo"
                    _set_train_threads()
            return original(timeout_second=timeout_second, backend=backend)

        return initialize_global_process_group_ray

    _wrap(distributed_module, "initialize_global_process_group_ray", "gloo_default_backend", make_wrapper)


def register_fsdp_engines_on_cpu(transformer_impl_module) -> None:
    """See module docstring: ``fsdp_engines_on_cpu``."""
    name = "fsdp_engines_on_cpu"
    require_verl_version(name)
    from verl.workers.engine.base import EngineRegistry

    for model_type, cls in (
        ("language_model", transformer_impl_module.FSDPEngineWithLMHead),
        ("value_model", transformer_impl_module.FSDPEngineWithValueHead),
    ):
        registry = EngineRegistry._engines.get(model_type, {})
        missing = [b for b in ("fsdp", "fsdp2") if "cpu" not in registry.get(b, {})]
        if missing:
            EngineRegistry.register(model_type=model_type, backend=missing, device="cpu")(cls)
    APPLIED[name] = True


def register_packed_attention(transformer_impl_module) -> None:
    """See module docstring: ``packed_attention``."""
    name = "packed_attention"
    require_verl_version(name)
    from . import packed_attention

    packed_attention.register()
    APPLIED[name] = True


def patch_preflight_before_ray(device_module) -> None:
    """See module docstring: ``preflight_before_ray``."""

    def make_wrapper(original):
        def auto_set_device(config) -> None:
            original(config)
            from rl2f_plugin import preflight

            if preflight.enabled() and preflight.is_training_config(config):
                preflight.run_preflight(config)

        return auto_set_device

    _wrap(device_module, "auto_set_device", "preflight_before_ray", make_wrapper)


#: patch name -> (verl module it needs, function applying it)
PATCHES: dict[str, tuple[str, Callable]] = {
    "preflight_before_ray": ("verl.utils.device", patch_preflight_before_ray),
    "gloo_default_backend": ("verl.utils.distributed", patch_gloo_default_backend),
    "fsdp_engines_on_cpu": ("verl.workers.engine.fsdp.transformer_impl", register_fsdp_engines_on_cpu),
    "packed_attention": ("verl.workers.engine.fsdp.transformer_impl", register_packed_attention),
}


def install() -> None:
    """Arrange for every patch to apply when (or now, if) its module is imported. Checks the verl version now."""
    require_verl_version("install")
    for patch_name, (module_name, fn) in PATCHES.items():
        when_imported(module_name, _logged(patch_name, fn))


def _logged(patch_name: str, fn: Callable) -> Callable:
    def apply(module):
        try:
            fn(module)
        except Exception:
            logger.error("rl2f: CPU patch %s failed on %s", patch_name, module.__name__)
            raise

    return apply
