"""Normalised exact match (short free-text answers) and multiple choice.

`normalize_text`: Unicode NFKC, case-folded, surrounding quotes / markdown / math delimiters and ``\\text{}``
removed, trailing punctuation dropped, whitespace collapsed, a leading article ("the", "a", "an") dropped.
Two answers that both read as numbers are compared numerically (``1,000`` = ``1000.0``).

The ground truth of ``exact`` may be a string or a list of accepted strings.

Multiple choice (``choice``): the ground truth is a letter (``"B"``, ``"(B)"``) or the text of the correct
option; the options, if known, are in ``extra_info["options"]`` (a list, or a dict letter -> text, or a JSON
string of either; ``"choices"`` is accepted too). The student may answer "(B)", "B", "b) the text ...",
"Option B", or the option's text.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from typing import Any

from .common import VerifyResult
from .extraction import extract_final_answer, strip_math_delimiters

__all__ = ["normalize_text", "texts_equal", "gold_answers", "extract_short_answer", "verify_exact", "verify_choice",
           "parse_options", "choice_letter"]

_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox|textit)\s*\{([^{}]*)\}")
_ARTICLE = re.compile(r"^(?:the|a|an)\s+")


def normalize_text(s: Any) -> str:
    s = unicodedata.normalize("NFKC", str(s))
    s = _TEXT_CMD.sub(lambda m: m.group(1), s)
    s = strip_math_delimiters(s)
    s = s.strip().strip("`*_\"'“”‘’").strip()
    s = s.casefold()
    s = re.sub(r"\s+", " ", s)
    s = s.rstrip(".!;:,").strip()
    s = _ARTICLE.sub("", s)
    return s


def _as_number(s: str) -> float | None:
    t = s.replace(",", "").replace(" ", "")
    if t.endswith("%"):
        t = t[:-1]
    try:
        return float(t)
    except ValueError:
        return None


def extract_short_answer(response: str) -> str | None:
    """Last ``\\boxed{}``, else ``<answer>`` tag, else "Answer:" line, else the last non-empty line."""
    ans = extract_final_answer(response or "")
    if ans:
        return ans
    lines = [ln.strip() for ln in (response or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None


def texts_equal(a: str, b: str) -> bool:
    """Whether two short answers are equal after `normalize_text`, or as numbers."""
    na, nb = normalize_text(a), normalize_text(b)
    if na == nb:
        return True
    fa, fb = _as_number(na), _as_number(nb)
    return fa is not None and fb is not None and abs(fa - fb) <= 1e-9 * max(1.0, abs(fa))


def gold_answers(ground_truth: Any) -> list:
    """The accepted answers of an ``exact`` ground truth: the list itself (a numpy array from parquet too), or
    ``[ground_truth]``."""
    if hasattr(ground_truth, "tolist"):  # numpy array from parquet
        ground_truth = ground_truth.tolist()
    return list(ground_truth) if isinstance(ground_truth, (list, tuple)) else [ground_truth]


def verify_exact(response: str, ground_truth: Any) -> VerifyResult:
    golds = [g for g in (str(x) for x in gold_answers(ground_truth)) if g.strip()]
    if not golds:
        raise ValueError("exact ground truth is empty")
    pred = extract_short_answer(response)
    if pred is None:
        return VerifyResult(0.0, reason="empty answer")
    if len(pred) > 2000:
        return VerifyResult(0.0, extracted=pred[:100], reason="answer too long")
    for g in golds:
        if texts_equal(pred, g):
            return VerifyResult(1.0, extracted=pred, reason="exact match")
    return VerifyResult(0.0, extracted=pred, reason="does not match the reference answer")


# -------------------------------------------------------------------------------------- multiple choice
def parse_options(extra_info: dict | None) -> dict[str, str]:
    """Options as an ordered dict letter -> text (empty if none are given)."""
    extra_info = extra_info or {}
    opts = extra_info.get("options", extra_info.get("choices"))
    if opts is None:
        return {}
    if isinstance(opts, str):
        try:
            opts = json.loads(opts)
        except ValueError:
            return {}
    if hasattr(opts, "tolist"):
        opts = opts.tolist()
    if isinstance(opts, dict):
        return {str(k).strip().strip("()").upper(): str(v) for k, v in opts.items()}
    if isinstance(opts, (list, tuple)):
        return {string.ascii_uppercase[i]: _strip_letter_prefix(str(v)) for i, v in enumerate(opts[:26])}
    return {}


_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Za-z])\)\s*|^\s*([A-Za-z])[.:]\s+")
# Applied to the stripped answer. Written without competing quantifiers (linear on hostile input).
_LETTER_PATTERNS = [
    re.compile(r"^\(?([A-Za-z])\)?[.):]?$"),                           # "B", "(B)", "b)", "B."
    re.compile(r"^\(([A-Za-z])\)"),                                   # "(B) text"
    re.compile(r"^([A-Za-z])[).:]\s"),                                 # "b) text", "B. text", "B: text"
    re.compile(r"^(?:option|choice)\s*\(?([A-Za-z])\)?\b", re.I),      # "Option B"
    re.compile(r"(?i:answer|option|choice)(?:\s+is\b|\s*:)?\s*\(?([A-Z])\)?(?:$|[\s.,)])"),
]


def _strip_letter_prefix(text: str) -> str:
    return _LETTER_PREFIX.sub("", text, count=1).strip()


def choice_letter(answer: str, options: dict[str, str]) -> str | None:
    """The option letter `answer` designates (by letter or by option text), or None."""
    if answer is None:
        return None
    a = strip_math_delimiters(_TEXT_CMD.sub(lambda m: m.group(1), str(answer))).strip().strip("*_`\"'").strip()
    for letter, text in options.items():  # the option's own text first ("a cat" is not option A)
        if texts_equal(a, text):
            return letter
    valid = set(options) if options else set(string.ascii_uppercase)
    for pat in _LETTER_PATTERNS:
        m = pat.search(a)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
    return None


def verify_choice(response: str, ground_truth: Any, extra_info: dict | None = None) -> VerifyResult:
    options = parse_options(extra_info)
    gold_letter = choice_letter(str(ground_truth), options)
    if gold_letter is None:
        if options:
            raise ValueError(f"choice ground truth {str(ground_truth)[:80]!r} is neither an option letter nor an "
                             f"option text (options: {list(options)})")
    pred = extract_short_answer(response)
    if pred is None:
        return VerifyResult(0.0, reason="empty answer", details={"letter": ""})
    letter = choice_letter(pred, options)
    if gold_letter is None:  # no options, free-text gold: fall back to exact match
        ok = texts_equal(pred, str(ground_truth))
        return VerifyResult(1.0 if ok else 0.0, extracted=pred, reason="exact match" if ok else "wrong choice",
                            details={"letter": letter or ""})
    if letter is None:
        return VerifyResult(0.0, extracted=pred, reason="could not tell which option the answer picks",
                            details={"letter": ""})
    ok = letter == gold_letter
    return VerifyResult(1.0 if ok else 0.0, extracted=letter,
                        reason="correct option" if ok else f"picked option {letter}", details={"letter": letter})
