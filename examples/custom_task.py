"""Bring your own verifiable task: a `Task` subclass in your own file, trained and evaluated without library edits.

The task here: add two numbers ("Add: 17 + 25" -> "42"), scored by the last number inside the answer tags, plus the
built-in tasks' format reward. Run it like a built-in task:

    python examples/custom_task.py --config recipes/custom/tiny_cpu.yaml          # offline smoke run on CPU
    python -m dipod_trl.runner --task examples/custom_task.py:Addition --config recipes/custom/tiny_cpu.yaml
    python examples/evaluate.py --task examples/custom_task.py:Addition --model outputs/custom-tiny-cpu --limit 20

From an installed package, name it `my_package.tasks:Addition`, or register an entry point (then `--task addition`):

    [project.entry-points."dipod_trl.tasks"]
    addition = "my_package.tasks:Addition"

No Task at all: plain TRL reward functions on a dataset file with a `prompt` (or `question`) column:

    python -m dipod_trl.runner --dataset_path data.jsonl --reward_funcs examples/custom_task.py:sum_reward ...
"""

from __future__ import annotations

import random
from pathlib import Path

from datasets import Dataset

from dipod_trl.tasks import FORMAT_INSTRUCTION, Task, make_prompt, soft_format_reward
from dipod_trl.tasks.parsing import completion_text, extract_answer, last_number


def sum_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the last number inside the answer tags is the sum, else 0.0: a plain TRL reward function."""
    texts = [completion_text(c) for c in completions]  # plain strings or chat messages
    return [float(last_number(extract_answer(t) or "") == str(a)) for t, a in zip(texts, answer)]


class Addition(Task):
    """Two-number addition: generated offline (seeded per split) or read from a file with question/answer columns."""

    name = "addition"
    instruction = ("Add the two numbers. Reason inside the reasoning tags, then give only the sum inside the answer "
                   "tags.\n" + FORMAT_INSTRUCTION)

    def load(self, path: str | Path | None = None, split: str = "train") -> Dataset:
        if path is not None:
            return super().load(path, split)  # rows with question + answer; prompts get the instruction
        rng = random.Random(0 if split == "train" else 1)
        rows = []
        for _ in range(2000 if split == "train" else 200):
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            question = f"Add: {a} + {b}"
            rows.append({"prompt": make_prompt(question, self.instruction), "question": question, "answer": str(a + b)})
        return Dataset.from_list(rows)

    def rewards(self):
        return [(sum_reward, 1.0), (soft_format_reward, 0.25)]  # the first one is what evaluation scores


if __name__ == "__main__":
    from tiny import save_tiny  # examples/tiny.py: the model of --create_tiny_model smoke runs

    from dipod_trl.runner import cli

    cli(Addition(), tiny_model_builder=save_tiny)
