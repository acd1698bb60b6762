"""The CPU rollout's continuous-batching engine (rl2f_plugin.cpu.engine) against transformers' own generation.

The model is a tiny random Llama built in-process (no download). References are computed by an independent path:
a second copy of the model with transformers' ``eager`` attention, generating one prompt at a time.
"""

from __future__ import annotations

import threading

import pytest
import torch

from rl2f_plugin.cpu.engine import MIN_REUSED_PREFIX, ContinuousBatcher, PrefixCache, SamplingParams, additive_mask
from rl2f_plugin.cpu.rollout import HFGenerator

EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    path = tmp_path_factory.mktemp("tiny_llama_engine")
    LlamaForCausalLM(cfg).save_pretrained(path)
    GenerationConfig(eos_token_id=EOS, pad_token_id=PAD, bos_token_id=1).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def _engine(path, **kw) -> ContinuousBatcher:
    return HFGenerator(path, dtype=torch.float32, **kw).engine


def _greedy_ref(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=PAD, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def _logprobs_ref(model, prompt, ids):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0].float()
    return torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(1, torch.tensor(ids)[:, None])[:, 0]


PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [11, 12], [20, 21, 22, 23], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40],
           [41, 42, 43]]


def test_rows_joining_a_running_batch_decode_exactly_like_single_generation(tiny_model_dir, reference):
    # max_batch 2 with 5 prompts of different lengths and budgets: rows join and leave while others run
    engine = _engine(tiny_model_dir, max_batch=2)
    budgets = [7, 3, 9, 5, 4]
    params = [SamplingParams(max_new_tokens=b, temperature=0.0) for b in budgets]
    outs = engine.generate(PROMPTS, params)
    for prompt, budget, out in zip(PROMPTS, budgets, outs):
        assert out.token_ids == _greedy_ref(reference, prompt, budget) and out.finish_reason == "length"
        assert torch.allclose(torch.tensor(out.log_probs), _logprobs_ref(reference, prompt, out.token_ids), atol=1e-4)
    assert engine.stats["max_rows"] == 2


def test_next_turn_reuses_the_cached_conversation_and_matches_a_cold_start(tiny_model_dir, reference):
    engine = _engine(tiny_model_dir)
    sp = SamplingParams(max_new_tokens=6, temperature=0.0)
    first = engine.generate(PROMPTS, sp)
    assert all(c.reused_prompt_tokens == 0 for c in first)
    # the next turn: prompt + reply + feedback tokens, as the didactic loop sends it
    second_prompts = [p + c.token_ids + [50, 51, 52] for p, c in zip(PROMPTS, first)]
    second = engine.generate(second_prompts, sp)
    for prompt, first_out, out in zip(PROMPTS, first, second):
        # everything but the last reply token (sampled, never fed) came from the cache (if worth reusing)
        cached = len(prompt) + len(first_out.token_ids) - 1
        assert out.reused_prompt_tokens == (cached if cached >= MIN_REUSED_PREFIX else 0)
    assert sum(c.reused_prompt_tokens > 0 for c in second) == 4
    cold = _engine(tiny_model_dir).generate(second_prompts, sp)
    assert [c.token_ids for c in second] == [c.token_ids for c in cold]
    for prompt, out in zip(second_prompts, second):
        assert out.token_ids == _greedy_ref(reference, prompt, 6)
        assert torch.allclose(torch.tensor(out.log_probs), _logprobs_ref(reference, prompt, out.token_ids), atol=1e-4)


def test_weight_update_empties_the_prefix_cache(tiny_model_dir):
    gen = HFGenerator(tiny_model_dir, dtype=torch.float32)
    sp = SamplingParams(max_new_tokens=5, temperature=0.0)
    first = gen.engine.generate(PROMPTS[:2], sp)
    assert len(gen.engine.prefix_cache) == 2
    new_state = {k: v + 0.2 * torch.randn_like(v) for k, v in gen.model.state_dict().items()}
    gen.load_weights(list(new_state.items()))
    assert len(gen.engine.prefix_cache) == 0 and gen.weights_version == 1
    follow = [p + c.token_ids + [60] for p, c in zip(PROMPTS[:2], first)]
    after = gen.engine.generate(follow, sp)
    assert all(c.reused_prompt_tokens == 0 and c.weights_version == 1 for c in after)
    fresh = HFGenerator(tiny_model_dir, dtype=torch.float32)
    fresh.load_weights(list(new_state.items()))
    assert [c.token_ids for c in after] == [c.token_ids for c in fresh.engine.generate(follow, sp)]


