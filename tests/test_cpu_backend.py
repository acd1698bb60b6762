"""Unit tests of rl2f's CPU backend for verl 0.9.1 (rl2f_plugin.cpu): platform, patches, hf rollout.

Real verl classes throughout (PlatformRegistry, EngineRegistry, RolloutReplicaRegistry, RolloutConfig, the real
``initialize_global_process_group_ray``); the model is a tiny random Llama built in-process (no download).
verl caches its platform per process, so tests that need ``VERL_PLATFORM=cpu`` run in a fresh subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import rl2f_plugin  # noqa: F401  (registers the backend, as verl's entry point does)
from rl2f_plugin.cpu import patches
from rl2f_plugin.cpu.verl_platform import PlatformCPU
from rl2f_plugin.cpu.rollout import HFGenerator, HFRolloutServer, server_actor_name, weights_checksum


def _run_py(code: str, timeout: int = 120, **env) -> str:
    full_env = {**os.environ, "VERL_PLATFORM": "cpu", **env}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    assert proc.returncode == 0, f"subprocess failed:\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"
    return proc.stdout


# ------------------------------------------------------------------ platform -----------------------------------
def test_cpu_platform_is_registered_and_behaves_like_a_cpu():
    from verl.plugin.platform.platform_manager import PlatformRegistry

    assert PlatformRegistry.get("cpu") is PlatformCPU
    p = PlatformCPU()
    assert p.device_name == "cpu" and p.communication_backend_name() == "gloo"
    assert p.current_device() == "cpu"  # verl's get_device_id() -> usable as a torch device
    assert torch.zeros(2).to(p.current_device()).device.type == "cpu"
    assert p.is_platform_available(use_smi_check=True) is False  # only VERL_PLATFORM=cpu selects it
    assert p.is_ipc_supported() is False
    dm = p.device_module
    assert dm.max_memory_allocated() > 0 and dm.memory_allocated() > 0  # process RSS, not a fake 0
    free, total = dm.mem_get_info()
    assert 0 < free <= total


def test_verl_platform_env_selects_cpu_everywhere_in_verl():
    out = _run_py("""
        import json, torch
        import verl
        from verl.utils.device import get_device_id, get_device_name, get_nccl_backend, get_torch_device
        from verl.workers.engine import EngineRegistry
        from verl.workers.rollout.replica import RolloutReplicaRegistry
        from verl.workers.rollout.base import get_rollout_class
        t = torch.ones(3).to(get_device_id())
        print(json.dumps({
            "name": get_device_name(), "id": str(get_device_id()), "backend": get_nccl_backend(),
            "tensor_device": str(t.device), "dev": str(torch.device(get_device_id())),
            "engine": EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__,
            "value_engine": EngineRegistry.get_engine_cls("value_model", "fsdp").__name__,
            "replica": RolloutReplicaRegistry.get("hf").__name__,
            "adapter": get_rollout_class("hf", "async").__name__,
            "peak_mem": get_torch_device().max_memory_allocated(),
        }))
    """)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["name"] == "cpu" and got["id"] == "cpu" and got["backend"] == "gloo"
    assert got["tensor_device"] == "cpu" and got["dev"] == "cpu"
    assert got["engine"] == "FSDPEngineWithLMHead" and got["value_engine"] == "FSDPEngineWithValueHead"
    assert got["replica"] == "HFRolloutReplica" and got["adapter"] == "HFServerAdapter"
    assert got["peak_mem"] > 0


# ------------------------------------------------------------------ patches ------------------------------------
def test_version_guard_fails_loudly_on_other_verl(monkeypatch):
    with pytest.raises(patches.VerlVersionError, match=r"gloo_default_backend.*verl==0\.9\.1.*0\.9\.2"):
        patches.require_verl_version("gloo_default_backend", version="0.9.2")
    patches.require_verl_version("gloo_default_backend")  # the installed verl is the supported one

    import verl

    monkeypatch.setattr(verl, "__version__", "0.10.0")
    import types

    fake = types.SimpleNamespace(initialize_global_process_group_ray=lambda timeout_second=None, backend=None: None)
    with pytest.raises(patches.VerlVersionError, match="0.10.0"):
        patches.patch_gloo_default_backend(fake)
    with pytest.raises(patches.VerlVersionError):
        patches.install()


def test_other_verl_version_registers_nothing_and_reports_it():
    """On a verl other than 0.9.1 the CPU backend registers nothing and rl2f reports why (WARNING + errors)."""
    out = _run_py("""
        import json
        import verl                                   # VERL_USE_EXTERNAL_PLUGINS=none: rl2f not loaded yet
        verl.__version__ = "0.10.0"
        import rl2f_plugin
        from verl.plugin.platform.platform_manager import PlatformRegistry
        print(json.dumps({"errors": rl2f_plugin.REGISTRATION_ERRORS, "cpu": PlatformRegistry.get("cpu") is not None}))
    """, VERL_USE_EXTERNAL_PLUGINS="none")
    got = json.loads(out.strip().splitlines()[-1])
    assert got["cpu"] is False
    assert "VerlVersionError" in got["errors"]["rl2f_plugin.cpu"] and "0.10.0" in got["errors"]["rl2f_plugin.cpu"]


def test_gloo_patch_is_applied_and_initialises_a_cpu_process_group():
    out = _run_py("""
        import os, json, torch
        import verl
        import verl.utils.distributed as d
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
        # verl's own function, unpatched, builds "cpu:gloo,cpu:gloo" on the cpu platform and torch refuses it:
        try:
            d.initialize_global_process_group_ray.__wrapped_original__(timeout_second=None)
            original_error = None
        except Exception as e:
            original_error = str(e)
        d.initialize_global_process_group_ray(timeout_second=60)   # what verl's TrainingWorker calls
        print(json.dumps({"patch": d.initialize_global_process_group_ray.__rl2f_patch__,
                          "backend": torch.distributed.get_backend(), "original_error": original_error,
                          "threads": torch.get_num_threads()}))
        torch.distributed.destroy_process_group()
    """, OMP_NUM_THREADS="1", RL2F_CPU_TRAIN_THREADS="2")
    got = json.loads(out.strip().splitlines()[-1])
    assert got["patch"] == "gloo_default_backend"
    assert got["backend"] == "gloo"
    assert got["original_error"] and "Duplicate device type" in got["original_error"]
    assert got["threads"] == 2


def test_when_imported_runs_callback_once_after_import(tmp_path, monkeypatch):
    mod = tmp_path / "rl2f_hook_probe_mod.py"
    mod.write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    patches.when_imported("rl2f_hook_probe_mod", lambda m: seen.append(m.VALUE + 1))
    assert seen == []
    import rl2f_hook_probe_mod  # noqa: F401

    assert seen == [42]
    patches.when_imported("rl2f_hook_probe_mod", lambda m: seen.append("again"))  # already imported: runs now
    assert seen == [42, "again"]
    sys.modules.pop("rl2f_hook_probe_mod", None)


# ------------------------------------------------------------------ hf rollout ---------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    GenerationConfig(eos_token_id=2, pad_token_id=0, bos_token_id=1).save_pretrained(path)
    return str(path)


PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [20, 21, 22, 23]]


def test_generator_batched_greedy_matches_single_and_logprobs_are_real(tiny_model_dir):
    gen = HFGenerator(tiny_model_dir)
    batched = gen.generate_batch(PROMPTS, max_new_tokens=8, temperature=0.0, ignore_eos=True)
    for prompt, (ids, lps, reason) in zip(PROMPTS, batched):
        single_ids, single_lps, _ = gen.generate_batch([prompt], max_new_tokens=8, temperature=0.0, ignore_eos=True)[0]
        assert ids == single_ids and len(ids) == 8 and reason == "length"
        # log-probs are the model's own: recompute them by teacher forcing
        with torch.no_grad():
            logits = gen.model(torch.tensor([prompt + ids])).logits[0].float()
        ref = torch.log_softmax(logits, -1)[len(prompt) - 1 : -1].gather(1, torch.tensor(ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(lps), ref, atol=1e-4)
        assert torch.allclose(torch.tensor(single_lps), ref, atol=1e-4)


def test_generator_stops_at_stop_token_and_respects_budget(tiny_model_dir):
    gen = HFGenerator(tiny_model_dir)
    ids, _, _ = gen.generate_batch([PROMPTS[0]], max_new_tokens=6, temperature=0.0, ignore_eos=True)[0]
    stop = ids[2]
    ids2, lps2, reason = gen.generate_batch([PROMPTS[0]], max_new_tokens=6, temperature=0.0, stop_token_ids=[stop])[0]
    assert ids2[-1] == stop and len(ids2) == ids.index(stop) + 1 and reason == "stop" and len(lps2) == len(ids2)
    sampled = gen.generate_batch(PROMPTS, max_new_tokens=5, temperature=1.0, top_p=0.9, top_k=20, seed=3)
    assert all(1 <= len(r[0]) <= 5 and len(r[0]) == len(r[1]) for r in sampled)


def test_weight_update_changes_generation_and_is_validated(tiny_model_dir):
    gen = HFGenerator(tiny_model_dir)
    before = gen.generate_batch(PROMPTS, max_new_tokens=6, temperature=0.0, ignore_eos=True)
    version, checksum = gen.weights_version, gen.checksum
    # the actor exports HF names; tied embeddings come as both embed_tokens.weight and lm_head.weight
    new_state = {k: v.clone() for k, v in gen.model.state_dict().items()}
    assert "lm_head.weight" in new_state
    torch.manual_seed(1)
    for k in new_state:
        if new_state[k].is_floating_point() and "norm" not in k:
            new_state[k] = new_state[k] + 0.5 * torch.randn_like(new_state[k])
    loaded, _ = gen.load_weights(list(new_state.items()))
    assert loaded == len(new_state)
    assert gen.weights_version == version + 1 and gen.checksum != checksum
    assert gen.checksum == pytest.approx(weights_checksum(new_state.items()))
    after = gen.generate_batch(PROMPTS, max_new_tokens=6, temperature=0.0, ignore_eos=True)
    assert [r[1] for r in after] != [r[1] for r in before]
    with pytest.raises(ValueError, match="model.norm.weight.*shape"):
        gen.load_weights({"model.norm.weight": torch.zeros(3)})
    with pytest.raises(KeyError, match="no_such.weight"):
        gen.load_weights({"no_such.weight": torch.zeros(3)})


def test_server_batches_concurrent_requests_and_tags_weight_version(tiny_model_dir, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from verl.workers.config import RolloutConfig
    from verl.workers.rollout.replica import TokenOutput

    log = tmp_path / "rollout.jsonl"
    monkeypatch.setenv("RL2F_CPU_ROLLOUT_LOG", str(log))
    config = RolloutConfig(name="hf", prompt_length=16, response_length=6, max_num_seqs=8)
    server = HFRolloutServer(config, SimpleNamespace(path=tiny_model_dir), replica_rank=0)
    params = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": True, "ignore_eos": True}

    async def wave():
        return await asyncio.gather(*[server.generate(f"r{i}", prompt_ids=p, sampling_params=dict(params))
                                      for i, p in enumerate(PROMPTS)])

    async def scenario():
        outs1 = await wave()
        # the next turn of conversation 0: its prompt + reply + a feedback token; served from the prefix cache
        turn2 = await server.generate("t2", prompt_ids=PROMPTS[0] + outs1[0].token_ids + [7],
                                      sampling_params=dict(params))
        state = {k: v + 0.3 for k, v in server.gen.model.state_dict().items()}
        status = await server.update_weights(state, global_steps=1)
        outs2 = await wave()
        return outs1, turn2, status, outs2

    outs1, turn2, status, outs2 = asyncio.run(scenario())
    assert all(isinstance(o, TokenOutput) for o in outs1 + outs2)
    assert all(1 <= len(o.token_ids) <= 6 and len(o.log_probs) == len(o.token_ids) for o in outs1 + outs2)
    assert {o.extra_fields["global_steps"] for o in outs1} == {0}
    assert {o.extra_fields["global_steps"] for o in outs2} == {1}
    assert status["weights_version"] == 1
    events = [json.loads(line) for line in log.read_text().splitlines()]
    batches = [e for e in events if e["event"] == "generate_batch"]
    # one generate_batch line per busy period of the engine (where a period ends depends on timing), one request
    # line per request
    assert sum(b["size"] for b in batches) == 7 and batches[-1]["size"] == 3
    requests = [e for e in events if e["event"] == "request"]
    assert sorted(r["log_id"] for r in requests) == [0, 1, 2, 3, 4, 5, 6]
    first = next(r for r in requests if r["request_id"] == "r0")
    second = next(r for r in requests if r["request_id"] == "t2")
    assert second["parent"] == first["log_id"] and first["parent"] is None  # what bench_rollout replays
    assert second["reused_prompt_tokens"] == len(PROMPTS[0]) + len(outs1[0].token_ids) - 1
    # after the weight update the same prompts are prefilled afresh (the cache held old keys/values)
    after = [r for r in requests if r["log_id"] >= 4]
    assert all(r["reused_prompt_tokens"] == 0 and r["weights_version"] == 1 for r in after)
    assert batches[-1]["checksum"] == status["checksum"] != batches[0]["checksum"]
    # token counts per request and per period, so tokens/s can be read off any run's log
    assert sum(r["prompt_tokens"] for r in requests[:3]) == sum(len(p) for p in PROMPTS)
    assert [r["generated_tokens"] for r in after] == [len(o.token_ids) for o in outs2]
    assert batches[-1]["generated_tokens"] == sum(len(o.token_ids) for o in outs2)
    assert batches[-1]["max_prompt_tokens"] == max(len(p) for p in PROMPTS)
    assert all(b["generated_tokens_per_s"] > 0 for b in batches)


def test_server_rejects_prompt_longer_than_context(tiny_model_dir):
    from types import SimpleNamespace

    from verl.workers.config import RolloutConfig

    server = HFRolloutServer(RolloutConfig(name="hf", prompt_length=4, response_length=2, max_model_len=6),
                             SimpleNamespace(path=tiny_model_dir))
    with pytest.raises(ValueError, match="max_model_len=6"):
        asyncio.run(server.generate("x", prompt_ids=list(range(3, 10)), sampling_params={}))
    # without max_model_len the limit is the model's context, not prompt_length + response_length: rl2f's teacher
    # prompts are longer than training prompts; the default budget of a reply is still response_length
    server = HFRolloutServer(RolloutConfig(name="hf", prompt_length=4, response_length=2), SimpleNamespace(path=tiny_model_dir))
    assert server.max_model_len == 256
    out = asyncio.run(server.generate("y", prompt_ids=list(range(3, 20)), sampling_params={"temperature": 0.0}))
    assert 1 <= len(out.token_ids) <= 2


def test_server_actor_names_are_unique_per_kind():
    assert server_actor_name(0) != server_actor_name(0, kind="reward") != server_actor_name(1)


# ------------------------------------------------------------------ preflight ----------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "recipes")


@pytest.fixture(scope="module")
def rg_data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rg_data")
    subprocess.run([sys.executable, os.path.join(REPO, "examples/data_preprocess/reasoning_gym_data.py"),
                    "--generators", "basic_arithmetic", "--train-size", "4", "--test-size", "2", "--seed", "0",
                    "--out-dir", str(out)], check=True, capture_output=True, timeout=300)
    return out


def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=RECIPES, version_base=None):
        return compose(config_name=name, overrides=overrides)


def _good_overrides(model_dir, data_dir) -> list[str]:
    return [f"actor_rollout_ref.model.path={model_dir}", f"data.train_files={data_dir}/train.parquet",
            f"data.val_files={data_dir}/test.parquet"]


@pytest.mark.parametrize("recipe", ["rlvr_cpu", "rl2f_cpu", "rl2f_wm_cpu"])
def test_preflight_accepts_the_cpu_recipes(recipe, tiny_model_dir, rg_data_dir, monkeypatch):
    from rl2f_plugin.preflight import run_preflight

    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    run_preflight(_compose(recipe, _good_overrides(tiny_model_dir, rg_data_dir)))


@pytest.mark.parametrize("override, env_cpu, expected", [
    ("actor_rollout_ref.model.path=/nonexistent/model", True,
     r"actor_rollout_ref\.model\.path=/nonexistent/model does not exist: run `python -m rl2f_plugin\.cpu_model`"),
    ("data.train_files=/nonexistent/train.parquet", True,
     r"data\.train_files: /nonexistent/train\.parquet does not exist"),
    ("actor_rollout_ref.rollout.name=vllm", True, r"rollout\.name=vllm needs a GPU.*rollout\.name=hf"),
    ("actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2", True, r"flash_attention_2 needs a GPU.*sdpa"),
    ("actor_rollout_ref.model.use_remove_padding=true", True, r"use_remove_padding=false"),
    ("actor_rollout_ref.actor.strategy=fsdp", True, r"actor\.strategy=fsdp does not run on CPU.*=fsdp2"),
    ("ray_kwargs.ray_init.num_gpus=0", True, r"\+ray_kwargs\.ray_init\.num_gpus=1"),
    (None, False, r"trainer\.device=cpu but VERL_PLATFORM is not 'cpu'"),
])
def test_preflight_rejects_bad_input_with_one_line(override, env_cpu, expected, tiny_model_dir, rg_data_dir, monkeypatch):
    from rl2f_plugin.preflight import PreflightError, run_preflight

    if env_cpu:
        monkeypatch.setenv("VERL_PLATFORM", "cpu")
    else:
        monkeypatch.delenv("VERL_PLATFORM", raising=False)
    overrides = _good_overrides(tiny_model_dir, rg_data_dir) + ([override] if override else [])
    with pytest.raises(PreflightError) as info:
        run_preflight(_compose("rl2f_cpu", overrides))
    message = str(info.value.code)
    assert "\n" not in message and message.startswith("rl2f preflight: ")
    assert __import__("re").search(expected, message), message


def test_preflight_names_file_row_and_field_of_an_unknown_task(tiny_model_dir, rg_data_dir, tmp_path, monkeypatch):
    import pandas as pd

    from rl2f_plugin.preflight import PreflightError, run_preflight

    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    rows = pd.read_parquet(rg_data_dir / "train.parquet")
    extra = [dict(e) for e in rows["extra_info"]]
    extra[1]["task"] = "no_such_task"
    rows["extra_info"] = extra
    bad = tmp_path / "bad_train.parquet"
    rows.to_parquet(bad)
    overrides = _good_overrides(tiny_model_dir, rg_data_dir) + [f"data.train_files={bad}"]
    with pytest.raises(PreflightError) as info:
        run_preflight(_compose("rl2f_cpu", overrides))
    message = str(info.value.code)
    assert "\n" not in message
    assert "data.train_files" in message and str(bad) in message and "row 1" in message and "no_such_task" in message


def test_preflight_runs_inside_main_ppo_before_ray(tmp_path):
    """verl's real main_ppo with a missing model: exits 1 with our line, and never starts Ray."""
    env = {**os.environ, "VERL_PLATFORM": "cpu", "RAY_ADDRESS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={RECIPES}", "--config-name=rlvr_cpu",
         f"actor_rollout_ref.model.path={tmp_path}/missing_model", f"hydra.run.dir={tmp_path}/hydra"],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("rl2f preflight:")]
    assert len(lines) == 1 and "missing_model does not exist" in lines[0]
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert "ray init kwargs" not in proc.stdout


