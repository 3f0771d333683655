"""Countdown: combine the given numbers, each exactly once, with ``+ - * /`` and parentheses to reach a target.

Dataset columns ``prompt, numbers, target``. The reward parses the answered expression with a bounded whitelist
parser (exact fractions; length, depth and literal-size caps; no ``**``) and never executes anything. Rewards and
weights: correctness 1.0, soft format and tag count 0.25. Without a file, :func:`generate_countdown` builds seeded
problems with reachable targets.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from datasets import Dataset

from .. import data
from .base import RewardFunc, Task, make_prompt, per_completion_reward, reward_column
from .formats import FORMAT_INSTRUCTION, soft_format_reward, xml_count_reward
from .parsing import extract_answer

COUNTDOWN_INSTRUCTION = (
    "Using each of the given numbers exactly once, write an arithmetic expression with +, -, *, / and "
    "parentheses that evaluates to the target. Reason inside the reasoning tags, then give only the expression "
    "(no '=' and no result) inside the answer tags.\n" + FORMAT_INSTRUCTION
)
COUNTDOWN_MAX_CHARS = 200
COUNTDOWN_MAX_TOKENS = 64
COUNTDOWN_MAX_DEPTH = 16
COUNTDOWN_MAX_DIGITS = 12
COUNTDOWN_TOLERANCE = Fraction(1, 100_000)

# ----------------------------------------------------------------------------- answer parsing and score

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


def countdown_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Countdown correctness (reads columns ``numbers`` and ``target``): 1.0 / 0.0."""
    n = len(completions)
    numbers = reward_column(kwargs, "numbers", n, "countdown_reward")
    targets = reward_column(kwargs, "target", n, "countdown_reward")
    return per_completion_reward(countdown_score, completions, numbers, targets)


# ----------------------------------------------------------------------------- data


def countdown_question(numbers: Sequence[int], target: int) -> str:
    """The task text, in the layout of the d1 evaluation files."""
    return f"Numbers: {list(numbers)}\nTarget: {target}"


def _countdown_row(numbers: Sequence[int], target: int) -> dict[str, Any]:
    nums = [int(n) for n in numbers]
    return {
        "prompt": make_prompt(countdown_question(nums, int(target)), COUNTDOWN_INSTRUCTION),
        "numbers": nums,
        "target": int(target),
    }


def load_countdown(
    path: str | Path | None = None,
    hub_id: str = "Jiayi-Pan/Countdown-Tasks-3to4",
    split: str = "train",
    num_count: int | None = 3,
) -> Dataset:
    """Countdown with columns ``prompt, numbers, target``; keeps rows with ``num_count`` numbers (None: all).

    Local rows need ``nums``/``numbers`` and ``target``, or d1's ``{"input": "30,100,93", "output": "23"}``.
    """
    source = str(path or hub_id)

    def parse(row: dict[str, Any], i: int) -> tuple[list[int], int]:
        lowered = {str(k).lower(): v for k, v in row.items()}
        try:
            if "input" in lowered and "output" in lowered:
                return [int(x) for x in str(lowered["input"]).split(",")], int(lowered["output"])
            nums = data.field(row, ("nums", "numbers"), source, i)
            if isinstance(nums, str):
                nums = json.loads(nums) if nums.strip().startswith("[") else nums.split(",")
            return [int(x) for x in nums], int(data.field(row, ("target",), source, i))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: row {i} is not a countdown problem (numbers + target): {e}") from e

    problems = [parse(row, i) for i, row in enumerate(data.records(path, hub_id, None, split))]
    problems = [p for p in problems if num_count is None or len(p[0]) == num_count]
    return data.build([{"numbers": n, "target": t} for n, t in problems], lambda r, i: _countdown_row(**r))


