"""Reward functions for GSM8K, MATH-500, Countdown and 4x4 Sudoku, with TRL's reward signature.

Every reward is ``f(prompts, completions, **columns) -> list[float]``. Completions may be plain strings or
conversational ``[{"role": "assistant", "content": str}]`` lists. Ground truth arrives as dataset columns
(see :mod:`dipod_trl.data`):

================  ===========================================================================
task              columns read by its correctness reward
================  ===========================================================================
gsm8k             ``answer``: final numeric answer (``"18"``, ``18.0`` or a full ``"... #### 18"``)
math500           ``answer``: LaTeX answer (``"\\frac{1}{4}"``)
countdown         ``numbers``: list of ints, ``target``: int
sudoku            ``puzzle``: 16 digits row-major with ``0`` for blanks, ``solution``: 16 digits
================  ===========================================================================

A missing column raises ``KeyError`` (a misconfigured dataset should fail loudly); any completion text, however
malformed, scores a float and never raises. Expected answer format (d1 / DiPOD prompts)::

    <reasoning>
    ...
    </reasoning>
    <answer>
    ...
    </answer>

Answers are taken from the last ``<answer>`` tag (a ``\\boxed{}`` inside it wins), else from the last
``\\boxed{}`` anywhere. Math equivalence goes through ``math-verify``; it is never ``eval``.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

RewardFunc = Callable[..., list[float]]

MATH_VERIFY_TIMEOUT_S = 3  # per parse / comparison; signal based, so only used on the main thread
MAX_TEXT_CHARS = 32_000  # longer completions are cut (keeping the tail, where the answer is)
MAX_MATH_CHARS = 400  # longer extracted answers skip math-verify
COUNTDOWN_MAX_CHARS = 200
COUNTDOWN_MAX_TOKENS = 64
COUNTDOWN_MAX_DEPTH = 16
COUNTDOWN_MAX_DIGITS = 12
COUNTDOWN_TOLERANCE = Fraction(1, 100_000)

# ----------------------------------------------------------------------------- text extraction

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


def gsm8k_gold(answer: Any) -> str:
    """Normalise a GSM8K answer (``"... #### 1,000"``, ``1000.0`` or ``"1000"``) to ``"1000"``."""
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return str(int(answer)) if float(answer).is_integer() else repr(float(answer))
    s = str(answer)
    if "####" in s:
        s = s.split("####")[-1]
    return s.strip().replace(",", "")


# ----------------------------------------------------------------------------- math-verify, guarded

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


def _mv_timeout() -> int | None:
    """math-verify's timeout uses SIGALRM, which only works on the main thread."""
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def math_equal(pred: Any, gold: Any) -> bool:
    """Whether ``pred`` and ``gold`` (LaTeX or plain strings) are mathematically equivalent (math-verify).

    Never raises. Off the main thread math-verify runs without its signal timeout, so inputs that could make
    SymPy work for a long time (huge exponents, power towers, big factorials, long strings) are compared as
    normalised strings only.
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
        return _math_verify_equal(_strip_math_delimiters(str(pred)), _strip_math_delimiters(str(gold)))
    except Exception:
        return False


def _math_verify_equal(pred: str, gold: str) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    timeout = _mv_timeout()
    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", extraction_config=config, parsing_timeout=timeout)
        pred_parsed = parse(f"\\boxed{{{pred}}}", extraction_config=config, parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except (Exception, TimeoutException):
        return False


# ----------------------------------------------------------------------------- per-item scores


def gsm8k_score(text: str, answer: Any) -> float:
    """1.0 when the completion's final answer equals the GSM8K answer numerically, else 0.0.

    The answer comes from :func:`extract_answer`, falling back to the last number of the completion; a
    non-numeric answer is compared with math-verify, then by its last number.
    """
    try:
        gold = gsm8k_gold(answer)
        gold_value = parse_number(gold)
        pred = extract_answer(text, last_number_fallback=True)
        if pred is None or gold_value is None:
            return 0.0
        value = parse_number(pred)
        if value is None:
            if math_equal(pred, gold):
                return 1.0
            value = parse_number(last_number(pred))
        return float(value is not None and math.isclose(value, gold_value, rel_tol=1e-9, abs_tol=1e-6))
    except Exception:
        return 0.0


def math_score(text: str, answer: Any) -> float:
    """1.0 when the boxed / answer-tag answer is equivalent to the LaTeX ``answer`` (math-verify), else 0.0."""
    try:
        return float(math_equal(extract_answer(text), answer))
    except Exception:
        return 0.0


_CD_REPLACEMENTS = (
    ("\\times", "*"), ("\\cdot", "*"), ("×", "*"), ("·", "*"), ("∗", "*"),
    ("\\div", "/"), ("÷", "/"), ("∕", "/"), ("−", "-"), ("–", "-"),
    ("\\left", ""), ("\\right", ""), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""), ("$", ""),
)  # fmt: skip
_CD_TOKEN = re.compile(r"[0-9]+|\S")
_CD_INT = re.compile(r"[0-9]+")
_CD_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")


class _ParseError(Exception):
    pass


def countdown_expression(answer: str | None) -> str | None:
    """Normalise an answer to a plain ``+ - * / ()`` expression; text after a first ``=`` is dropped."""
    if answer is None or len(answer) > 4 * COUNTDOWN_MAX_CHARS:
        return None
    s = answer
    for old, new in _CD_REPLACEMENTS:
        s = s.replace(old, new)
    for _ in range(4):
        s = _CD_FRAC.sub(r"(\1)/(\2)", s)
    s = s.split("=")[0].strip()
    return s if 0 < len(s) <= COUNTDOWN_MAX_CHARS else None


def evaluate_countdown(expr: str) -> tuple[Fraction, list[int]] | None:
    """Exactly evaluate an arithmetic expression of integers, ``+ - * /``, unary minus and parentheses.

    Returns ``(value, literals)`` or ``None`` when the expression is malformed, too large or divides by
    zero. This is a small recursive-descent parser over a character whitelist: nothing is ever executed.
    """
    if not isinstance(expr, str) or len(expr) > COUNTDOWN_MAX_CHARS:
        return None
    tokens = _CD_TOKEN.findall(expr)
    if not tokens or len(tokens) > COUNTDOWN_MAX_TOKENS:
        return None
    if any(not (_CD_INT.fullmatch(t) or t in "+-*/()") for t in tokens):
        return None
    literals: list[int] = []
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expression(depth: int) -> Fraction:
        value = term(depth)
        while peek() in ("+", "-"):
            value = value + term(depth) if take() == "+" else value - term(depth)
        return value

    def term(depth: int) -> Fraction:
        value = unary(depth)
        while peek() in ("*", "/"):
            if take() == "*":
                value *= unary(depth)
            else:
                divisor = unary(depth)
                if divisor == 0:
                    raise _ParseError("division by zero")
                value /= divisor
        return value

    def unary(depth: int) -> Fraction:
        if depth > COUNTDOWN_MAX_DEPTH:
            raise _ParseError("too deep")
        if peek() == "-":
            take()
            return -unary(depth + 1)
        tok = take() if peek() is not None else ""
        if tok == "(":
            value = expression(depth + 1)
            if peek() != ")":
                raise _ParseError("unbalanced parentheses")
            take()
            return value
        if _CD_INT.fullmatch(tok) and len(tok) <= COUNTDOWN_MAX_DIGITS:
            literals.append(int(tok))
            return Fraction(int(tok))
        raise _ParseError(f"unexpected token {tok!r}")

    try:
        value = expression(0)
    except (_ParseError, ZeroDivisionError, IndexError, RecursionError):
        return None
    return (value, literals) if pos == len(tokens) else None


def countdown_score(text: str, numbers: Sequence[Any], target: Any) -> float:
    """1.0 when the answer uses every number exactly once and equals ``target`` within 1e-5, else 0.0."""
    try:
        nums = [int(n) for n in numbers]
        expr = countdown_expression(extract_answer(text))
        result = evaluate_countdown(expr) if expr is not None else None
        if result is None:
            return 0.0
        value, literals = result
        if Counter(literals) != Counter(nums):
            return 0.0
        return float(abs(value - Fraction(str(target))) <= COUNTDOWN_TOLERANCE)
    except Exception:
        return 0.0


def sudoku_grid(value: Any) -> str | None:
    """Normalise a 4x4 grid (16-char string, ``.``/``_`` blanks, flat or nested list) to 16 digits 0-4."""
    try:
        if isinstance(value, (list, tuple)):
            value = "".join(str(v) for row in value for v in (row if isinstance(row, (list, tuple)) else [row]))
        s = re.sub(r"[._]", "0", re.sub(r"[\s,|]", "", str(value)))
        return s if re.fullmatch(r"[0-4]{16}", s) else None
    except Exception:
        return None


def sudoku_answer_grid(text: str) -> str | None:
    """The 16-digit grid answered in ``text``: digits of the extracted answer, cut or ``0``-padded to 16.

    Without an answer tag or box, the last run of 16 digits in the text is used.
    """
    answer = extract_answer(text)
    if answer is None:
        runs = re.findall(r"(?<!\d)\d{16}(?!\d)", clean_text(text))
        answer = runs[-1] if runs else None
    if answer is None:
        return None
    digits = re.sub(r"\D", "", answer)[:16]
    return digits.ljust(16, "0")


def is_valid_sudoku_solution(grid: str, puzzle: str | None = None) -> bool:
    """Whether ``grid`` is a complete valid 4x4 Sudoku that agrees with the givens of ``puzzle``."""
    if not isinstance(grid, str) or not re.fullmatch(r"[1-4]{16}", grid):
        return False
    if puzzle is not None and any(p != "0" and p != g for p, g in zip(puzzle, grid)):
        return False
    rows = [grid[4 * r : 4 * r + 4] for r in range(4)]
    cols = ["".join(row[c] for row in rows) for c in range(4)]
    boxes = [rows[r][c : c + 2] + rows[r + 1][c : c + 2] for r in (0, 2) for c in (0, 2)]
    return all(set(unit) == set("1234") for unit in rows + cols + boxes)


def sudoku_cell_counts(text: str, puzzle: Any, solution: Any) -> tuple[int, int]:
    """``(correct, empty)``: originally-empty cells of ``puzzle`` filled as in ``solution``.

    Any valid completion consistent with the givens counts as fully correct (puzzles with several solutions).
    """
    p, sol = sudoku_grid(puzzle), sudoku_grid(solution)
    if p is None or sol is None:
        return 0, 0
    empty = [i for i, c in enumerate(p) if c == "0"]
    grid = sudoku_answer_grid(text)
    if grid is None:
        return 0, len(empty)
    if is_valid_sudoku_solution(grid, p):
        return len(empty), len(empty)
    return sum(grid[i] == sol[i] for i in empty), len(empty)


def sudoku_cell_score(text: str, puzzle: Any, solution: Any) -> float:
    """Fraction of originally-empty cells filled correctly (1.0 for a full valid solution)."""
    try:
        correct, empty = sudoku_cell_counts(text, puzzle, solution)
        if empty == 0:
            return float(sudoku_grid(puzzle) is not None and sudoku_answer_grid(text) == sudoku_grid(puzzle))
        return correct / empty
    except Exception:
        return 0.0


def sudoku_solved_score(text: str, puzzle: Any, solution: Any) -> float:
    """1.0 when the answered grid is a valid solution of the puzzle, else 0.0."""
    try:
        return float(sudoku_cell_score(text, puzzle, solution) == 1.0)
    except Exception:
        return 0.0


# ----------------------------------------------------------------------------- format scores

_STRICT_FORMAT = re.compile(r"<reasoning>\n.*\n</reasoning>\n<answer>\n.*\n</answer>", re.DOTALL)
_TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
_XML_TAGS = ("<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n", "\n</answer>")


def strict_format_score(text: str) -> float:
    """1.0 when the whole completion is exactly ``<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>``."""
    text = clean_text(text).strip()
    if any(text.count(tag) != 1 for tag in _TAGS):  # also keeps the regex below linear
        return 0.0
    return float(_STRICT_FORMAT.fullmatch(text) is not None)


def soft_format_score(text: str) -> float:
    """1.0 when a ``<reasoning>...</reasoning>`` block is followed by an ``<answer>...</answer>`` block."""
    text = clean_text(text)
    first_open, last_close = text.find("<reasoning>"), text.rfind("</answer>")
    if first_open < 0 or last_close < 0:
        return 0.0
    return float(
        any(
            m.start() >= first_open + len("<reasoning>") and m.end() <= last_close
            for m in re.finditer(r"</reasoning>\s*<answer>", text)
        )
    )


def xml_count_score(text: str) -> float:
    """0.25 per tag (with its newlines) present exactly once, minus 0.001 per character after ``</answer>``."""
    text = clean_text(text)
    score = 0.25 * sum(text.count(tag) == 1 for tag in _XML_TAGS)
    if text.count("\n</answer>") == 1:
        score -= min(0.25, 0.001 * len(text.split("\n</answer>")[-1].strip()))
    return max(0.0, score)


def int_answer_score(text: str) -> float:
    """1.0 when the extracted answer is an integer (GSM8K answers are), else 0.0."""
    answer = extract_answer(text)
    return float(answer is not None and re.fullmatch(r"-?\d+", answer.strip()) is not None)


# ----------------------------------------------------------------------------- TRL reward functions


def _column(kwargs: dict[str, Any], name: str, n: int, reward: str) -> list[Any]:
    if name not in kwargs or kwargs[name] is None:
        raise KeyError(f"{reward} needs a dataset column {name!r}; build the dataset with dipod_trl.data loaders")
    values = list(kwargs[name])
    if len(values) != n:
        raise ValueError(f"{reward}: column {name!r} has {len(values)} values for {n} completions")
    return values


def _safe(score: Callable[..., float], *args: Any) -> float:
    try:
        value = float(score(*args))
        return value if math.isfinite(value) else 0.0
    except Exception:
        return 0.0


def gsm8k_correctness_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """GSM8K correctness (reads column ``answer``): 1.0 / 0.0, see :func:`gsm8k_score`."""
    answers = _column(kwargs, "answer", len(completions), "gsm8k_correctness_reward")
    return [_safe(gsm8k_score, completion_text(c), a) for c, a in zip(completions, answers)]


def math_correctness_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """MATH correctness (reads column ``answer``, LaTeX): 1.0 / 0.0 through math-verify."""
    answers = _column(kwargs, "answer", len(completions), "math_correctness_reward")
    return [_safe(math_score, completion_text(c), a) for c, a in zip(completions, answers)]


def countdown_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Countdown correctness (reads columns ``numbers`` and ``target``): 1.0 / 0.0."""
    n = len(completions)
    numbers = _column(kwargs, "numbers", n, "countdown_reward")
    targets = _column(kwargs, "target", n, "countdown_reward")
    return [_safe(countdown_score, completion_text(c), ns, t) for c, ns, t in zip(completions, numbers, targets)]


