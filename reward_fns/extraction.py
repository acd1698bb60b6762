"""Pulling the final answer out of a model reply.

All functions here are linear-time string scans (no backtracking regexes over the whole reply), so a 1 MB
reply costs milliseconds, and they never raise on odd input.

* `last_boxed(text)`      -> content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces handled)
* `answer_line(text)`     -> text after the last "Answer:" / "Final answer:" / "The answer is" marker
* `answer_tag(text)`      -> content of the last ``<answer>...</answer>`` pair (reasoning-gym's convention)
* `last_code_block(text)` -> body of the last fenced (```) code block, preferring python blocks
* `extract_final_answer(text)` -> the first of boxed / answer tag / answer line that is present
* `last_number(text)`     -> the last number in the text ("-12", "3.5", "1,000" -> "1000"), as GSM8K's
  "flexible" scorers read a reply
* `last_match(pattern, text)` -> the last match of a compiled regex (one forward scan)
"""

from __future__ import annotations

import re

__all__ = [
    "last_boxed", "answer_line", "answer_tag", "last_code_block", "extract_final_answer", "strip_math_delimiters",
    "last_number", "last_match",
]


def last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    """The last of the non-overlapping matches of `pattern` in `text` (one ``finditer`` scan), or None."""
    last = None
    for last in pattern.finditer(text):
        pass
    return last


_BOX_COMMANDS = ("\\boxed", "\\fbox")
_BARE_BOX_ARG = re.compile(r"[^\s$]+")


def _matching_brace(text: str, open_idx: int) -> int:
    """Index of the ``}`` matching the ``{`` at `open_idx`, or -1. Escaped braces (``\\{``) are skipped."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) in `text`."""
    if not text:
        return None
    pos = len(text)
    for _ in range(64):  # bounded: malformed boxes are skipped, but never quadratically many
        starts = [(text.rfind(cmd, 0, pos), cmd) for cmd in _BOX_COMMANDS]
        start, cmd = max(starts)
        if start < 0:
            return None
        j = start + len(cmd)
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            end = _matching_brace(text, j)
            if end >= 0:
                return text[j + 1:end].strip()
        elif cmd == "\\boxed" and j > start + len(cmd):  # "\boxed 5" form: up to the next space or $
            m = _BARE_BOX_ARG.match(text, j)
            if m:
                return m.group(0).strip()
        pos = start  # unterminated / malformed: look further left
    return None


# "Answer: x", "Final answer: x", "The answer is x". No two quantifiers may compete for the same characters:
# replies can hold 100k-space runs, and a regex that backtracks quadratically on them would hang the caller.
_ANSWER_MARKERS = re.compile(r"answer(?:\s+is\b|\s*[:：])", re.IGNORECASE)


def answer_line(text: str) -> str | None:
    """Text after the last "Answer:" style marker, up to the end of that line (markdown bold stripped)."""
    if not text:
        return None
    last = last_match(_ANSWER_MARKERS, text)
    if last is None:
        return None
    rest = text[last.end():]
    rest = rest.lstrip(" \t*_:：")
    if rest.startswith("\n"):  # "Answer:\n 42" -> next non-empty line
        rest = rest.lstrip("\n \t")
    line = rest.split("\n", 1)[0].strip().strip("*_").strip()
    if line.endswith(".") and not line.endswith(".."):  # sentence-final period
        line = line[:-1].rstrip()
    return line or None


def answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` pair."""
    if not text:
        return None
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return text[start + len("<answer>"):end].strip()


_FENCE = re.compile(r"^[ \t]*(```+|~~~+)[ \t]*([\w+.#-]*)[^\n]*$", re.MULTILINE)


def last_code_block(text: str, prefer: tuple[str, ...] = ("python", "py", "python3", "")) -> str | None:
    """Body of the last fenced code block, preferring a block whose language tag is in `prefer`.
    An unterminated final fence (the model ran out of tokens) counts as a block up to the end of text."""
    if not text:
        return None
    blocks: list[tuple[str, str]] = []
    fences = list(_FENCE.finditer(text))
    i = 0
    while i < len(fences):
        opening = fences[i]
        lang = opening.group(2).lower()
        close = None
        for k in range(i + 1, len(fences)):
            f = fences[k]
            if f.group(1)[0] == opening.group(1)[0] and len(f.group(1)) >= len(opening.group(1)) and not f.group(2):
                close = k
                break
        body_start = opening.end() + 1
        if close is None:
            blocks.append((lang, text[body_start:]))
            break
        blocks.append((lang, text[body_start:fences[close].start()]))
        i = close + 1
    if not blocks:
        return None
    for lang, body in reversed(blocks):
        if lang in prefer:
            return body.rstrip() + "\n"
    return blocks[-1][1].rstrip() + "\n"


def strip_math_delimiters(s: str) -> str:
    """Remove surrounding ``$...$``, ``\\(...\\)``, ``\\[...\\]`` and whitespace."""
    s = s.strip()
    changed = True
    for _ in range(8):  # bounded: "$$$$...$" must not cost a copy per character
        if not (changed and s):
            break
        changed = False
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left):len(s) - len(right)].strip()
                changed = True
    return s


def extract_final_answer(text: str) -> str | None:
    """The final answer of a reply: last ``\\boxed{}``, else last ``<answer>`` tag, else last "Answer:" line."""
    for fn in (last_boxed, answer_tag, answer_line):
        ans = fn(text)
        if ans:
            return ans
    return None


# A number: a sign (only where it cannot be a binary minus, as in "10-3"), digits with optional thousands commas,
# optional decimals. Linear: the alternatives never compete for the same characters for long.
_NUMBER = re.compile(r"(?:(?<![\w.)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in `text` with thousands commas removed, or None ("so 7 - 9 = -2." -> "-2").
    A sentence-final period is not a decimal point ("is 5." -> "5")."""
    if not text:
        return None
    last = last_match(_NUMBER, text)
    return last.group(0).replace(",", "") if last else None