def test_adapter_streams_actor_weights_to_the_named_server_in_buckets(tiny_model_dir, monkeypatch):
    """verl's hybrid weight sync path: the adapter (in the actor worker) -> Ray object store -> the server actor."""
    from types import SimpleNamespace

    import ray

    from rl2f_plugin.cpu.rollout import HFServerAdapter
    from verl.workers.config import RolloutConfig

    monkeypatch.setenv("RL2F_CPU_SYNC_BUCKET_MB", "0.02")  # ~20 KB buckets -> many chunks for the tiny model
    config = RolloutConfig(name="hf", prompt_length=16, response_length=4)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        server = ray.remote(HFRolloutServer).options(name=server_actor_name(0), num_cpus=0).remote(
            config=config, model_config=SimpleNamespace(path=tiny_model_dir), replica_rank=0)
        before = ray.get(server.ready.remote())
        adapter = HFServerAdapter(config, SimpleNamespace(path=tiny_model_dir), None)
        gen = HFGenerator(tiny_model_dir)
        new_state = [(k, v + 0.25) for k, v in gen.model.state_dict().items()]
        status = asyncio.run(adapter.update_weights(iter(new_state), peft_config=None, global_steps=3))
        assert status["weights_version"] == before["weights_version"] + 1 and status["global_steps"] == 3
        assert status["checksum"] == pytest.approx(weights_checksum(new_state))
        out = ray.get(server.generate.remote("q", prompt_ids=PROMPTS[0], sampling_params={"temperature": 0.0}))
        assert out.extra_fields["global_steps"] == 3
        with pytest.raises(NotImplementedError, match="LoRA"):
            asyncio.run(adapter.update_weights(iter(new_state), peft_config={"r": 8}))
    finally:
        ray.shutdown()