def sudoku_cell_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Sudoku fraction of blanks filled correctly (reads columns ``puzzle`` and ``solution``)."""
    n = len(completions)
    puzzles = _column(kwargs, "puzzle", n, "sudoku_cell_reward")
    solutions = _column(kwargs, "solution", n, "sudoku_cell_reward")
    return [_safe(sudoku_cell_score, completion_text(c), p, s) for c, p, s in zip(completions, puzzles, solutions)]


def sudoku_solved_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Sudoku exact solve (reads columns ``puzzle`` and ``solution``): 1.0 / 0.0."""
    n = len(completions)
    puzzles = _column(kwargs, "puzzle", n, "sudoku_solved_reward")
    solutions = _column(kwargs, "solution", n, "sudoku_solved_reward")
    return [_safe(sudoku_solved_score, completion_text(c), p, s) for c, p, s in zip(completions, puzzles, solutions)]


def int_answer_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 when the extracted answer is an integer."""
    return [_safe(int_answer_score, completion_text(c)) for c in completions]


def strict_format_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 for an exact ``<reasoning>``/``<answer>`` layout, else 0.0."""
    return [_safe(strict_format_score, completion_text(c)) for c in completions]


def soft_format_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 when reasoning and answer blocks appear in order, else 0.0."""
    return [_safe(soft_format_score, completion_text(c)) for c in completions]


def xml_count_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Partial format credit in [0, 1]: 0.25 per well-formed tag, minus trailing-text penalty."""
    return [_safe(xml_count_score, completion_text(c)) for c in completions]


