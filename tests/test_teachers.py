"""Teachers: registry, the `openai` client against a real local HTTP server (aiohttp on 127.0.0.1, started in
the test: ok, slow, down, 500-then-ok, 400, malformed, bounded concurrency), `execution` feedback from the real
code sandbox's failing test, `template` and `self`. The only stand-in is the policy completion function given to
`self`/rewrite teachers (a plain async function; no inference server runs here)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from aiohttp import web

from rl2f_plugin.tasks import VerifyResult, get_task
from rl2f_plugin.teachers import (
    TEACHER_REGISTRY,
    Teacher,
    TeacherContext,
    TeacherError,
    UnknownTeacherError,
    build_teacher,
    register_teacher,
)


@contextlib.asynccontextmanager
async def local_server(handler):
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def completion(text):
    return web.json_response({"choices": [{"message": {"role": "assistant", "content": text}}]})


def openai_teacher(url, **opts):
    return build_teacher({"name": "openai", "max_tokens": 64, "temperature": 0.0,
                          "openai": {"base_url": url, "model": "frozen-teacher", "backoff_s": 0.01, **opts}})


def ctx(task_name="math", gt="0.5", reply="I get 0.25", vr=None, extra_info=None):
    task = get_task(task_name)
    return TeacherContext(task=task, problem="What is 1/4 + 1/4?", ground_truth=gt, extra_info=extra_info or {},
                          messages=[{"role": "user", "content": "What is 1/4 + 1/4?"}, {"role": "assistant", "content": reply}],
                          verify_result=vr or VerifyResult(0.0, "0.25", "wrong answer"), turn=1)


# ---------------------------------------------------------------------------------------------------------------
def test_registry():
    assert {"self", "openai", "execution", "template"} <= set(TEACHER_REGISTRY)
    with pytest.raises(UnknownTeacherError, match=r"unknown teacher 'oracle' \(rl2f.teacher.name\); registered teachers: ") as err:
        build_teacher({"name": "oracle"})
    listed = str(err.value).split("registered teachers: ", 1)[1].split(", ")
    assert listed == sorted(listed) and {"autodidact_critic", "execution", "openai", "self", "template"} <= set(listed)

    @register_teacher("rl2f_test_echo")
    class Echo(Teacher):
        async def feedback(self, c):
            return f"turn {c.turn}"

    assert isinstance(build_teacher({"name": "rl2f_test_echo"}), Echo)
    with pytest.raises(ValueError, match="already registered"):
        register_teacher("rl2f_test_echo")(type("Other", (Teacher,), {}))


def test_openai_ok_sends_the_privileged_prompt():
    seen = []

    async def handler(request):
        seen.append((await request.json(), request.headers.get("Authorization")))
        return completion("  Look again at how you add the two quarters.  ")

    async def go():
        async with local_server(handler) as url:
            return await openai_teacher(url, api_key_env="RL2F_TEST_KEY").feedback(ctx())

    import os

    os.environ["RL2F_TEST_KEY"] = "sk-test"
    try:
        text = asyncio.run(go())
    finally:
        del os.environ["RL2F_TEST_KEY"]
    assert text == "Look again at how you add the two quarters."
    body, auth = seen[0]
    assert auth == "Bearer sk-test"
    assert body["model"] == "frozen-teacher" and body["max_tokens"] == 64 and body["temperature"] == 0.0
    prompt = body["messages"][0]["content"]
    assert "Correct final answer: 0.5" in prompt and "### Student, attempt 1\nI get 0.25" in prompt
    assert get_task("math").teacher_guidance in prompt


def test_openai_500_then_ok_is_retried():
    calls = []

    async def handler(request):
        calls.append(1)
        if len(calls) < 3:
            return web.Response(status=503, text="overloaded")
        return completion("Check the numerator.")

    async def go():
        async with local_server(handler) as url:
            return await openai_teacher(url, max_retries=3).feedback(ctx())

    assert asyncio.run(go()) == "Check the numerator." and len(calls) == 3


def test_openai_slow_endpoint_times_out_with_a_clear_error():
    async def handler(request):
        await asyncio.sleep(5)
        return completion("too late")

    async def go():
        async with local_server(handler) as url:
            with pytest.raises(TeacherError, match=r"failed after 2 attempts \(timeout 0.2s each\); last error: ReadTimeout"):
                await openai_teacher(url, timeout_s=0.2, max_retries=1).feedback(ctx())

    asyncio.run(go())


def test_openai_slow_first_then_fast_recovers():
    calls = []

    async def handler(request):
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(5)
        return completion("Recount.")

    async def go():
        async with local_server(handler) as url:
            return await openai_teacher(url, timeout_s=0.3, max_retries=2).feedback(ctx())

    assert asyncio.run(go()) == "Recount." and len(calls) == 2


def test_openai_down():
    async def handler(request):
        return completion("x")

    async def go():
        async with local_server(handler) as url:
            pass  # server stopped: its port now refuses connections
        with pytest.raises(TeacherError, match=r"failed after 3 attempts.*last error: ConnectError"):
            await openai_teacher(url, max_retries=2).feedback(ctx())

    asyncio.run(go())


def test_openai_client_errors_are_not_retried_and_malformed_replies_are_reported():
    calls = []

    async def bad_request(request):
        calls.append(1)
        return web.Response(status=400, text='{"error": "model not found"}')

    async def malformed(request):
        return web.json_response({"choices": []})

    async def empty(request):
        return completion("<think>hmm</think>   ")

    async def go():
        async with local_server(bad_request) as url:
            with pytest.raises(TeacherError, match=r"rejected the request: HTTP 400: .*model not found"):
                await openai_teacher(url, max_retries=3).feedback(ctx())
        async with local_server(malformed) as url:
            with pytest.raises(TeacherError, match="malformed chat completion"):
                await openai_teacher(url).feedback(ctx())
        async with local_server(empty) as url:
            with pytest.raises(TeacherError, match="empty feedback"):
                await openai_teacher(url).feedback(ctx())

    asyncio.run(go())
    assert len(calls) == 1


def test_openai_concurrency_is_bounded_across_teacher_instances():
    state = {"now": 0, "max": 0}

    async def handler(request):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.05)
        state["now"] -= 1
        return completion("ok")

    async def go():
        async with local_server(handler) as url:
            teachers = [openai_teacher(url, max_concurrency=3) for _ in range(12)]  # one per trajectory, as in the loop
            return await asyncio.gather(*(t.feedback(ctx()) for t in teachers))

    assert asyncio.run(go()) == ["ok"] * 12
    assert state["max"] == 3


def test_openai_config_errors():
    with pytest.raises(ValueError, match="rl2f.teacher.openai.base_url is required"):
        build_teacher({"name": "openai"})
    with pytest.raises(ValueError, match="rl2f.teacher.openai.model is required"):
        build_teacher({"name": "openai", "openai": {"base_url": "http://x/v1"}})


def _failing_code_ctx():
    task = get_task("code")
    gt = {"tests": "assert add(1, 2) == 3\nassert add(2, 2) == 4", "entry_point": "add"}
    reply = "```python\ndef add(a, b):\n    return a - b\n```"
    vr = task.verify(reply, gt)  # the real sandboxed verifier
    assert not vr.correct
    return ctx("code", gt, reply, vr)


def test_execution_teacher_reports_the_failing_test():
    text = asyncio.run(build_teacher({"name": "execution"}).feedback(_failing_code_ctx()))
    assert text.startswith("Your code does not pass the tests.")
    assert "Failing test:\nassert add(1, 2) == 3" in text and "Expected:\n3" in text and "Got:\n-1" in text
    assert "0/2 tests passed" in text and "seconds" not in text


def test_execution_teacher_rewritten_by_an_llm():
    prompts = []

    async def policy(messages, max_tokens, temperature):  # stands in for the policy server
        prompts.append(messages[0]["content"])
        return "Your function subtracts where it should add."

    teacher = build_teacher({"name": "execution", "execution": {"rewrite_with": "self"}}, policy_complete=policy)
    assert asyncio.run(teacher.feedback(_failing_code_ctx())) == "Your function subtracts where it should add."
    assert "Failing test:\nassert add(1, 2) == 3" in prompts[0] and "return a - b" in prompts[0]


def test_template_teacher():
    t = build_teacher({"name": "template"})
    # the task's privileged hint (direction to move; gold 0.5, student 0.25), never the answer itself
    assert asyncio.run(t.feedback(ctx())) == "Your final answer (0.25) is incorrect. It is too small. Check your reasoning step by step and try again."
    too_large = ctx(vr=VerifyResult(0.0, "3/4", "Wrong answer"))
    assert "It is too large." in asyncio.run(t.feedback(too_large))
    plain = build_teacher({"name": "template", "template": {"hints": False}})
    assert asyncio.run(plain.feedback(ctx())) == "Your final answer (0.25) is incorrect. Wrong answer. Check your reasoning step by step and try again."
    # a verdict that only says "incorrect" is not repeated after "is incorrect."; no hint for non-numbers
    words = ctx(vr=VerifyResult(0.0, "a half", "incorrect"))
    assert asyncio.run(t.feedback(words)) == "Your final answer (a half) is incorrect. Check your reasoning step by step and try again."
    no_answer = ctx(vr=VerifyResult(0.0, None, "no \\boxed{} answer"))
    assert asyncio.run(t.feedback(no_answer)).startswith("I could not find a final answer in your reply. No \\boxed{} answer.")


def test_self_teacher_uses_the_policy_with_the_versioned_prompt():
    from rl2f_plugin.prompts import PromptNotFoundError

    got = []

    async def policy(messages, max_tokens, temperature):
        got.append((messages, max_tokens, temperature))
        return "<think>they halved</think>Re-check the addition of the numerators."

    t = build_teacher({"name": "self", "max_tokens": 99, "temperature": 0.3}, policy_complete=policy)
    c = ctx()
    assert asyncio.run(t.feedback(c)) == "Re-check the addition of the numerators."
    assert got[0][1:] == (99, 0.3) and "Correct final answer: 0.5" in got[0][0][0]["content"]
    c.attempt = 1
    asyncio.run(t.feedback(c))
    assert "previous feedback revealed the answer" in got[1][0][0]["content"]
    c.attempt = 0
    with pytest.raises(PromptNotFoundError, match=r"'teacher_v9.txt' not found.*available: .*teacher_v1"):
        asyncio.run(build_teacher({"name": "self", "prompt_version": "v9"}, policy_complete=policy).feedback(c))
    with pytest.raises(TeacherError, match="no LLM"):
        asyncio.run(build_teacher({"name": "self"}).feedback(c))


def test_clean_feedback_strips_reasoning_in_every_shape():
    from rl2f_plugin.teachers import clean_feedback

    assert clean_feedback("<think>the answer is 5</think>\n\nRe-check the sum.", who="t") == "Re-check the sum."
    # a generation prompt that opens the think block (DeepSeek-R1 / QwQ templates): the reply only closes it
    assert clean_feedback("The answer is 5, so hint at counting.\n</think>\n\nCount up from 2.", who="t") == "Count up from 2."
    with pytest.raises(TeacherError, match="empty feedback"):
        clean_feedback("<think>\nthe student wrote 4 but the answer is 5", who="t")  # never finished thinking


def test_teacher_thinking_option_is_validated():
    from rl2f_plugin.dataclass_config import ConfigError, build_options
    from rl2f_plugin.teachers import TeacherConfig

    assert build_options(TeacherConfig, {"thinking": True}, "rl2f.teacher").thinking is True
    assert TeacherConfig().thinking is False and TeacherConfig().to_dict()["thinking"] is False
    with pytest.raises(ConfigError, match="rl2f.teacher.thinking"):
        build_options(TeacherConfig, {"thinking": "maybe"}, "rl2f.teacher")
