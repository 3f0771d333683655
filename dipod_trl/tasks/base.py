"""The `Task` interface: one verifiable task's prompts, data, TRL reward functions and evaluation verdict.

A task is one object. Training uses :meth:`Task.load` and :meth:`Task.rewards`; evaluation uses
:meth:`Task.item_fields` (what a generated item keeps from its dataset row), :meth:`Task.score` (the verdict on one
completion) and :meth:`Task.summarize` (the metrics of a run). Only ``name``, ``load`` and ``rewards`` need
writing: by default the first reward is the correctness reward that evaluation applies to saved items::

    class Addition(Task):
        name = "addition"
        instruction = "Add the numbers; give only the sum inside the answer tags.\\n" + FORMAT_INSTRUCTION

        def load(self, path=None, split="train"):
            return Dataset.from_list([{"prompt": make_prompt("2 + 3", self.instruction), "answer": "5"}])

        def rewards(self):
            return [(sum_reward, 1.0), (soft_format_reward, 0.25)]

Reward functions have TRL's signature ``f(prompts, completions, **columns) -> list[float]``; the helpers below turn a
per-item ``score(text, *values) -> float`` into one that reads its columns, never raises on model output and
returns floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

from .. import data
from .parsing import MathVerifyUnavailable, completion_text

RewardFunc = Callable[..., list[float]]


def make_prompt(question: str, instruction: str = "") -> list[dict[str, str]]:
    """A single-turn conversational prompt: the instruction (if any), a blank line, then the question."""
    return [{"role": "user", "content": f"{instruction}\n\n{question}" if instruction else question}]


# ----------------------------------------------------------------------------- reward plumbing


def reward_column(kwargs: Mapping[str, Any], name: str, n: int, reward: str) -> list[Any]:
    """Column ``name`` of a reward call's dataset columns, with one value per completion (else a clear error)."""
    if name not in kwargs or kwargs[name] is None:
        raise KeyError(f"{reward} needs a dataset column {name!r}; build the dataset with the task's loader "
                       "(dipod_trl.tasks.get_task(name).load)")
    values = list(kwargs[name])
    if len(values) != n:
        raise ValueError(f"{reward}: column {name!r} has {len(values)} values for {n} completions")
    return values


def safe_score(score: Callable[..., float], *args: Any) -> float:
    """``score(*args)`` as a finite float; 0.0 when it raises or is not finite (model output never raises)."""
    try:
        value = float(score(*args))
        return value if math.isfinite(value) else 0.0
    except MathVerifyUnavailable:
        raise
    except Exception:
        return 0.0


def per_completion_reward(
    score: Callable[..., float], completions: Sequence[Any], *columns: Sequence[Any]
) -> list[float]:
    """``[safe_score(score, text_i, *column_values_i)]`` over the completions: a reward's list of floats."""
    return [safe_score(score, completion_text(c), *values) for c, *values in zip(completions, *columns)]


# ----------------------------------------------------------------------------- the interface


class Task:
    """A verifiable task. Subclass it, set ``name`` (and ``instruction``), implement ``rewards`` (and ``load``)."""

    name: str = "custom"
    instruction: str = ""  # put before each question by the default loader

    def load(self, path: str | Path | None = None, split: str = "train") -> Dataset:
        """The dataset: a TRL ``prompt`` column plus the columns the rewards read.

        Default: rows of ``path`` (local file or Hub id), keeping every column; a row's ``prompt`` (a string or a
        list of chat messages) is used as is, otherwise its ``question``/``problem`` becomes a chat prompt after
        ``instruction``.
        """
        if path is None:
            raise ValueError(f"task {self.name!r} has no built-in data: pass a dataset file (--dataset_path "
                             "data.jsonl) or override {type(self).__name__}.load")
        source = str(path)

        def convert(row: dict[str, Any], i: int) -> dict[str, Any]:
            prompt = row.get("prompt")
            if prompt in (None, ""):
                prompt = make_prompt(str(data.field(row, ("question", "problem"), source, i)), self.instruction)
            elif isinstance(prompt, str) and self.instruction:
                prompt = make_prompt(prompt, self.instruction)
            return {**row, "prompt": prompt}

        return data.build(data.records(path, source, None, split), convert)

    def rewards(self) -> list[tuple[RewardFunc, float]]:
        """``(reward function, weight)`` pairs; the first is the correctness reward that evaluation applies."""
        raise NotImplementedError(f"{type(self).__name__}.rewards() must return [(reward_func, weight), ...]")

    @property
    def reward_funcs(self) -> list[RewardFunc]:
        """The reward functions, for ``DiPODTrainer(reward_funcs=...)``."""
        return [f for f, _ in self.rewards()]

    @property
    def reward_weights(self) -> list[float]:
        """Their weights, for ``DiPODConfig(reward_weights=...)``."""
        return [float(w) for _, w in self.rewards()]

    def item_fields(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """What a generated item keeps from its dataset row (``ground_truth`` at least). Default: every column but
        the prompt, as a dict under ``ground_truth``."""
        return {"ground_truth": {k: v for k, v in row.items() if k != "prompt"}}

    def score(self, text: str, item: Mapping[str, Any]) -> dict[str, Any]:
        """Verdict on one completion: ``score`` in [0, 1] (1.0 = correct), the ``extracted`` answer, any extras.

        Default: the first reward function, called on the completion with the columns saved by `item_fields`.
        """
        truth = item.get("ground_truth")
        if not isinstance(truth, Mapping):
            raise ValueError(f"task {self.name!r}: an item's ground_truth must be the dict of reward columns saved by "
                             f"Task.item_fields, got {type(truth).__name__}; override {type(self).__name__}.score")
        reward = self.reward_funcs[0]
        value = reward(prompts=[item.get("question", "")], completions=[text], **{k: [v] for k, v in truth.items()})
        return {"score": safe_score(float, value[0] if value else None), "extracted": None}

    def summarize(self, verdicts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Metrics of a list of verdicts (each with ``correct`` and ``score``). Default: ``accuracy``."""
        n = len(verdicts)
        return {"accuracy": sum(v["correct"] for v in verdicts) / n if n else 0.0}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class DatasetTask(Task):
    """A task made of a dataset file and plain TRL reward functions (``--dataset_path`` + ``--reward_funcs``)."""

    def __init__(self, reward_funcs: Sequence[RewardFunc], reward_weights: Sequence[float] | None = None,
                 name: str = "custom", instruction: str = ""):
        if not reward_funcs:
            raise ValueError("a dataset task needs at least one reward function (--reward_funcs module.fn)")
        weights = list(reward_weights) if reward_weights is not None else [1.0] * len(reward_funcs)
        if len(weights) != len(reward_funcs):
            raise ValueError(f"{len(weights)} reward weights for {len(reward_funcs)} reward functions")
        self._rewards = list(zip(reward_funcs, weights))
        self.name, self.instruction = name, instruction

    def rewards(self) -> list[tuple[RewardFunc, float]]:
        return list(self._rewards)
