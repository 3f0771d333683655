"""Scoring of saved generations with the same parsing and reward code as training.

The generation files follow the d1 layout ``{"generations": [{"question", "generations", "ground_truth"}, ...]}``
where ``ground_truth`` is, per task:

- ``gsm8k``: the final number (``18.0``) or a GSM8K answer string with ``#### 18``;
- ``math500``: a LaTeX answer string;
- ``countdown``: ``[[numbers...], target]`` (or ``{"numbers": [...], "target": t}``);
- ``sudoku``: the 16-digit solution; the puzzle is read from an item's ``puzzle`` key or from the question.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dipod_trl import rewards

TASKS = ("gsm8k", "math500", "countdown", "sudoku")


def load_generations(path: str | Path) -> list[dict[str, Any]]:
    """Read the items of a generation file (a dict with ``generations`` or a bare list)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read generations file {path}: {e}") from e
    items = data.get("generations") if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise ValueError(f"{path}: expected {{'generations': [{{question, generations, ground_truth}}, ...]}}")
    return items


def countdown_truth(item: Mapping[str, Any]) -> tuple[list[int], int]:
    """``(numbers, target)`` from an item's ``ground_truth`` or, failing that, its question text."""
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


def sudoku_puzzle(item: Mapping[str, Any]) -> str:
    """The 16-digit puzzle of an item: its ``puzzle`` key or the first 16-digit run of its question."""
    if item.get("puzzle") is not None and rewards.sudoku_grid(item["puzzle"]) is not None:
        return rewards.sudoku_grid(item["puzzle"])  # type: ignore[return-value]
    found = re.search(r"(?<!\d)[0-4]{16}(?!\d)", str(item.get("question", "")))
    if not found:
        raise ValueError(f"sudoku item without a 16-digit puzzle: {str(item)[:200]}")
    return found.group(0)


def score_item(task: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """Verdict for one item: ``correct`` (bool), ``score`` in [0, 1], the ``extracted`` answer, the truth."""
    text = rewards.completion_text(item.get("generations", ""))
    gt = item.get("ground_truth")
    verdict: dict[str, Any] = {"ground_truth": gt}
    if task == "gsm8k":
        score = rewards.gsm8k_score(text, gt)
        verdict["extracted"] = rewards.extract_answer(text, last_number_fallback=True)
    elif task == "math500":
        score = rewards.math_score(text, gt)
        verdict["extracted"] = rewards.extract_answer(text)
    elif task == "countdown":
        numbers, target = countdown_truth(item)
        score = rewards.countdown_score(text, numbers, target)
        verdict["extracted"] = rewards.countdown_expression(rewards.extract_answer(text))
    elif task == "sudoku":
        puzzle = sudoku_puzzle(item)
        correct, empty = rewards.sudoku_cell_counts(text, puzzle, gt)
        score = correct / empty if empty else 0.0
        verdict.update(puzzle=puzzle, correct_cells=correct, empty_cells=empty)
        verdict["extracted"] = rewards.sudoku_answer_grid(text)
    else:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    verdict.update(correct=score == 1.0, score=float(score))
    return verdict


def score_generations(task: str, items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Score generation items of ``task``; returns summary metrics plus per-item verdicts under ``items``.

    ``accuracy`` is the fraction of items judged correct; for Sudoku it is the cell accuracy over all
    originally-empty cells (d1's metric) and ``exact_solve_rate`` the fraction of fully solved puzzles.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    verdicts = [{"index": i, **score_item(task, item)} for i, item in enumerate(items)]
    n = len(verdicts)
    n_correct = sum(v["correct"] for v in verdicts)
    summary: dict[str, Any] = {"task": task, "n": n, "correct": n_correct}
    if task == "sudoku":
        cells = sum(v["correct_cells"] for v in verdicts)
        empty = sum(v["empty_cells"] for v in verdicts)
        summary.update(
            accuracy=cells / empty if empty else 0.0,
            cell_accuracy=cells / empty if empty else 0.0,
            correct_cells=cells,
            empty_cells=empty,
            exact_solve_rate=n_correct / n if n else 0.0,
        )
    else:
        summary["accuracy"] = n_correct / n if n else 0.0
    summary["items"] = verdicts
    return summary


def _ground_truth(task: str, row: Mapping[str, Any]) -> Any:
    if task == "countdown":
        return {"numbers": list(row["numbers"]), "target": row["target"]}
    if task == "sudoku":
        return row["solution"]
    return row["answer"]


def generate_items(
    model,
    tokenizer,
    dataset,
    task: str,
    *,
    adapter=None,
    batch_size: int = 8,
    gen_length: int = 256,
    block_length: int = 32,
    steps: int = 128,
    temperature: float = 0.0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Generate one completion per row of a task dataset with the diffusion sampler, batched, with a progress bar.

    Returns items in the shared generation format (`question`, `generations`, `ground_truth`, plus `puzzle`
    for Sudoku), ready for `score_generations`.
    """
    from tqdm.auto import tqdm

    from .models import diffusion_adapter
    from .sampler import diffusion_generate

    adapter = adapter or diffusion_adapter(model, tokenizer)
    device = next(model.parameters()).device
    items: list[dict[str, Any]] = []
    tokenizer.padding_side = "left"
    for start in tqdm(range(0, len(dataset), batch_size), desc=f"generating {task}", disable=not progress):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in rows["prompt"]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = diffusion_generate(model, adapter, enc["input_ids"], enc["attention_mask"], gen_length=gen_length,
                                 block_length=block_length, steps=steps, temperature=temperature)
        eos = tokenizer.eos_token_id
        cut = [row[: row.index(eos)] if eos in row else row for row in out.tolist()]  # the canvas ends at EOS
        for row, text in zip(rows, tokenizer.batch_decode(cut, skip_special_tokens=True)):
            item = {"question": row["prompt"][-1]["content"], "generations": text,
                    "ground_truth": _ground_truth(task, row)}
            if task == "sudoku":
                item["puzzle"] = row["puzzle"]
            items.append(item)
    return items