# (reward, weight) per task; weights follow the d1 recipes (correctness dominates, format shaping is small).
_TASK_REWARDS: dict[str, list[tuple[RewardFunc, float]]] = {
    "gsm8k": [
        (gsm8k_correctness_reward, 2.0),
        (int_answer_reward, 0.5),
        (strict_format_reward, 0.5),
        (soft_format_reward, 0.5),
        (xml_count_reward, 0.5),
    ],
    "math500": [(math_correctness_reward, 2.0), (soft_format_reward, 0.5), (xml_count_reward, 0.5)],
    "countdown": [(countdown_reward, 1.0), (soft_format_reward, 0.25), (xml_count_reward, 0.25)],
    "sudoku": [(sudoku_cell_reward, 1.0), (soft_format_reward, 0.25), (xml_count_reward, 0.25)],
}
REWARDS_BY_TASK: dict[str, list[RewardFunc]] = {t: [f for f, _ in fs] for t, fs in _TASK_REWARDS.items()}
REWARD_WEIGHTS_BY_TASK: dict[str, list[float]] = {t: [w for _, w in fs] for t, fs in _TASK_REWARDS.items()}


def get_rewards(task: str) -> tuple[list[RewardFunc], list[float]]:
    """``(reward_funcs, reward_weights)`` for ``task``, ready for ``GRPOConfig(reward_weights=...)``."""
    if task not in _TASK_REWARDS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(_TASK_REWARDS)}")
    return list(REWARDS_BY_TASK[task]), list(REWARD_WEIGHTS_BY_TASK[task])
