"""How a chat template frames the turns of a didactic conversation, found by rendering it (once per tokenizer,
template and template kwargs): which token closes an assistant turn, and the tokens of a user turn that follows
an assistant turn, up to and including the generation prompt; and, for thinking models, how the policy's
auxiliary prompts (self teacher, critic, leak judge) turn thinking off (`aux_prompt_format`).

Why not verl's ``ContinuousTokenBuilder.tokenize_context_incremental_messages``: it renders an appended user
message after a synthetic ``[system, user]`` prefix, i.e. two user messages in a row. Templates that enforce
strict user/assistant alternation (Gemma-2/3, Mistral's) raise "Conversation roles must alternate" on that, so
every feedback turn failed. `TurnFormat` renders the user turn where it really is, after an assistant turn
(synthetic ``[user, assistant]`` prefix, no system message: Mistral's templates move a system message into the
*last* user turn), and takes the tokens after that assistant's closing token. The closing token is a special
token, so tokenisation restarts after it and those tokens are exactly what the template gives in any
conversation. ``tests/test_chat_templates.py`` checks the loop token for token against the published templates
of Qwen2.5, Llama-3, Gemma-3, Mistral and Qwen3.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from verl.utils.tokenizer.chat_template import apply_chat_template
from verl.utils.tokenizer.continuous_token import ContinuousTokenBuilder, QwenContinuousTokenBuilder
from verl.utils.tokenizer.tokenizer import normalize_token_ids

logger = logging.getLogger("rl2f_plugin.agent_loops.didactic")

__all__ = ["THINK_CLOSE", "AuxPromptFormat", "SameWarningOnce", "TurnFormat", "aux_prompt_format", "content_span",
           "turn_format", "unfinished_thought"]

#: Builders whose only template-specific behaviour is what `TurnFormat` derives from the template itself
#: (verl's default, and its Qwen builder, which only restores the "\n" after a generated <|im_end|>). verl's other
#: model-specific builders (GLM, Gemma-4, GPT-OSS, MiniMax, DeepSeek, VL) keep verl's own merge.
_PLAIN_BUILDERS = (ContinuousTokenBuilder, QwenContinuousTokenBuilder)

# Synthetic contents: distinct first and last characters, so two renders differ exactly on the content.
_PROBES = ("Zq", "Yw kx. 7")
_CALIBRATION = ("Check the sum again.", "Your final answer (45) is incorrect. It is too large.",
                "x = 1/2 = 0.5; \\boxed{12}\n\n### Feedback\nTry again.", "数学 café 🙂 's 're")


class SameWarningOnce(logging.Filter):
    """verl re-resolves the Continuous Token builder for every trajectory (a fresh loop instance each) and warns
    each time for model types it has no builder for (SmolLM2's "llama"): keep the first of each such warning."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not record.getMessage().startswith("No model-specific Continuous Token builder"):
            return True
        key = record.getMessage()
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def _render(builder: ContinuousTokenBuilder, messages: list[dict[str, Any]], generation_prompt: bool) -> list[int]:
    return normalize_token_ids(apply_chat_template(builder.tokenizer, messages, tokenize=True,
                                                   add_generation_prompt=generation_prompt, **builder.chat_template_kwargs))


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _common_suffix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(reversed(a), reversed(b))) if x != y), min(len(a), len(b)))


@dataclass(frozen=True)
class TurnFormat:
    """A chat template's framing of the didactic turns, as token ids (see the module docstring)."""

    builder: ContinuousTokenBuilder
    close: tuple[int, ...]
    """The token the template puts right after an assistant message's content (``<|im_end|>``, ``<end_of_turn>``,
    ``<|eot_id|>``, ``</s>``): what the model generates to end its turn."""
    prefix: tuple[int, ...]
    """The synthetic ``[user, assistant]`` conversation through the assistant's closing token."""
    head: tuple[int, ...] | None
    """Tokens between that closing token and a user message's content (``\\n<|im_start|>user\\n``); None when a
    user turn cannot be assembled as head + content + tail for this tokenizer (then it is rendered whole)."""
    tail: tuple[int, ...]
    """Tokens after a user message's content through the generation prompt."""

    def user_turn(self, text: str) -> tuple[list[int], tuple[int, int]]:
        """The tokens that follow a closed assistant turn when `text` is the next user message, through the
        generation prompt, and the [start, end) span of `text`'s own tokens in them."""
        if self.head is not None and text and text == text.strip():
            content = self.builder.tokenizer.encode(text, add_special_tokens=False)
            return [*self.head, *content, *self.tail], (len(self.head), len(self.head) + len(content))
        ids = _render(self.builder, [{"role": "user", "content": _PROBES[0]}, {"role": "assistant", "content": _PROBES[1]},
                                     {"role": "user", "content": text}], True)
        if tuple(ids[: len(self.prefix)]) != self.prefix:
            raise ValueError("rl2f: the chat template renders an earlier turn differently once a user turn follows it; "
                             "cannot append feedback token-exactly")
        appended = ids[len(self.prefix):]
        return appended, content_span(self.builder.tokenizer, appended, text)


_FORMATS: dict[tuple, TurnFormat | None] = {}


def turn_format(builder: ContinuousTokenBuilder) -> TurnFormat | None:
    """The `TurnFormat` of `builder`'s tokenizer/template (cached); None for verl's model-specific builders and for
    templates without a special token closing assistant turns (then verl's builder merges the feedback turn)."""
    tok = builder.tokenizer
    key = (type(builder), id(tok), getattr(tok, "chat_template", None), repr(sorted(builder.chat_template_kwargs.items())))
    if key not in _FORMATS:
        _FORMATS[key] = _derive(builder) if type(builder) in _PLAIN_BUILDERS else None
    return _FORMATS[key]


