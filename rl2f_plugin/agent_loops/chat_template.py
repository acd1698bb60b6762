"""What rl2f needs to know about a chat template's tokens, found by rendering it (once per builder/template):
where a user turn's content sits between the template's framing tokens, which token closes an assistant turn,
whether a template is ChatML, and where a feedback text lies inside its rendered user turn.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from verl.utils.tokenizer.continuous_token import ContinuousTokenBuilder

logger = logging.getLogger("rl2f_plugin.agent_loops.didactic")

__all__ = ["SameWarningOnce", "assistant_close_ids", "content_span", "renders_chatml", "user_turn_frame"]


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




_FRAMES: dict[tuple, tuple[list[int], list[int]] | None] = {}


def user_turn_frame(builder: ContinuousTokenBuilder) -> tuple[list[int], list[int]] | None:
    """Token ids the builder puts before and after a user message's content when it appends a user turn
    (e.g. ``<|im_start|>user\n`` and ``<|im_end|>\n<|im_start|>assistant\n``), found once per builder type,
    tokenizer and template by diffing two renders; None when the template does not frame content that way."""
    key = (type(builder), id(builder.tokenizer), getattr(builder.tokenizer, "chat_template", None),
           repr(sorted(builder.chat_template_kwargs.items())))
    if key not in _FRAMES:
        frame = None
        try:
            a = builder.tokenize_context_incremental_messages([], [{"role": "user", "content": "Zq"}])
            b = builder.tokenize_context_incremental_messages([], [{"role": "user", "content": "Yw kx. 7"}])
            h = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            t = next((i for i, (x, y) in enumerate(zip(reversed(a), reversed(b))) if x != y), min(len(a), len(b)))
            tok = builder.tokenizer
            if (a[h:len(a) - t] == tok.encode("Zq", add_special_tokens=False)
                    and b[h:len(b) - t] == tok.encode("Yw kx. 7", add_special_tokens=False)):
                frame = (a[:h], a[len(a) - t:])
        except Exception:  # noqa: BLE001 - fall back to locating the content by its tokens
            frame = None
        _FRAMES[key] = frame
    return _FRAMES[key]


_CLOSERS: dict[tuple, list[int]] = {}


def assistant_close_ids(builder: ContinuousTokenBuilder) -> list[int]:
    """The special token(s) the chat template puts right after an assistant message's content (ChatML:
    ``<|im_end|>``), found once per builder type/tokenizer/template by diffing two renders; [] if none."""
    key = (type(builder), id(builder.tokenizer), getattr(builder.tokenizer, "chat_template", None))
    if key not in _CLOSERS:
        close: list[int] = []
        try:
            tok = builder.tokenizer
            prefix = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
            a = builder.render_delta_token_id(prefix, [{"role": "assistant", "content": "Zq"}])
            b = builder.render_delta_token_id(prefix, [{"role": "assistant", "content": "Yw kx. 7"}])
            t = next((i for i, (x, y) in enumerate(zip(reversed(a), reversed(b))) if x != y), min(len(a), len(b)))
            tail = a[len(a) - t:]
            special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
            if tail and tail[0] in special:
                close = [tail[0]]
        except Exception:  # noqa: BLE001 - leave turns as generated
            close = []
        _CLOSERS[key] = close
    return _CLOSERS[key]


@functools.lru_cache(maxsize=16)
def renders_chatml(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template is ChatML with ``<|im_end|>\n`` between turns."""
    try:
        if tokenizer.convert_tokens_to_ids("<|im_end|>") in (None, tokenizer.unk_token_id):
            return False
        if len(tokenizer.encode("\n", add_special_tokens=False)) != 1:
            return False
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
            tokenize=False)
        return "b<|im_end|>\n<|im_start|>user\nc<|im_end|>" in text
    except Exception:  # noqa: BLE001 - no template or an exotic one: keep verl's choice
        return False


def content_span(builder: ContinuousTokenBuilder, appended: list[int], content: str) -> tuple[int, int]:
    """[start, end) of the tokens of `content` inside the rendered user turn `appended`."""
    frame = user_turn_frame(builder)
    if frame is not None:  # fast path: strip the template's constant header/trailer around the content
        head, tail = frame
        n = len(appended)
        if n >= len(head) + len(tail) and appended[:len(head)] == head and appended[n - len(tail):] == tail:
            return len(head), n - len(tail)
    cids = builder.tokenizer.encode(content, add_special_tokens=False)
    n = len(cids)
    if n:
        for s in range(len(appended) - n, -1, -1):
            if appended[s:s + n] == cids:
                return s, s + n
    # Tokenisation merged across the template boundary: locate by decoded characters instead.
    full = builder.tokenizer.decode(appended, skip_special_tokens=False)
    c0 = full.rfind(content)
    if c0 < 0:
        logger.warning("rl2f: could not locate feedback text in its rendered tokens; marking the whole user turn")
        return 0, len(appended)
    c1 = c0 + len(content)
    lengths = [len(builder.tokenizer.decode(appended[:k], skip_special_tokens=False)) for k in range(len(appended) + 1)]
    start = next(k for k in range(len(appended)) if lengths[k + 1] > c0)
    end = next(k for k in range(len(appended) + 1) if lengths[k] >= c1)
    return start, end
