"""Dataset loaders and offline generators for GSM8K, MATH-500, Countdown and 4x4 Sudoku.

Every loader returns a :class:`datasets.Dataset` with a TRL conversational ``prompt`` column
(``[{"role": "user", "content": instruction + "\\n\\n" + question}]``) plus the columns its reward reads:

=============  ==============================================  ===================================
loader         columns                                         reward (``dipod_trl.rewards``)
=============  ==============================================  ===================================
load_gsm8k     ``prompt, question, answer``                    ``gsm8k_correctness_reward``
load_math500   ``prompt, problem, answer``                     ``math_correctness_reward``
load_countdown ``prompt, numbers, target``                     ``countdown_reward``
load_sudoku    ``prompt, puzzle, solution``                    ``sudoku_cell_reward``
=============  ==============================================  ===================================

``path`` is either a Hub dataset id (the default) or a local ``.jsonl``/``.json``/``.csv``/``.parquet`` file,
so everything also works offline. :func:`generate_countdown` and :func:`generate_sudoku_4x4` build seeded
training sets without any download.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

from datasets import Dataset

from dipod_trl.rewards import gsm8k_gold, last_boxed, sudoku_grid

FORMAT_INSTRUCTION = (
    "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)  # fmt: skip
MATH_INSTRUCTION = (
    "You are a math expert. You will be given a question to solve. Think step by step inside the reasoning "
    "tags, then give only the final answer inside the answer tags, wrapped in \\boxed{}.\n" + FORMAT_INSTRUCTION
)
COUNTDOWN_INSTRUCTION = (
    "Using each of the given numbers exactly once, write an arithmetic expression with +, -, *, / and "
    "parentheses that evaluates to the target. Reason inside the reasoning tags, then give only the expression "
    "(no '=' and no result) inside the answer tags.\n" + FORMAT_INSTRUCTION
)
SUDOKU_INSTRUCTION = (
    "Solve the 4x4 Sudoku puzzle. The grid is a 16-character string read left to right, top to bottom, with "
    "'0' for empty cells. Fill every empty cell with a digit 1-4 so that each row, column and 2x2 box contains "
    "1, 2, 3 and 4 exactly once. Reason inside the reasoning tags, then give the complete solved grid as 16 "
    "digits with no spaces inside the answer tags.\n" + FORMAT_INSTRUCTION
)

_LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def make_prompt(question: str, instruction: str) -> list[dict[str, str]]:
    """A single-turn conversational prompt: the format instruction followed by the question."""
    return [{"role": "user", "content": f"{instruction}\n\n{question}"}]


# ----------------------------------------------------------------------------- raw records


def _is_local(path: str) -> bool:
    return Path(path).suffix.lower() in _LOCAL_SUFFIXES or Path(path).exists()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local ``.jsonl``, ``.json`` (list, or dict of a list), ``.csv`` or ``.parquet`` file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} not found; pass an existing .jsonl/.json/.csv/.parquet path")
    suffix = p.suffix.lower()
    try:
        if suffix == ".jsonl":
            with open(p, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        elif suffix == ".json":
            with open(p, encoding="utf-8") as f:
                rows = json.load(f)
            if isinstance(rows, dict):
                lists = [v for v in rows.values() if isinstance(v, list)]
                rows = lists[0] if len(lists) == 1 else rows
        elif suffix == ".csv":
            with open(p, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        elif suffix == ".parquet":
            rows = Dataset.from_parquet(str(p)).to_list()
        else:
            raise ValueError(f"unsupported file type {suffix!r}; use .jsonl, .json, .csv or .parquet")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise ValueError(f"cannot read {p}: {e}; expected a {suffix} file with one record per row") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{p}: expected a list of records (objects), got {type(rows).__name__}")
    return rows


def _hub_records(hub_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    try:
        return load_dataset(hub_id, config, split=split).to_list()
    except Exception as e:
        raise RuntimeError(
            f"could not load {hub_id!r} (split {split!r}) from the Hugging Face Hub: {e}. "
            "Offline, pass path=<local .jsonl/.json/.csv/.parquet file>."
        ) from e


def _records(path: str | Path | None, hub_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
    source = str(path) if path is not None else hub_id
    return read_records(source) if _is_local(source) else _hub_records(source, config, split)


def _field(row: dict[str, Any], names: Sequence[str], source: str, i: int) -> Any:
    lowered = {str(k).lower(): v for k, v in row.items()}
    for name in names:
        if lowered.get(name) not in (None, ""):
            return lowered[name]
    raise ValueError(f"{source}: row {i} has no {' / '.join(names)} column (columns: {sorted(row)})")


def _build(rows: list[dict[str, Any]], convert: Callable[[dict[str, Any], int], dict[str, Any]]) -> Dataset:
    if not rows:
        raise ValueError("no rows to build a dataset from; check the file or the split")
    return Dataset.from_list([convert(row, i) for i, row in enumerate(rows)])


# ----------------------------------------------------------------------------- loaders


def load_gsm8k(split: str = "train", path: str | Path | None = None, hub_id: str = "openai/gsm8k") -> Dataset:
    """GSM8K with columns ``prompt, question, answer`` (``answer`` is the final number, e.g. ``"18"``).

    Local files need ``question`` and ``answer`` (a full ``"... #### 18"`` solution or the bare number).
    """
    source = str(path or hub_id)

    def convert(row: dict[str, Any], i: int) -> dict[str, Any]:
        question = str(_field(row, ("question",), source, i))
        answer = gsm8k_gold(_field(row, ("answer", "ground_truth"), source, i))
        return {"prompt": make_prompt(question, MATH_INSTRUCTION), "question": question, "answer": answer}

    return _build(_records(path, hub_id, "main", split), convert)


def load_math500(
    path: str | Path | None = None, hub_id: str = "HuggingFaceH4/MATH-500", split: str = "test"
) -> Dataset:
    """MATH-500 with columns ``prompt, problem, answer`` (``answer`` is LaTeX, e.g. ``"\\frac{1}{4}"``).

    Local files need ``problem`` (or ``question``) and ``answer`` (or a ``solution`` containing ``\\boxed{}``).
    """
    source = str(path or hub_id)

    def convert(row: dict[str, Any], i: int) -> dict[str, Any]:
        problem = str(_field(row, ("problem", "question"), source, i))
        lowered = {str(k).lower(): v for k, v in row.items()}
        answer = lowered.get("answer")
        if answer in (None, "") and lowered.get("solution"):
            answer = last_boxed(str(lowered["solution"]))
        if answer in (None, ""):
            raise ValueError(f"{source}: row {i} has no answer column and no \\boxed{{}} in its solution")
        return {"prompt": make_prompt(problem, MATH_INSTRUCTION), "problem": problem, "answer": str(answer)}

    return _build(_records(path, hub_id, None, split), convert)


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
            nums = _field(row, ("nums", "numbers"), source, i)
            if isinstance(nums, str):
                nums = json.loads(nums) if nums.strip().startswith("[") else nums.split(",")
            return [int(x) for x in nums], int(_field(row, ("target",), source, i))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: row {i} is not a countdown problem (numbers + target): {e}") from e

    problems = [parse(row, i) for i, row in enumerate(_records(path, hub_id, None, split))]
    problems = [p for p in problems if num_count is None or len(p[0]) == num_count]
    return _build([{"numbers": n, "target": t} for n, t in problems], lambda r, i: _countdown_row(**r))


def sudoku_question(puzzle: str) -> str:
    """The task text, in the layout of the d1 evaluation files."""
    return f"Solve the following Sudoku puzzle: {puzzle}"


def _sudoku_row(puzzle: str, solution: str) -> dict[str, Any]:
    return {"prompt": make_prompt(sudoku_question(puzzle), SUDOKU_INSTRUCTION), "puzzle": puzzle, "solution": solution}


def load_sudoku(path: str | Path | None = None, num_samples: int = 2000, seed: int = 0) -> Dataset:
    """4x4 Sudoku with columns ``prompt, puzzle, solution`` (16-digit strings, ``0`` = empty).

    Without ``path`` the puzzles are generated offline (:func:`generate_sudoku_4x4`); local files need
    ``puzzle`` and ``solution`` columns (any case, e.g. d1's ``Puzzle,Solution`` CSV).
    """
    if path is None:
        return generate_sudoku_4x4(num_samples, seed=seed)
    source = str(path)

    def convert(row: dict[str, Any], i: int) -> dict[str, Any]:
        puzzle = sudoku_grid(_field(row, ("puzzle", "quizzes", "question"), source, i))
        solution = sudoku_grid(_field(row, ("solution", "solutions", "answer"), source, i))
        if puzzle is None or solution is None or "0" in solution:
            raise ValueError(f"{source}: row {i} is not a 4x4 sudoku (16 digits 0-4, solution without 0s)")
        return _sudoku_row(puzzle, solution)

    return _build(read_records(source), convert)


# ----------------------------------------------------------------------------- generators


@lru_cache(maxsize=1)
def all_sudoku_4x4() -> tuple[str, ...]:
    """All 288 valid completed 4x4 Sudoku grids as 16-digit strings, in lexicographic order."""
    perms = ["".join(p) for p in itertools.permutations("1234")]
    grids: list[str] = []

    def extend(rows: list[str]) -> None:
        if len(rows) == 4:
            grids.append("".join(rows))
            return
        for row in perms:
            if any(row[c] == prev[c] for prev in rows for c in range(4)):
                continue  # column clash
            if len(rows) % 2 == 1 and any(set(row[c : c + 2]) & set(rows[-1][c : c + 2]) for c in (0, 2)):
                continue  # 2x2 box clash with the row above
            extend(rows + [row])

    extend([])
    return tuple(grids)


@lru_cache(maxsize=1)
def _cell_masks() -> tuple[tuple[int, ...], ...]:
    """``masks[cell][digit]``: bitset over :func:`all_sudoku_4x4` of grids having ``digit`` at ``cell``."""
    grids = all_sudoku_4x4()
    return tuple(
        tuple(sum(1 << g for g, grid in enumerate(grids) if grid[cell] == str(d)) if d else 0 for d in range(5))
        for cell in range(16)
    )


def count_sudoku_solutions(puzzle: str) -> int:
    """Number of completed 4x4 grids consistent with the givens of ``puzzle`` (``0`` = empty)."""
    masks = _cell_masks()
    consistent = (1 << len(all_sudoku_4x4())) - 1
    for cell, ch in enumerate(puzzle):
        if ch != "0":
            consistent &= masks[cell][int(ch)]
    return bin(consistent).count("1")


def generate_sudoku_4x4(n: int, seed: int = 0, min_givens: int = 4, max_givens: int = 10) -> Dataset:
    """``n`` seeded 4x4 puzzles with a unique solution (columns ``prompt, puzzle, solution``).

    Each puzzle starts from a random valid grid and blanks cells in random order while the solution stays
    unique, stopping at a target number of givens drawn from ``[min_givens, max_givens]``.
    """
    if not 4 <= min_givens <= max_givens <= 16:
        raise ValueError("need 4 <= min_givens <= max_givens <= 16 (a unique 4x4 puzzle has at least 4 givens)")
    rng = random.Random(seed)
    grids = all_sudoku_4x4()
    rows = []
    for _ in range(n):
        solution = rng.choice(grids)
        puzzle = list(solution)
        target = rng.randint(min_givens, max_givens)
        for cell in rng.sample(range(16), 16):
            if 16 - puzzle.count("0") <= target:
                break
            kept, puzzle[cell] = puzzle[cell], "0"
            if count_sudoku_solutions("".join(puzzle)) != 1:
                puzzle[cell] = kept
        rows.append(_sudoku_row("".join(puzzle), solution))
    return Dataset.from_list(rows) if rows else _empty(["prompt", "puzzle", "solution"])


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
    return Dataset.from_list(rows) if rows else _empty(["prompt", "numbers", "target"])


def _empty(columns: list[str]) -> Dataset:
    return Dataset.from_dict({c: [] for c in columns})
