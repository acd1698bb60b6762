"""Checks of a ``main_ppo`` config that stop a run *before Ray starts*, with one line saying what to change.

Checked (each failure is one `PreflightError` whose message names the config key and the fix):

* the model: ``actor_rollout_ref.model.path`` must be an existing Hugging Face folder (``config.json``) when it is a
  local path; on the cpu platform it must be local (hub ids are only accepted when the folder is not needed);
* the data: every local file in ``data.train_files`` / ``data.val_files`` must exist, and when the run uses rl2f
  (its reward functions or an ``rl2f_*`` agent loop) every row's task must be a registered rl2f task, with a
  ground truth and a prompt (`rl2f_plugin.data_validation`, which names file, row and field);
* GPU-only options on ``VERL_PLATFORM=cpu``: rollout engines vllm/sglang/trtllm, flash-attention, remove-padding,
  FSDP1, too few logical GPUs for Ray; and a recipe meant for the cpu platform (``trainer.device=cpu``) launched
  without ``VERL_PLATFORM=cpu``;
* on GPU (``trainer.device=cuda``), the packages the config needs and ``pip install -e ".[gpu]"`` does not
  always bring: vLLM / SGLang for ``rollout.name``, flash-attn for ``attn_implementation=flash_attention_2``
  (verl's default when the config sets none);
* rl2f's own registration, when the run uses rl2f: a component that failed to import in this process (its
  traceback is printed), or a ``default_agent_loop`` that is not registered.

Before checking, a leading ``~`` in the config's local paths (data files, model, checkpoint folder) is expanded in
place: verl opens them as given (its dataset would read ``<cwd>/~/...`` inside the TaskRunner, after these checks
passed).

How it runs: `rl2f_plugin.cpu.patches` wraps ``verl.utils.device.auto_set_device``, the first thing
``verl.trainer.main_ppo.main`` does with the composed config (before ``ray.init``), to call `run_preflight`
on configs that have ``actor_rollout_ref`` and ``data``. ``RL2F_PREFLIGHT=0`` turns it off. It can also be called
directly: ``python -m rl2f_plugin.preflight --config-path=$PWD/recipes --config-name=rl2f_cpu [overrides]``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Any

PREFLIGHT_ENV = "RL2F_PREFLIGHT"
GPU_ONLY_ROLLOUTS = ("vllm", "sglang", "trtllm")
GPU_ONLY_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attn", "kernels-community/flash-attn")
#: verl's attention when ``override_config.attn_implementation`` is unset (``verl/workers/config/model.py``).
VERL_DEFAULT_ATTENTION = "flash_attention_2"
#: rollout.name / attn_implementation -> (module it imports, how to install it). The versions are the ones
#: ``verl[vllm]==0.9.1`` pins (torch 2.11.0, CUDA 13.0 wheels); see the README's Install section.
GPU_PACKAGES = {
    "vllm": ("vllm", 'pip install -e ".[gpu]" (verl[vllm]==0.9.1: vllm 0.24.0, torch 2.11.0)'),
    "sglang": ("sglang", 'pip install "verl[sglang]==0.9.1"'),
    "flash_attention_2": ("flash_attn", "pip install flash-attn==2.8.3 --no-build-isolation (after torch; or a "
                                        "prebuilt flash-attn wheel for your torch/CUDA/Python)"),
}
#: Config keys holding local paths that verl opens without expanding ``~``.
HOME_PATH_KEYS = ("data.train_files", "data.val_files", "actor_rollout_ref.model.path",
                  "actor_rollout_ref.model.tokenizer_path", "critic.model.path", "critic.model.tokenizer_path",
                  "trainer.default_local_dir", "trainer.validation_data_dir", "trainer.rollout_data_dir")
_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")  # hdfs://, s3://, gs://, pkg://, file:// ...


class PreflightError(SystemExit):
    """Raised to stop the run; its message is the single line to show. (A SystemExit: Hydra lets it through
    and Python prints only the message, exit status 1.)"""

    def __init__(self, message: str):
        self.message = message
        super().__init__(f"rl2f preflight: {message}")


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
        except Exception:  # noqa: BLE001 - missing mandatory values (???) and the like
            return default
    return default if node is None else node


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _is_local_path(path: str) -> bool:
    if _REMOTE.match(path):
        return path.startswith("file://")
    return path.startswith(("/", "~", "./", "../")) or os.path.exists(os.path.expanduser(path))


def _cpu_platform() -> bool:
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"


def uses_rl2f(config: Any) -> bool:
    """Whether rows are scored/rolled out by rl2f (so their task must be a registered rl2f task)."""
    reward_path = str(_get(config, "reward.custom_reward_function.path", "") or "")
    loop = str(_get(config, "actor_rollout_ref.rollout.agent.default_agent_loop", "") or "")
    mode = str(_get(config, "trainer.v1.trainer_mode", "") or "")
    return "reward_fns" in reward_path or "rl2f" in reward_path or loop.startswith("rl2f") or mode.startswith("rl2f")


def expand_home_paths(config: Any) -> list[str]:
    """Replace a leading ``~`` in the values of `HOME_PATH_KEYS` by the home folder, in place (verl does not expand
    it); return the keys changed."""
    from omegaconf import OmegaConf

    changed = []
    for key in HOME_PATH_KEYS:
        parent, _, leaf = key.rpartition(".")
        value = _get(config, key)
        if value is None or OmegaConf.is_interpolation(_get(config, parent), leaf):
            continue  # an interpolation follows the key it names, expanded on its own
        values = _as_list(value)
        expanded = [os.path.expanduser(v) if v.startswith("~") else v for v in values]
        if expanded != values:
            OmegaConf.update(config, key, expanded[0] if isinstance(value, str) else expanded, merge=False)
            changed.append(key)
    return changed


def check_model(config: Any) -> None:
    path = _get(config, "actor_rollout_ref.model.path")
    if not path:
        raise PreflightError("actor_rollout_ref.model.path is not set: pass actor_rollout_ref.model.path=<HF model folder>")
    path = str(path)
    hint = ("run `python -m rl2f_plugin.cpu_model` to build the default SmolLM2-135M-Instruct folder, or pass "
            "actor_rollout_ref.model.path=<HF model folder>")
    if _is_local_path(path) or _cpu_platform():
        local = os.path.expanduser(path[len("file://"):] if path.startswith("file://") else path)
        if _REMOTE.match(path) and not path.startswith("file://"):
            return
        if not os.path.isdir(local):
            where = "does not exist" if not os.path.exists(local) else "is not a folder"
            extra = " (on VERL_PLATFORM=cpu the model must be a local folder)" if _cpu_platform() and not _is_local_path(path) else ""
            raise PreflightError(f"actor_rollout_ref.model.path={path} {where}{extra}: {hint}")
        if not os.path.isfile(os.path.join(local, "config.json")):
            raise PreflightError(f"actor_rollout_ref.model.path={path} has no config.json (not a Hugging Face model folder): {hint}")


def check_data(config: Any) -> None:
    for key in ("data.train_files", "data.val_files"):
        for f in _as_list(_get(config, key)):
            if not _is_local_path(f):
                continue
            local = os.path.expanduser(f[len("file://"):] if f.startswith("file://") else f)
            if not os.path.isfile(local):
                raise PreflightError(
                    f"{key}: {f} does not exist: create it (e.g. python examples/data_preprocess/reasoning_gym_data.py "
                    f"--out-dir <dir>) or pass {key}=<parquet file>")
    if not uses_rl2f(config):
        return
    from .data_validation import DatasetValidationError, validate_files

    prompt_key = str(_get(config, "data.prompt_key", "prompt") or "prompt")
    for key in ("data.train_files", "data.val_files"):
        files = [os.path.expanduser(f) for f in _as_list(_get(config, key)) if _is_local_path(f)]
        if not files:
            continue
        try:
            validate_files(files, prompt_key=prompt_key, max_errors=1)
        except DatasetValidationError as exc:
            first = exc.errors[0] if exc.errors else str(exc)
            more = f" (+{len(exc.errors) - 1} more; run python -m rl2f_plugin.data_validation {' '.join(files)})" if len(exc.errors) > 1 else ""
            raise PreflightError(f"{key}: {first}{more}") from None


def check_platform_options(config: Any) -> None:
    cpu = _cpu_platform()
    device = str(_get(config, "trainer.device", "") or "")
    if device == "cpu" and not cpu:
        raise PreflightError("this config sets trainer.device=cpu but VERL_PLATFORM is not 'cpu': "
                             "run with VERL_PLATFORM=cpu in the environment (e.g. VERL_PLATFORM=cpu python -m verl.trainer.main_ppo ...)")
    if not cpu:
        return
    rollout = str(_get(config, "actor_rollout_ref.rollout.name", "") or "")
    if rollout in GPU_ONLY_ROLLOUTS:
        raise PreflightError(f"actor_rollout_ref.rollout.name={rollout} needs a GPU: on VERL_PLATFORM=cpu use "
                             "actor_rollout_ref.rollout.name=hf (rl2f's transformers rollout)")
    for key in ("actor_rollout_ref.model.override_config.attn_implementation", "actor_rollout_ref.model.attn_implementation",
                "critic.model.override_config.attn_implementation"):
        attn = str(_get(config, key, "") or "")
        if attn in GPU_ONLY_ATTENTION:
            raise PreflightError(f"{key}={attn} needs a GPU (flash-attn): on VERL_PLATFORM=cpu set "
                                 "+actor_rollout_ref.model.override_config.attn_implementation=sdpa")
    if str(_get(config, "actor_rollout_ref.model.override_config.attn_implementation", "") or "") == "":
        raise PreflightError("on VERL_PLATFORM=cpu verl would default to flash_attention_2: set "
                             "+actor_rollout_ref.model.override_config.attn_implementation=sdpa")
    attn = str(_get(config, "actor_rollout_ref.model.override_config.attn_implementation", "") or "")
    if bool(_get(config, "actor_rollout_ref.model.use_remove_padding", False)) and attn != "rl2f_packed_sdpa":
        raise PreflightError(f"actor_rollout_ref.model.use_remove_padding=true with attn_implementation={attn} attends "
                             "over the whole packed micro-batch on CPU (no flash-attn varlen): set "
                             "actor_rollout_ref.model.override_config.attn_implementation=rl2f_packed_sdpa "
                             "(or actor_rollout_ref.model.use_remove_padding=false)")
    for key in ("actor_rollout_ref.actor.strategy", "actor_rollout_ref.actor.fsdp_config.strategy",
                "actor_rollout_ref.ref.fsdp_config.strategy"):
        strategy = str(_get(config, key, "") or "")
        if strategy and strategy != "fsdp2":
            raise PreflightError(f"{key}={strategy} does not run on CPU (FSDP1 needs an accelerator): on VERL_PLATFORM=cpu "
                                 f"set {key}=fsdp2")
    want = int(_get(config, "trainer.n_gpus_per_node", 1) or 1) * int(_get(config, "trainer.nnodes", 1) or 1)
    have = _get(config, "ray_kwargs.ray_init.num_gpus")
    if have is None or float(have) < want:
        raise PreflightError(f"Ray needs {want} logical GPU(s) for verl's worker placement on CPU: set "
                             f"+ray_kwargs.ray_init.num_gpus={want} (got {have})")


def check_gpu_packages(config: Any) -> None:
    """On GPU (``trainer.device=cuda``): every package the rollout engine and the attention need is importable."""
    if _cpu_platform() or str(_get(config, "trainer.device", "cuda") or "cuda") != "cuda":
        return
    needs = []  # (where in the config, module, how to install)
    rollout = str(_get(config, "actor_rollout_ref.rollout.name", "") or "")
    if rollout in GPU_PACKAGES:
        needs.append((f"actor_rollout_ref.rollout.name={rollout}", *GPU_PACKAGES[rollout]))
    attn_key = "actor_rollout_ref.model.override_config.attn_implementation"
    attn = str(_get(config, attn_key, "") or "")
    effective = attn or VERL_DEFAULT_ATTENTION
    if effective in GPU_PACKAGES:
        where = f"{attn_key}={attn}" if attn else f"{attn_key} unset (verl's default: {effective})"
        module, how = GPU_PACKAGES[effective]
        needs.append((where, module, f"{how}; or run without it: {'' if attn else '+'}{attn_key}=sdpa"))
    missing = [f"{where} needs the '{module}' package, not installed: {how}"
               for where, module, how in needs if not _installed(module)]
    if missing:
        raise PreflightError("; ".join(missing))


def _installed(module: str) -> bool:
    if module == "flash_attn" and importlib.util.find_spec("kernels") is not None:
        return True  # transformers then loads flash-attn from the Hugging Face kernels hub instead
    return importlib.util.find_spec(module) is not None


def check_registration(config: Any) -> None:
    """A run that uses rl2f: every rl2f component registered in this process, and the default agent loop exists."""
    if not uses_rl2f(config):
        return
    from ._registration import REGISTRATION_ERRORS, REGISTRATION_TRACEBACKS

    if REGISTRATION_ERRORS:
        for module, trace in REGISTRATION_TRACEBACKS.items():
            print(f"rl2f: {module} failed to register:\n{trace}", file=sys.stderr)
        failed = "; ".join(f"{module} ({error})" for module, error in REGISTRATION_ERRORS.items())
        raise PreflightError(f"rl2f failed to register {failed}; traceback above. Fix it, then check with "
                             "`python -m rl2f_plugin info`")
    loop = str(_get(config, "actor_rollout_ref.rollout.agent.default_agent_loop", "") or "")
    if not loop or _get(config, "actor_rollout_ref.rollout.agent.agent_loop_config_path"):
        return  # loops from a config file are registered by verl's worker
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    if loop not in _agent_loop_registry:
        raise PreflightError(f"actor_rollout_ref.rollout.agent.default_agent_loop={loop} is not a registered agent "
                             f"loop; registered: {', '.join(sorted(_agent_loop_registry))}")


CHECKS = (check_platform_options, check_gpu_packages, check_registration, check_model, check_data)


def run_preflight(config: Any) -> None:
    """Expand ``~`` in the config's local paths (`expand_home_paths`), then raise `PreflightError` (one line: what
    to change) on the first problem found; return None if all is well."""
    expand_home_paths(config)
    for check in CHECKS:
        check(config)


def is_training_config(config: Any) -> bool:
    return _get(config, "actor_rollout_ref") is not None and _get(config, "data") is not None


def enabled() -> bool:
    return os.environ.get(PREFLIGHT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def main(argv: list[str] | None = None) -> int:
    """``python -m rl2f_plugin.preflight --config-path=DIR --config-name=NAME [overrides...]``"""
    import argparse

    from hydra import compose, initialize_config_dir

    p = argparse.ArgumentParser(description="Check a main_ppo config the way rl2f does before Ray starts.")
    p.add_argument("--config-path", required=True)
    p.add_argument("--config-name", required=True)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    with initialize_config_dir(config_dir=os.path.abspath(a.config_path), version_base=None):
        cfg = compose(config_name=a.config_name, overrides=a.overrides)
    try:
        run_preflight(cfg)
    except PreflightError as exc:
        print(exc.code, file=sys.stderr)
        return 1
    print("rl2f preflight: OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
