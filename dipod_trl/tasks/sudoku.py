"""4x4 Sudoku: fill the blanks (``0``) of a 16-digit grid so every row, column and 2x2 box holds 1-4.

Dataset columns ``prompt, puzzle, solution`` (16-digit strings, row-major, ``0`` = blank). The reward is the
fraction of blanks filled right (any valid completion of the givens counts as fully right: some puzzles have several
solutions); evaluation reports d1's cell accuracy over all blanks and the exact-solve rate. Rewards and weights:
cell reward 1.0, soft format and tag count 0.25. Without a file, :func:`generate_sudoku_4x4` builds seeded puzzles
with a unique solution.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from datasets import Dataset

from .. import data
from .base import RewardFunc, Task, make_prompt, per_completion_reward, reward_column
from .formats import FORMAT_INSTRUCTION, soft_format_reward, xml_count_reward
from .parsing import clean_text, extract_answer

SUDOKU_INSTRUCTION = (
    "Solve the 4x4 Sudoku puzzle. The grid is a 16-character string read left to right, top to bottom, with "
    "'0' for empty cells. Fill every empty cell with a digit 1-4 so that each row, column and 2x2 box contains "
    "1, 2, 3 and 4 exactly once. Reason inside the reasoning tags, then give the complete solved grid as 16 "
    "digits with no spaces inside the answer tags.\n" + FORMAT_INSTRUCTION
)

# ----------------------------------------------------------------------------- grids and scores


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


def sudoku_cell_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Sudoku fraction of blanks filled correctly (reads columns ``puzzle`` and ``solution``)."""
    n = len(completions)
    puzzles = reward_column(kwargs, "puzzle", n, "sudoku_cell_reward")
    solutions = reward_column(kwargs, "solution", n, "sudoku_cell_reward")
    return per_completion_reward(sudoku_cell_score, completions, puzzles, solutions)


def sudoku_solved_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Sudoku exact solve (reads columns ``puzzle`` and ``solution``): 1.0 / 0.0."""
    n = len(completions)
    puzzles = reward_column(kwargs, "puzzle", n, "sudoku_solved_reward")
    solutions = reward_column(kwargs, "solution", n, "sudoku_solved_reward")
    return per_completion_reward(sudoku_solved_score, completions, puzzles, solutions)


# ----------------------------------------------------------------------------- data


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
        puzzle = sudoku_grid(data.field(row, ("puzzle", "quizzes", "question"), source, i))
        solution = sudoku_grid(data.field(row, ("solution", "solutions", "answer"), source, i))
        if puzzle is None or solution is None or "0" in solution:
            raise ValueError(f"{source}: row {i} is not a 4x4 sudoku (16 digits 0-4, solution without 0s)")
        return _sudoku_row(puzzle, solution)

    return data.build(data.read_records(source), convert)


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
    return Dataset.from_list(rows) if rows else data.empty(["prompt", "puzzle", "solution"])


def sudoku_puzzle(item: Mapping[str, Any]) -> str:
    """The 16-digit puzzle of a generation item: its ``puzzle`` key or the first 16-digit run of its question."""
    if item.get("puzzle") is not None and sudoku_grid(item["puzzle"]) is not None:
        return sudoku_grid(item["puzzle"])  # type: ignore[return-value]
    found = re.search(r"(?<!\d)[0-4]{16}(?!\d)", str(item.get("question", "")))
    if not found:
        raise ValueError(f"sudoku item without a 16-digit puzzle: {str(item)[:200]}")
    return found.group(0)


class Sudoku(Task):
    """4x4 Sudoku: a local file (d1's ``Puzzle,Solution`` CSV) from a path, else 2000 generated puzzles.

    Generation items keep the solution as ``ground_truth`` and the ``puzzle``; the summary's ``accuracy`` is the cell
    accuracy over all blanks (d1's metric), with the exact-solve rate beside it.
    """

    name = "sudoku"
    instruction = SUDOKU_INSTRUCTION

    def load(self, path: str | Path | None = None, split: str = "train") -> Dataset:
        return load_sudoku(path=path)

    def rewards(self) -> list[tuple[RewardFunc, float]]:
        return [(sudoku_cell_reward, 1.0), (soft_format_reward, 0.25), (xml_count_reward, 0.25)]

    def item_fields(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"ground_truth": row["solution"], "puzzle": row["puzzle"]}

    def score(self, text: str, item: dict[str, Any]) -> dict[str, Any]:
        puzzle = sudoku_puzzle(item)
        correct, empty = sudoku_cell_counts(text, puzzle, item.get("ground_truth"))
        return {"score": correct / empty if empty else 0.0, "puzzle": puzzle, "correct_cells": correct,
                "empty_cells": empty, "extracted": sudoku_answer_grid(text)}

    def summarize(self, verdicts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        n = len(verdicts)
        cells = sum(v["correct_cells"] for v in verdicts)
        empty = sum(v["empty_cells"] for v in verdicts)
        accuracy = cells / empty if empty else 0.0
        return {"accuracy": accuracy, "cell_accuracy": accuracy, "correct_cells": cells, "empty_cells": empty,
                "exact_solve_rate": sum(v["correct"] for v in verdicts) / n if n else 0.0}