def test_identical_prompts_are_prefilled_once_and_seeds_make_sampling_reproducible(tiny_model_dir):
    engine = _engine(tiny_model_dir)
    prompts = [PROMPTS[0]] * 4 + [PROMPTS[2]]
    seeded = [SamplingParams(max_new_tokens=8, temperature=1.0, seed=s) for s in (1, 2, 3, 4, 5)]
    outs = engine.generate(prompts, seeded)
    assert engine.stats["prefilled_tokens"] == len(PROMPTS[0]) + len(PROMPTS[2])
    n = len(PROMPTS[0])
    assert [c.reused_prompt_tokens for c in outs] == [0, n, n, n, 0]
    assert len({tuple(c.token_ids) for c in outs[:4]}) > 1  # four samples of one prompt differ
    # a seeded request samples the same tokens alone or in company
    engine.clear_prefix_cache()
    alone = engine.generate([prompts[2]], [seeded[2]])[0]
    assert alone.token_ids == outs[2].token_ids


def test_sampler_follows_the_distribution_and_honours_top_k_top_p():
    engine = ContinuousBatcher.__new__(ContinuousBatcher)  # only the sampler, no model
    engine.stats = {"generated_tokens": 0}
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log().repeat(4000, 1)

    def draw(**kw):
        from rl2f_plugin.cpu.engine import _Row

        rows = [_Row(prompt=[1], params=SamplingParams(max_new_tokens=9, **kw), on_done=lambda r: None, submitted=0.0)
                for _ in range(len(logits))]
        return torch.bincount(engine._sample(logits, rows), minlength=4).float() / len(rows), rows

    torch.manual_seed(0)
    freq, rows = draw(temperature=1.0)
    assert torch.allclose(freq, probs, atol=0.03)  # 4000 draws: standard error < 0.008
    assert rows[0].log_probs[0] == pytest.approx(float(probs[rows[0].generated[0]].log()), abs=1e-5)
    freq, _ = draw(temperature=1.0, top_k=2)
    assert freq[:2].sum() == 0 and torch.allclose(freq[2:], torch.tensor([3 / 7, 4 / 7]), atol=0.03)
    freq, _ = draw(temperature=1.0, top_p=0.5)  # the smallest set reaching 0.5: {0.4, 0.3}
    assert freq[:2].sum() == 0 and freq[2] > 0.3
    freq, _ = draw(temperature=0.0)
    assert freq[3] == 1.0


def greedy_of(engine, prompt, sp):
    fresh = ContinuousBatcher(engine.model, eos_token_ids=[EOS], pad_token_id=PAD)
    return fresh.generate([prompt], sp)[0].token_ids


def test_stop_tokens_end_a_row_and_errors_reach_every_waiting_request(tiny_model_dir):
    engine = _engine(tiny_model_dir)
    greedy = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=8, temperature=0.0))[0].token_ids
    stop = greedy[3]
    out = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=8, temperature=0.0,
                                                       stop_token_ids=frozenset({stop})))[0]
    assert out.token_ids == greedy[: greedy.index(stop) + 1] and out.finish_reason == "stop"
    with pytest.raises(ValueError, match="empty prompt"):
        engine.submit([], SamplingParams(max_new_tokens=2), lambda r: None)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match=r"\[500\] outside the model's vocabulary \(size 96\)"):
        engine.submit([5, 500], SamplingParams(max_new_tokens=2), lambda r: None)
    # a forward pass that fails mid-decode: every running request gets the error, the engine stays usable
    sp = SamplingParams(max_new_tokens=6, temperature=0.0)
    errors = []
    for prompt in PROMPTS[:3]:
        engine.submit(prompt, sp, errors.append)
    with engine.lock:
        engine.step()  # admitted and decoding
    forward = engine.model.forward
    engine.model.forward = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("simulated failure"))
    try:
        with engine.lock:
            engine.step()
    finally:
        engine.model.forward = forward
    assert len(errors) == 3 and all(isinstance(e, RuntimeError) for e in errors) and not engine.busy
    assert engine.generate([PROMPTS[1]], sp)[0].token_ids == greedy_of(engine, PROMPTS[1], sp)


