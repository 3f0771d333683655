"""The ``<reasoning>…</reasoning>\\n<answer>…</answer>`` response format: instructions, prompts, shaping rewards.

The built-in tasks (d1 / DiPOD prompts) ask for::

    <reasoning>
    ...
    </reasoning>
    <answer>
    ...
    </answer>

and add small format-shaping rewards to their correctness reward; a user task can reuse any of them.
"""

from __future__ import annotations

import re
from typing import Any

from .base import per_completion_reward
from .parsing import clean_text

FORMAT_INSTRUCTION = (
    "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)  # fmt: skip
MATH_INSTRUCTION = (
    "You are a math expert. You will be given a question to solve. Think step by step inside the reasoning "
    "tags, then give only the final answer inside the answer tags, wrapped in \\boxed{}.\n" + FORMAT_INSTRUCTION
)


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


def strict_format_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 for an exact ``<reasoning>``/``<answer>`` layout, else 0.0."""
    return per_completion_reward(strict_format_score, completions)


def soft_format_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 when reasoning and answer blocks appear in order, else 0.0."""
    return per_completion_reward(soft_format_score, completions)


def xml_count_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Partial format credit in [0, 1]: 0.25 per well-formed tag, minus trailing-text penalty."""
    return per_completion_reward(xml_count_score, completions)
