"""Answer parsing shared by the tasks: completion text, answer tags, ``\\boxed{}``, numbers and math equivalence.

Answers are taken from the last ``<answer>`` tag (a ``\\boxed{}`` inside it wins), else from the last ``\\boxed{}``
anywhere. Nothing here raises on model output or evaluates it: math equivalence goes through math-verify, in a
worker process with a deadline (:mod:`dipod_trl.tasks.math_verify_worker`), never through ``eval``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from . import math_verify_worker
from .math_verify_worker import MathVerifyUnavailable

MAX_TEXT_CHARS = 32_000  # longer completions are cut (keeping the tail, where the answer is)
MAX_MATH_CHARS = 400  # longer extracted answers skip math-verify

_SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>|</s>|<eos>")
_ANSWER_OPEN = "<answer>"
_ANSWER_CLOSE = "</answer>"
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")


def completion_text(completion: Any) -> str:
    """Return the text of a completion: a string, or the last message of a conversational list."""
    try:
        if isinstance(completion, str):
            text = completion
        elif isinstance(completion, dict):
            text = _content_text(completion.get("content", ""))
        elif isinstance(completion, (list, tuple)):
            text = _content_text(completion[-1].get("content", "")) if completion else ""
        else:
            text = "" if completion is None else str(completion)
    except Exception:
        text = ""
    return text[-MAX_TEXT_CHARS:]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal style: [{"type": "text", "text": ...}]
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def clean_text(text: str) -> str:
    """Drop tokenizer special tokens such as ``<|eot_id|>`` and ``<|endoftext|>``."""
    return _SPECIAL_TOKEN.sub("", text)


def extract_xml_answer(text: str) -> str | None:
    """Content of the last ``<answer>`` tag (up to ``</answer>`` or the end), or ``None`` without a tag."""
    start = text.rfind(_ANSWER_OPEN)
    if start < 0:
        return None
    body = text[start + len(_ANSWER_OPEN) :]
    end = body.find(_ANSWER_CLOSE)
    return (body if end < 0 else body[:end]).strip()


def last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` (or ``\\fbox{...}``), or ``None``."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def last_number(text: str) -> str | None:
    """The last number in ``text`` (thousands separators removed), or ``None``."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def extract_answer(text: str, last_number_fallback: bool = False) -> str | None:
    """Extract the final answer: ``\\boxed{}`` in the last answer tag, the tag itself, the last ``\\boxed{}``.

    With ``last_number_fallback`` the last number of the text is used when none of those exist.
    """
    text = clean_text(text)
    tagged = extract_xml_answer(text)
    if tagged:
        boxed = last_boxed(tagged)
        return boxed if boxed is not None else tagged
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    return last_number(text) if last_number_fallback else None


_UNIT_NOISE = re.compile(r"\\text\{[^{}]*\}|\\mathrm\{[^{}]*\}|\\[$%!,;: ]|[$%]|\\\(|\\\)|\\\[|\\\]")


def parse_number(text: Any) -> float | None:
    """Parse a plain number such as ``"18"``, ``"$1,000"``, ``"2.50"`` or ``18.0``; ``None`` otherwise."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text) if math.isfinite(text) else None
    if not isinstance(text, str) or len(text) > 100:
        return None
    s = _UNIT_NOISE.sub("", text).strip().rstrip(".").strip()
    if not re.fullmatch(_NUMBER, s):
        return None
    value = float(s.replace(",", ""))
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- math equivalence

_RISKY_MATH = re.compile(
    r"(\^|\*\*)\s*[{(]?\s*\d{5,}"  # huge exponent literal
    r"|\^\s*\{[^{}]*\^|(\^|\*\*)\s*[{(]?[\w.]+[})]?\s*(\^|\*\*)"  # power towers
    r"|\d{4,}\s*!|[)}]\s*!"  # big factorials
)


def _strip_math_delimiters(s: str) -> str:
    s = s.strip().strip("$").strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right):
            s = s[len(left) : -len(right)].strip()
    return s


def _normalise_latex(s: str) -> str:
    s = _strip_math_delimiters(s)
    s = re.sub(r"\\left|\\right|\\!|\\,|\\;|\s+", "", s)
    return s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")


def math_equal(pred: Any, gold: Any) -> bool:
    """Whether ``pred`` and ``gold`` (LaTeX or plain strings) are mathematically equivalent (math-verify).

    Equal normalised strings short-cut; answers that are long or look like SymPy bombs (huge exponents, power
    towers, big factorials) are compared as strings only; everything else goes to math-verify under a deadline
    (:func:`dipod_trl.tasks.math_verify_worker.set_timeout`), where running out of time means "not equal".
    Never raises on model output; a worker that cannot start raises :class:`MathVerifyUnavailable`.
    """
    if pred is None or gold is None:
        return False
    try:
        pred_s, gold_s = _normalise_latex(str(pred)), _normalise_latex(str(gold))
        if not pred_s or not gold_s:
            return False
        if pred_s == gold_s:
            return True
        if max(len(pred_s), len(gold_s)) > MAX_MATH_CHARS or _RISKY_MATH.search(pred_s + " " + gold_s):
            return False
        return math_verify_worker.equal(_strip_math_delimiters(str(pred)), _strip_math_delimiters(str(gold)))
    except MathVerifyUnavailable:
        raise
    except Exception:
        return False
