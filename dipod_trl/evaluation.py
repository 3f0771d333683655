"""Scoring of saved or fresh generations with the same parsing and reward code as training, for any Task.

Generation files follow the d1 layout ``{"generations": [{"question", "generations", "ground_truth"}, ...]}``; what
``ground_truth`` holds is the task's business (:meth:`dipod_trl.tasks.Task.item_fields` writes it,
:meth:`~dipod_trl.tasks.Task.score` reads it): the final number (GSM8K), a LaTeX answer (MATH-500),
``[[numbers...], target]`` or ``{"numbers", "target"}`` (Countdown), the 16-digit solution plus the item's
``puzzle`` (Sudoku), or the dict of reward columns (tasks that keep the default).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .tasks import Task, get_task, math_verify_timeouts
from .tasks.parsing import completion_text


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


def score_item(task: str | Task, item: Mapping[str, Any]) -> dict[str, Any]:
    """Verdict for one item: ``correct`` (bool), ``score`` in [0, 1], the ``extracted`` answer, the truth."""
    verdict = {"ground_truth": item.get("ground_truth"),
               **get_task(task).score(completion_text(item.get("generations", "")), item)}
    verdict.update(correct=verdict["score"] == 1.0, score=float(verdict["score"]))
    return verdict


def score_generations(task: str | Task, items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Score generation items of ``task``; returns summary metrics plus per-item verdicts under ``items``.

    ``accuracy`` is the fraction of items judged correct, unless the task defines it otherwise (Sudoku: cell
    accuracy over all originally-empty cells, d1's metric). ``math_verify_timeouts`` counts answers whose
    equivalence check ran out of time (judged wrong).
    """
    task = get_task(task)
    timeouts_before = math_verify_timeouts()
    verdicts = [{"index": i, **score_item(task, item)} for i, item in enumerate(items)]
    summary: dict[str, Any] = {"task": task.name, "n": len(verdicts), "correct": sum(v["correct"] for v in verdicts)}
    summary.update(task.summarize(verdicts))
    summary["math_verify_timeouts"] = math_verify_timeouts() - timeouts_before
    summary["items"] = verdicts
    return summary


def generate_items(
    model,
    tokenizer,
    dataset,
    task: str | Task,
    *,
    adapter=None,
    batch_size: int = 8,
    gen_length: int = 256,
    block_length: int | None = None,
    steps: int = 128,
    temperature: float = 0.0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Generate one completion per row of a task dataset with the diffusion sampler, batched, with a progress bar.

    Returns items in the shared generation format (``question``, ``generations`` and the task's
    :meth:`~dipod_trl.tasks.Task.item_fields`), ready for `score_generations`.
    """
    from tqdm.auto import tqdm

    from .models import diffusion_adapter
    from .sampler import default_block_length, diffusion_generate

    task = get_task(task)
    adapter = adapter or diffusion_adapter(model, tokenizer)
    block_length = block_length or default_block_length(adapter.block_size, gen_length)
    device = next(model.parameters()).device
    items: list[dict[str, Any]] = []
    tokenizer.padding_side = "left"
    for start in tqdm(range(0, len(dataset), batch_size), desc=f"generating {task.name}", disable=not progress):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        texts = [p if isinstance(p, str) else tokenizer.apply_chat_template(p, add_generation_prompt=True,
                                                                             tokenize=False) for p in rows["prompt"]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = diffusion_generate(model, adapter, enc["input_ids"], enc["attention_mask"], gen_length=gen_length,
                                 block_length=block_length, steps=steps, temperature=temperature,
                                 pad_token_id=tokenizer.pad_token_id or 0)
        eos = tokenizer.eos_token_id
        cut = [row[: row.index(eos)] if eos in row else row for row in out.tolist()]  # the canvas ends at EOS
        for row, text in zip(rows, tokenizer.batch_decode(cut, skip_special_tokens=True)):
            prompt = row["prompt"]
            question = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            items.append({"question": question, "generations": text, **task.item_fields(row)})
    return items
