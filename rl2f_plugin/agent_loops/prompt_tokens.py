"""Incremental tokenisation of the policy's auxiliary prompts (the `self` teacher, the autodidact critic, the
leak judge), exactly equal to ``ContinuousTokenBuilder.build_initial_tokens``.

A teacher prompt is one long user message (~500 tokens) that, from one feedback turn to the next, only grows by
the newest conversation turns: the instructions, problem, privileged information and earlier turns are the
same text. Tokenising it from scratch each call costs ~1 ms of CPU (the byte-level pre-tokenizer's regex
dominates). `AuxPromptTokenizer` renders the chat template to text (cheap), cuts the text at markdown header
boundaries (a newline, ``##`` or ``###``, then a space and a letter: ``"\\n## Problem"``, ``"\\n### Student"``),
tokenises each piece once per trajectory and reuses the ids of pieces it has seen before. The first piece (the
chat-template header and the prompt file's instructions, identical text in every trajectory) is also shared
across trajectories; sample-dependent pieces (problem, answers, feedback) are cached per trajectory only.

Why the concatenation is exact: byte-level BPE never merges across pre-tokenizer chunks, and the regex
pre-tokenizers of GPT-2/SmolLM2, Qwen2 and Llama-3 all end a chunk between ``#`` and a following space (a run of
``#`` is one punctuation chunk; it cannot absorb a space, and a newline before it is its own chunk), with no
look-behind and no look-ahead across that point. So the chunks, hence the tokens, of the whole text are the
chunks of the pieces. That argument covers only those pre-tokenizers: the fast path is enabled per tokenizer
after (1) a structural check of its normalizer, pre-tokenizer and added tokens and (2) a calibration that
compares it with the builder's own render on adversarial texts; otherwise `prompt_ids` returns None and callers
use the builder. ``tests/test_prompt_tokens.py`` checks equality against the tokenizer's own chat template.
"""

from __future__ import annotations

import json
import logging
import re
import weakref
from typing import Any

from verl.utils.tokenizer.chat_template import apply_chat_template
from verl.utils.tokenizer.continuous_token import ContinuousTokenBuilder, QwenContinuousTokenBuilder

logger = logging.getLogger(__name__)

#: Cut points: after "\n##" or "\n###" when a space and a letter follow.
_CUT = re.compile(r"(?<=\n##)(?= [A-Za-z])|(?<=\n###)(?= [A-Za-z])")

#: Builders whose ``build_initial_tokens`` is exactly "render the template with the generation prompt, tokenise".
_PLAIN_BUILDERS = (ContinuousTokenBuilder, QwenContinuousTokenBuilder)

#: Pieces remembered per trajectory (a trajectory has a handful of teacher calls, each a dozen pieces).
MAX_CACHED_PIECES = 512

#: First pieces (template headers) shared by all trajectories of the process, oldest evicted first.
MAX_SHARED_HEADS = 64

#: Per tokenizer object (weakly held, so a new tokenizer never inherits a freed one's entries): the shared
#: heads (text -> ids) and the verdicts of the exactness checks.
_PER_TOKENIZER: "weakref.WeakKeyDictionary[Any, dict[str, dict]]" = weakref.WeakKeyDictionary()


def _state(tokenizer: Any) -> dict[str, dict]:
    st = _PER_TOKENIZER.get(tokenizer)
    if st is None:
        st = _PER_TOKENIZER[tokenizer] = {"heads": {}, "verdicts": {}}
    return st

_CALIBRATION_TEXTS = [
    "Intro line.\n\n## Problem\nWhat is 17 + 25 - 9?\n\n## Conversation so far\n### Student, attempt 1\n"
    "17 + 25 = 42, 42 - 9 = 32. The answer is 32.\n\n### Feedback to the student\nCheck   the subtraction.  \n"
    "\n### Student, attempt 2\n### Step 1\n#### Not a cut\n##\n## x\n###  two spaces\n\\boxed{33}\n\n\nWrite only.",
    "## Problem\n  leading spaces\t tab, unicode: café, naïve, 数学, emoji 🙂, combining e\u0301\n"
    "### Student, attempt 1\n's 're 'll contractions\r\n\r\n### Feedback to the student\n123456789 1/2 = 0.5\n"
    "### Student, attempt 2\n<|im_end|> literal markers <|im_start|>user\n### A\n### 7 digit\n##a",
    "\n### Student, attempt 1\n\n\n\n### Student, attempt 2\n \n### Feedback to the student\n.\n### E",
]