def test_background_thread_serves_requests_from_other_threads_and_reports_idle(tiny_model_dir, reference):
    engine = _engine(tiny_model_dir, max_batch=3)
    idle = threading.Event()
    engine.on_idle = idle.set
    results: dict[int, object] = {}
    done = threading.Event()

    def collect(i):
        def on_done(result):
            results[i] = result
            if len(results) == len(PROMPTS):
                done.set()
        return on_done

    engine.start()
    try:
        for i, prompt in enumerate(PROMPTS):
            engine.submit(prompt, SamplingParams(max_new_tokens=4, temperature=0.0), collect(i))
        assert done.wait(60) and idle.wait(10)
    finally:
        engine.close()
    for i, prompt in enumerate(PROMPTS):
        assert results[i].token_ids == _greedy_ref(reference, prompt, 4)


def test_prefix_cache_is_bounded_and_finds_the_longest_prefix():
    cache = PrefixCache(max_tokens=10)
    kv = lambda n: [(torch.zeros(1, n, 2), torch.zeros(1, n, 2))]  # noqa: E731
    cache.put([1, 2, 3], kv(3))
    cache.put([1, 2, 3, 4, 5, 6], kv(6))
    n, got = cache.longest_prefix(torch.tensor([1, 2, 3, 4, 9]))
    assert n == 4 and got[0][0].shape == (1, 4, 2)
    n, _ = cache.longest_prefix(torch.tensor([1, 2, 3]))
    assert n == 2  # one token is always left to prefill
    cache.put([7, 8, 9], kv(3))  # 12 tokens > 10: the least recently used entry goes
    assert cache.tokens <= 10 and len(cache) == 2


def test_additive_mask_is_causal_over_the_new_tokens_and_hides_padding():
    mask = additive_mask(torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]), q_len=2)
    allowed = mask[:, 0] == 0
    assert allowed.tolist() == [[[False, True, True, False], [False, True, True, True]],
                                [[True, True, True, False], [True, True, True, True]]]


# --- the rollout's dtype on machines with and without native bf16 -------------------------------------------------
# The CPU probe is mocked (this machine's /proc/cpuinfo and torch's capability are what they are); the environment
# variables are the real ones torch and oneDNN read, so the AVX2 cases are what an AVX2-only machine looks like.
AVX512_BF16_FLAGS = "flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16\n"
AVX2_FLAGS = "flags\t\t: fpu sse sse2 avx avx2 fma\n"


@pytest.mark.parametrize("flags, capability, onednn_isa, expected", [
    (AVX512_BF16_FLAGS, "AVX512", None, torch.bfloat16),           # native bf16: decode in bf16
    (AVX2_FLAGS, "AVX2", None, torch.float32),                     # AVX2-only machine: bf16 would be emulated
    (AVX512_BF16_FLAGS, "AVX2", None, torch.float32),              # ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU
    (AVX512_BF16_FLAGS, "AVX512", "AVX2", torch.float32),          # ONEDNN_MAX_CPU_ISA=AVX2
    (AVX512_BF16_FLAGS, "AVX512", "AVX512_CORE", torch.float32),   # oneDNN capped below its bf16 ISA
    (AVX512_BF16_FLAGS, "AVX512", "AVX512_CORE_BF16", torch.bfloat16),
    ("Features\t: fp asimd bf16\n", "DEFAULT", None, torch.bfloat16),  # Arm with BF16
], ids=["avx512-bf16", "avx2-only", "aten-avx2", "onednn-avx2", "onednn-avx512-core", "onednn-bf16", "arm-bf16"])
def test_rollout_decodes_bf16_only_where_torch_runs_it_natively(monkeypatch, tmp_path, flags, capability, onednn_isa,
                                                                 expected):
    import builtins

    from rl2f_plugin.cpu import rollout

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(flags)
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open",
                        lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if onednn_isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_isa)
    assert rollout.resolve_dtype("bfloat16") == expected
    assert rollout.resolve_dtype("float32") == torch.float32  # an explicit fp32 is always kept