def _derive(builder: ContinuousTokenBuilder) -> TurnFormat | None:
    tok = builder.tokenizer
    u0, a0 = ({"role": "user", "content": _PROBES[0]}, {"role": "assistant", "content": _PROBES[1]})
    try:
        # 1. The closing token: the first token after the assistant content (two renders that differ only there).
        a, b = (_render(builder, [u0, {"role": "assistant", "content": p}, u0], True) for p in _PROBES)
        after = a[len(a) - _common_suffix(a, b):]
        special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
        if not after or after[0] not in special:
            logger.info("rl2f: no special token closes an assistant turn in this chat template; feedback turns are "
                        "merged by verl's Continuous Token builder")
            return None
        close = after[0]
        # 2. A user turn after that assistant turn: two renders that differ only in the user content.
        a, b = (_render(builder, [u0, a0, {"role": "user", "content": p}], True) for p in _PROBES)
        h, t = _common_prefix(a, b), _common_suffix(a, b)
        k = max((i for i in range(h) if a[i] == close), default=None)
        if k is None:
            return None
        fmt = TurnFormat(builder, (close,), tuple(a[: k + 1]), tuple(a[k + 1: h]), tuple(a[len(a) - t:]))
    except Exception as exc:  # noqa: BLE001 - an exotic template: leave the merge to verl's builder
        logger.info("rl2f: could not derive the chat template's turn format (%s: %s); feedback turns are merged by "
                    "verl's Continuous Token builder", type(exc).__name__, exc)
        return None
    # 3. head + tokens(content) + tail is exact only if the content tokenises alone as it does in context: check.
    slow = TurnFormat(builder, fmt.close, fmt.prefix, None, fmt.tail)
    for text in _CALIBRATION:
        if fmt.user_turn(text)[0] != slow.user_turn(text)[0]:
            return slow
    return fmt


def content_span(tokenizer: Any, appended: list[int], content: str) -> tuple[int, int]:
    """[start, end) of the tokens of `content` inside the rendered user turn `appended` (the last match)."""
    content = content.strip()  # templates may trim a message; its own tokens are the same either way
    if not content:
        return 0, 0
    cids = tokenizer.encode(content, add_special_tokens=False)
    n = len(cids)
    if n:
        for s in range(len(appended) - n, -1, -1):
            if appended[s:s + n] == cids:
                return s, s + n
    # Tokenisation merged across the template boundary: locate by decoded characters instead.
    full = tokenizer.decode(appended, skip_special_tokens=False)
    c0 = full.rfind(content)
    if c0 < 0:
        logger.warning("rl2f: could not locate feedback text in its rendered tokens; marking the whole user turn")
        return 0, len(appended)
    c1 = c0 + len(content)
    lengths = [len(tokenizer.decode(appended[:k], skip_special_tokens=False)) for k in range(len(appended) + 1)]
    start = next(k for k in range(len(appended)) if lengths[k + 1] > c0)
    end = next(k for k in range(len(appended) + 1) if lengths[k] >= c1)
    return start, end


#: What closes an unfinished think block before the policy is asked to answer (Qwen3's own framing of a thought).
THINK_CLOSE = "\n</think>\n\n"


@dataclass(frozen=True)
class AuxPromptFormat:
    """How the policy's auxiliary prompts are rendered: `builder` (the student's, or a copy with the template's
    thinking switch turned off), and whether its generation prompt leaves a ``<think>`` block open (QwQ/R1-style
    templates start every reply inside one)."""

    builder: ContinuousTokenBuilder
    opens_thought: bool


_AUX: dict[tuple, AuxPromptFormat] = {}


def aux_prompt_format(builder: ContinuousTokenBuilder, *, thinking: bool) -> AuxPromptFormat:
    """The `AuxPromptFormat` for `builder` (cached). ``thinking=False`` adds ``enable_thinking=False`` to the
    template kwargs when the template reacts to it (Qwen3: an empty ``<think></think>`` in the generation prompt)."""
    tok = builder.tokenizer
    key = (type(builder), id(tok), getattr(tok, "chat_template", None), repr(sorted(builder.chat_template_kwargs.items())), thinking)
    if key not in _AUX:
        probe = [{"role": "user", "content": _PROBES[0]}]

        def text(b: ContinuousTokenBuilder, generation_prompt: bool) -> str:
            return apply_chat_template(tok, probe, tokenize=False, add_generation_prompt=generation_prompt, **b.chat_template_kwargs)

        chosen = builder
        try:
            if not thinking and type(builder) in _PLAIN_BUILDERS:
                off = type(builder)(tok, chat_template_kwargs={**builder.chat_template_kwargs, "enable_thinking": False})
                if text(off, True) != text(builder, True):
                    chosen = off
            with_prompt, without = text(chosen, True), text(chosen, False)
            generation = with_prompt[len(without):] if with_prompt.startswith(without) else ""
            opens = generation.rfind("<think>") > generation.rfind("</think>")
        except Exception as exc:  # noqa: BLE001 - an exotic template: render aux prompts as the student's
            logger.info("rl2f: could not probe the chat template's thinking switch (%s: %s)", type(exc).__name__, exc)
            chosen, opens = builder, False
        _AUX[key] = AuxPromptFormat(chosen, opens)
    return _AUX[key]


def unfinished_thought(reply: str, *, opened: bool) -> bool:
    """Whether `reply` ends inside a think block (one it opened, or one the generation prompt opened)."""
    start, end = reply.rfind("<think>"), reply.rfind("</think>")
    return start > end or (opened and end < 0 and start < 0)
