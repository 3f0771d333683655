"""MATH-500: competition math with LaTeX answers, judged for equivalence by math-verify.

Dataset columns ``prompt, problem, answer`` (``answer`` is LaTeX, e.g. ``"\\frac{1}{4}"``). Rewards and weights
follow the d1 recipe: correctness 2.0, soft format and tag count 0.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset

from .. import data
from . import math_verify_worker
from .base import RewardFunc, Task, make_prompt, per_completion_reward, reward_column
from .formats import MATH_INSTRUCTION, soft_format_reward, xml_count_reward
from .parsing import MathVerifyUnavailable, extract_answer, last_boxed, math_equal


def math_score(text: str, answer: Any) -> float:
    """1.0 when the boxed / answer-tag answer is equivalent to the LaTeX ``answer`` (math-verify), else 0.0."""
    try:
        return float(math_equal(extract_answer(text), answer))
    except MathVerifyUnavailable:
        raise
    except Exception:
        return 0.0


def math_correctness_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """MATH correctness (reads column ``answer``, LaTeX): 1.0 / 0.0 through math-verify."""
    answers = reward_column(kwargs, "answer", len(completions), "math_correctness_reward")
    return per_completion_reward(math_score, completions, answers)


def load_math500(
    path: str | Path | None = None, hub_id: str = "HuggingFaceH4/MATH-500", split: str = "test"
) -> Dataset:
    """MATH-500 with columns ``prompt, problem, answer`` (``answer`` is LaTeX, e.g. ``"\\frac{1}{4}"``).

    Local files need ``problem`` (or ``question``) and ``answer`` (or a ``solution`` containing ``\\boxed{}``).
    """
    source = str(path or hub_id)

    def convert(row: dict[str, Any], i: int) -> dict[str, Any]:
        problem = str(data.field(row, ("problem", "question"), source, i))
        lowered = {str(k).lower(): v for k, v in row.items()}
        answer = lowered.get("answer")
        if answer in (None, "") and lowered.get("solution"):
            answer = last_boxed(str(lowered["solution"]))
        if answer in (None, ""):
            raise ValueError(f"{source}: row {i} has no answer column and no \\boxed{{}} in its solution")
        return {"prompt": make_prompt(problem, MATH_INSTRUCTION), "problem": problem, "answer": str(answer)}

    return data.build(data.records(path, hub_id, None, split), convert)


class Math500(Task):
    """MATH-500 (hub ``HuggingFaceH4/MATH-500``, a test split only: ``split`` is ignored)."""

    name = "math500"
    instruction = MATH_INSTRUCTION

    def load(self, path: str | Path | None = None, split: str = "train") -> Dataset:
        return load_math500(path=path)

    def rewards(self) -> list[tuple[RewardFunc, float]]:
        math_verify_worker.start()  # warm by the time the first completions are scored
        return [(math_correctness_reward, 2.0), (soft_format_reward, 0.5), (xml_count_reward, 0.5)]

    def item_fields(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"ground_truth": row["answer"]}

    def score(self, text: str, item: dict[str, Any]) -> dict[str, Any]:
        return {"score": math_score(text, item.get("ground_truth")), "extracted": extract_answer(text)}