def _structure_ok(tokenizer: Any) -> str | None:
    """None if the tokenizer's pipeline is one the exactness argument covers; else the reason it is not."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "not a fast (Rust) tokenizer"
    spec = json.loads(backend.to_str())
    norm = spec.get("normalizer")
    if norm is not None and not (norm.get("type") == "NFC" or (norm.get("type") == "Sequence" and not norm.get("normalizers"))):
        return f"normalizer {norm.get('type')!r}"
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        if not pre.get("use_regex", True) or pre.get("add_prefix_space"):
            return "ByteLevel pre-tokenizer without its regex or with add_prefix_space"
    elif pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        kinds = [s.get("type") for s in steps]
        if not (kinds and kinds[-1] == "ByteLevel" and not steps[-1].get("use_regex") and not steps[-1].get("add_prefix_space")
                and all(k == "Split" for k in kinds[:-1])):
            return f"pre-tokenizer sequence {kinds}"
    else:
        return f"pre-tokenizer {pre.get('type')!r}"
    if any("#" in tok.get("content", "") for tok in spec.get("added_tokens") or []):
        return "an added token contains '#'"
    return None


class AuxPromptTokenizer:
    """Per-trajectory cache of piece token ids for `builder` (see the module docstring)."""

    def __init__(self, builder: ContinuousTokenBuilder):
        self.builder = builder
        self.tokenizer = builder.tokenizer
        self._pieces: dict[str, list[int]] = {}
        self._shared = _state(self.tokenizer)
        self.enabled = self._check()

    def _check(self) -> bool:
        b = self.builder
        if type(b) not in _PLAIN_BUILDERS:
            return False
        key = (type(b), getattr(self.tokenizer, "chat_template", None), repr(sorted(b.chat_template_kwargs.items())))
        verdict = self._shared["verdicts"].get(key)
        if verdict is None:
            reason = _structure_ok(self.tokenizer)
            if reason is None:
                for text in _CALIBRATION_TEXTS:
                    msgs = [{"role": "user", "content": text}]
                    try:
                        ok = self._encode(msgs, cache=False) == b.build_initial_tokens(msgs)
                    except Exception as exc:  # noqa: BLE001 - any failure means: use the builder
                        ok, reason = False, f"{type(exc).__name__}: {exc}"
                    if not ok:
                        reason = reason or "calibration render differs from the builder's"
                        break
            verdict = reason is None
            if not verdict:
                logger.info("rl2f: incremental prompt tokenisation disabled for this tokenizer (%s)", reason)
            self._shared["verdicts"][key] = verdict
        return verdict

    def _encode(self, messages: list[dict[str, Any]], *, cache: bool = True) -> list[int]:
        text = apply_chat_template(self.tokenizer, messages, tokenize=False, add_generation_prompt=True,
                                   **self.builder.chat_template_kwargs)
        if not isinstance(text, str):
            raise TypeError(f"chat template rendered {type(text).__name__}, not str")
        encode = self.tokenizer.backend_tokenizer.encode
        ids: list[int] = []
        start = 0
        bounds = [m.start() for m in _CUT.finditer(text)] + [len(text)]
        for i, end in enumerate(bounds):
            piece = text[start:end]
            start = end
            if not cache:
                ids.extend(encode(piece, add_special_tokens=False).ids)
                continue
            got = self._pieces.get(piece)
            if got is None and i == 0:
                # The head (chat-template header + the prompt file's instructions up to its first "## " header) is
                # the same text in every trajectory: shared process-wide, keyed by tokenizer and text.
                got = self._shared["heads"].get(piece)
            if got is None:
                got = encode(piece, add_special_tokens=False).ids
                if i == 0:
                    heads = self._shared["heads"]
                    if len(heads) >= MAX_SHARED_HEADS:
                        heads.pop(next(iter(heads)))
                    heads[piece] = got
            if len(self._pieces) < MAX_CACHED_PIECES:
                self._pieces[piece] = got
            ids.extend(got)
        return ids

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int] | None:
        """``builder.build_initial_tokens(messages)`` (text messages, no tools), or None when the fast path is off."""
        if not self.enabled:
            return None
        return self._encode(messages)
