"""GSM8K: grade-school math word problems with a numeric answer.

Dataset columns ``prompt, question, answer`` (``answer`` is the final number, e.g. ``"18"``); the correctness reward
compares the extracted answer numerically (math-verify for non-numeric answers, the completion's last number as a
fallback). Rewards and weights follow the d1 recipe: correctness 2.0, integer answer and three format rewards 0.5.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from datasets import Dataset

from .. import data
from . import math_verify_worker
from .base import RewardFunc, Task, make_prompt, per_completion_reward, reward_column
from .formats import MATH_INSTRUCTION, soft_format_reward, strict_format_reward, xml_count_reward
from .parsing import MathVerifyUnavailable, extract_answer, last_number, math_equal, parse_number


def gsm8k_gold(answer: Any) -> str:
    """Normalise a GSM8K answer (``"... #### 1,000"``, ``1000.0`` or ``"1000"``) to ``"1000"``."""
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return str(int(answer)) if float(answer).is_integer() else repr(float(answer))
    s = str(answer)
    if "####" in s:
        s = s.split("####")[-1]
    return s.strip().replace(",", "")


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
    except MathVerifyUnavailable:
        raise
    except Exception:
        return 0.0


def int_answer_score(text: str) -> float:
    """1.0 when the extracted answer is an integer (GSM8K answers are), else 0.0."""
    answer = extract_answer(text)
    return float(answer is not None and re.fullmatch(r"-?\d+", answer.strip()) is not None)


def gsm8k_correctness_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """GSM8K correctness (reads column ``answer``): 1.0 / 0.0, see :func:`gsm8k_score`."""
    answers = reward_column(kwargs, "answer", len(completions), "gsm8k_correctness_reward")
    return per_completion_reward(gsm8k_score, completions, answers)


def int_answer_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 when the extracted answer is an integer."""
    return per_completion_reward(int_answer_score, completions)


def load_gsm8k(split: str = "train", path: str | Path | None = None, hub_id: str = "openai/gsm8k") -> Dataset:
    """GSM8K with columns ``prompt, question, answer`` (``answer`` is the final number, e.g. ``"18"``).

    Local files need ``question`` and ``answer`` (a full ``"... #### 18"`` solution or the bare number).
    """
    source = str(path or hub_id)

    def convert(row: dict[str, Any], i: int) -> dict[str, Any]:
        question = str(data.field(row, ("question",), source, i))
        answer = gsm8k_gold(data.field(row, ("answer", "ground_truth"), source, i))
        return {"prompt": make_prompt(question, MATH_INSTRUCTION), "question": question, "answer": answer}

    return data.build(data.records(path, hub_id, "main", split), convert)


class GSM8K(Task):
    """GSM8K (hub ``openai/gsm8k``); generation items keep the final number as ``ground_truth``."""

    name = "gsm8k"
    instruction = MATH_INSTRUCTION

    def load(self, path: str | Path | None = None, split: str = "train") -> Dataset:
        return load_gsm8k(split=split, path=path)

    def rewards(self) -> list[tuple[RewardFunc, float]]:
        math_verify_worker.start()  # warm by the time the first completions are scored
        return [(gsm8k_correctness_reward, 2.0), (int_answer_reward, 0.5), (strict_format_reward, 0.5),
                (soft_format_reward, 0.5), (xml_count_reward, 0.5)]

    def item_fields(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"ground_truth": row["answer"]}

    def score(self, text: str, item: dict[str, Any]) -> dict[str, Any]:
        return {"score": gsm8k_score(text, item.get("ground_truth")),
                "extracted": extract_answer(text, last_number_fallback=True)}