def countdown_solutions(numbers: Sequence[int]) -> dict[Fraction, str]:
    """Every value reachable using all ``numbers`` once with ``+ - * /``, mapped to one expression for it."""
    start = tuple((Fraction(x), str(x)) for x in numbers)

    def reach(items: tuple[tuple[Fraction, str], ...]) -> dict[Fraction, str]:
        if len(items) == 1:
            return {items[0][0]: items[0][1]}
        out: dict[Fraction, str] = {}
        for i, j in itertools.permutations(range(len(items)), 2):
            (a, ea), (b, eb) = items[i], items[j]
            rest = tuple(x for k, x in enumerate(items) if k not in (i, j))
            combos = [(a + b, f"{ea} + {eb}"), (a - b, f"{ea} - {eb}"), (a * b, f"({ea}) * ({eb})")]
            if b != 0:
                combos.append((a / b, f"({ea}) / ({eb})"))
            for value, expr in combos:
                for v, e in reach(rest + ((value, f"({expr})"),)).items():
                    out.setdefault(v, e)
        return out

    return reach(start)


def generate_countdown(
    n: int, seed: int = 0, num_count: int = 3, min_number: int = 1, max_number: int = 100, max_target: int = 100
) -> Dataset:
    """``n`` seeded Countdown problems (columns ``prompt, numbers, target``) with a reachable integer target.

    Numbers are drawn from ``[min_number, max_number]``; the target is a random positive integer up to
    ``max_target`` reachable using every number exactly once.
    """
    if num_count < 2 or min_number < 1 or max_number < min_number or max_target < 1:
        raise ValueError("need num_count >= 2, 1 <= min_number <= max_number and max_target >= 1")
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(1000 * max(n, 1)):
        if len(rows) >= n:
            break
        numbers = [rng.randint(min_number, max_number) for _ in range(num_count)]
        targets = sorted(int(v) for v in countdown_solutions(numbers) if v.denominator == 1 and 1 <= v <= max_target)
        if targets:
            rows.append(_countdown_row(numbers, rng.choice(targets)))
    if len(rows) < n:
        raise ValueError("could not find reachable targets; widen the number range or raise max_target")
    return Dataset.from_list(rows) if rows else data.empty(["prompt", "numbers", "target"])


def countdown_truth(item: Mapping[str, Any]) -> tuple[list[int], int]:
    """``(numbers, target)`` of a generation item: its ``ground_truth`` or, failing that, its question text."""
    gt = item.get("ground_truth")
    if isinstance(gt, Mapping) and "numbers" in gt and "target" in gt:
        return [int(n) for n in gt["numbers"]], int(gt["target"])
    if isinstance(gt, (list, tuple)) and len(gt) == 2 and isinstance(gt[0], (list, tuple)):
        return [int(n) for n in gt[0]], int(gt[1])
    question = str(item.get("question", ""))
    nums = re.search(r"Numbers:\s*\[([0-9,\s]+)\]", question)
    target = re.search(r"Target:\s*(-?\d+)", question)
    if nums and target:
        return [int(n) for n in nums.group(1).split(",") if n.strip()], int(target.group(1))
    raise ValueError(f"countdown item without numbers/target: {str(item)[:200]}")


class Countdown(Task):
    """Countdown with 3 numbers: hub ``Jiayi-Pan/Countdown-Tasks-3to4`` from a path, else 2000 generated problems.

    Generation items keep ``{"numbers", "target"}`` as ``ground_truth`` (d1's ``[[numbers], target]`` and the
    question text are read too).
    """

    name = "countdown"
    instruction = COUNTDOWN_INSTRUCTION

    def load(self, path: str | Path | None = None, split: str = "train") -> Dataset:
        return load_countdown(path=path) if path else generate_countdown(2000, seed=0)

    def rewards(self) -> list[tuple[RewardFunc, float]]:
        return [(countdown_reward, 1.0), (soft_format_reward, 0.25), (xml_count_reward, 0.25)]

    def item_fields(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"ground_truth": {"numbers": list(row["numbers"]), "target": row["target"]}}

    def score(self, text: str, item: dict[str, Any]) -> dict[str, Any]:
        numbers, target = countdown_truth(item)
        return {"score": countdown_score(text, numbers, target),
                "extracted": countdown_expression(extract_answer(text))}
