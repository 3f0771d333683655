"""Scoring of saved or fresh generations with the same parsing and reward code as training, for any Task.

Generation files follow the d1 layout ``{"generations": [{"question", "generations", "ground_truth"}, ...]}``; what
``ground_truth`` holds is the task's business (:meth:`dipod_trl.tasks.Task.item_fields` writes it,
:meth:`~dipod_trl.tasks.Task.score` reads it): the final number (GSM8K), a LaTeX answer (MATH-500),
``[[numbers...], target]`` or ``{"numbers", "target"}`` (Countdown), the 16-digit solution plus the item's
``puzzle`` (Sudoku), or the dict of reward columns (tasks that keep the default).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .tasks import Task, get_task, math_verify_timeouts
from .tasks.countdown import Countdown, countdown_truth
from .tasks.parsing import completion_text


def load_generations(path: str | Path) -> list[dict[str, Any]]:
    """Read the items of a generation file (a dict with ``generations`` or a bare list); every error names the file,
    and a file without items is refused."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError (not UTF-8)
        raise ValueError(f"cannot read generations file {path}: {type(e).__name__}: {e}") from e
    items = data.get("generations") if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise ValueError(f"{path}: expected {{'generations': [{{question, generations, ground_truth}}, ...]}}")
    if not items:
        raise ValueError(f"{path}: the generations list is empty; there is nothing to score.")
    return items


def has_ground_truth(task: str | Task, item: Mapping[str, Any]) -> bool:
    """Whether ``item`` carries what ``task`` scores against: a ``ground_truth`` that is not None or blank (Countdown
    also reads numbers and target from the question, as d1's files hold them)."""
    truth = item.get("ground_truth")
    if truth is not None and not (isinstance(truth, str) and not truth.strip()):
        return True
    if isinstance(get_task(task), Countdown):
        try:
            countdown_truth(item)
        except ValueError:
            return False
        return True
    return False


def missing_ground_truth(task: str | Task, items: Sequence[Mapping[str, Any]], skip_missing: bool = False,
                         source: str | Path | None = None) -> list[int]:
    """Indices of the items without ground truth, which would silently score 0: refused (`ValueError`) unless
    ``skip_missing``, in which case they are returned to be skipped (and counted)."""
    missing = [i for i, item in enumerate(items) if not has_ground_truth(task, item)]
    where = f"{source}: " if source is not None else ""
    if missing and not skip_missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"{where}{len(missing)} of {len(items)} items have no ground_truth (items {shown}), so they "
                         "would be scored 0. Add it, or skip and count them with --skip_missing (skip_missing=True).")
    if len(missing) == len(items):
        raise ValueError(f"{where}none of the {len(items)} items has a ground_truth; there is nothing to score.")
    return missing


def score_item(task: str | Task, item: Mapping[str, Any]) -> dict[str, Any]:
    """Verdict for one item: ``correct`` (bool), ``score`` in [0, 1], the ``extracted`` answer, the truth."""
    verdict = {"ground_truth": item.get("ground_truth"),
               **get_task(task).score(completion_text(item.get("generations", "")), item)}
    verdict.update(correct=verdict["score"] == 1.0, score=float(verdict["score"]))
    return verdict


def score_generations(task: str | Task, items: Iterable[Mapping[str, Any]], *, skip_missing: bool = False,
                      source: str | Path | None = None) -> dict[str, Any]:
    """Score generation items of ``task``; returns summary metrics plus per-item verdicts under ``items``.

    ``accuracy`` is the fraction of items judged correct, unless the task defines it otherwise (Sudoku: cell
    accuracy over all originally-empty cells, d1's metric). ``math_verify_timeouts`` counts answers whose
    equivalence check ran out of time (judged wrong). An empty list, and items without ground truth, are refused
    (`ValueError`, naming ``source`` if given); with ``skip_missing`` the latter are skipped and counted under
    ``skipped_missing_ground_truth`` (``n`` counts the scored items; verdicts keep each item's ``index``).
    """
    task = get_task(task)
    items = list(items)
    where = f"{source}: " if source is not None else ""
    if not items:
        raise ValueError(f"{where}no generation items to score.")
    skipped = set(missing_ground_truth(task, items, skip_missing, source))
    timeouts_before = math_verify_timeouts()
    verdicts = [{"index": i, **score_item(task, item)} for i, item in enumerate(items) if i not in skipped]
    summary: dict[str, Any] = {"task": task.name, "n": len(verdicts), "correct": sum(v["correct"] for v in verdicts)}
    if skip_missing:
        summary["skipped_missing_ground_truth"] = len(skipped)
    summary.update(task.summarize(verdicts))
    summary["math_verify_timeouts"] = math_verify_timeouts() - timeouts_before
    summary["items"] = verdicts
    return summary


def end_of_sequence_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and the generation config's (chat models end turns with their own token)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [tokenizer.eos_token_id, *configured] if i is not None})


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
    eos = end_of_sequence_ids(model, tokenizer)  # the canvas ends at the first of them
    for start in tqdm(range(0, len(dataset), batch_size), desc=f"generating {task.name}", disable=not progress):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        texts = [p if isinstance(p, str) else tokenizer.apply_chat_template(p, add_generation_prompt=True,
                                                                             tokenize=False) for p in rows["prompt"]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = diffusion_generate(model, adapter, enc["input_ids"], enc["attention_mask"], gen_length=gen_length,
                                 block_length=block_length, steps=steps, temperature=temperature,
                                 pad_token_id=tokenizer.pad_token_id or 0, eos_token_ids=eos)
        cut = [row[: min((row.index(e) for e in eos if e in row), default=len(row))] for row in out.tolist()]
        for row, text in zip(rows, tokenizer.batch_decode(cut, skip_special_tokens=True)):
            prompt = row["prompt"]
            question = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            items.append({"question": question, "generations": text, **task.item_fields(row)})
    return items
