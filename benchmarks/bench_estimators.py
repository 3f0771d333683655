"""Seconds per training step of DiPODTrainer per likelihood estimator, on a tiny CPU model (printed table).

    python benchmarks/bench_estimators.py [--steps 6] [--completion_length 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from datasets import Dataset
from rich.console import Console
from rich.table import Table
from transformers import TrainerCallback

from dipod_trl import DiPODConfig, DiPODTrainer
from dipod_trl.tiny import build_tiny_model, build_tiny_tokenizer


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def digit_reward(prompts, completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def bench(estimator: str, dipod_beta: float, steps: int, length: int) -> float:
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    data = Dataset.from_dict({"prompt": [f"q{i}:" for i in range(64)]})
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = DiPODConfig(output_dir=out, likelihood_estimator=estimator, dipod_beta=dipod_beta,
                           per_device_train_batch_size=8, num_generations=4, max_completion_length=length,
                           block_length=length // 2, diffusion_steps=length // 2, max_steps=steps, use_cpu=True,
                           bf16=False, report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1)
        DiPODTrainer(model, [digit_reward], args=args, train_dataset=data, processing_class=tokenizer,
                     callbacks=[timer]).train()
    return sum(timer.times[1:]) / max(len(timer.times) - 1, 1)  # first step includes warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--completion_length", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    table = Table(title=f"s/step, tiny ModernBERT (64 hidden, 2 layers), 8 completions x {args.completion_length} "
                        f"tokens, {args.completion_length // 2} diffusion steps, 4 ELBO samples, CPU "
                        f"{torch.get_num_threads()} threads")
    for col in ("estimator", "dipod_beta=0", "dipod_beta=0.05"):
        table.add_column(col)
    for estimator in ("elbo", "one_step", "spg"):
        row = [f"{bench(estimator, beta, args.steps, args.completion_length):.3f}" for beta in (0.0, 0.05)]
        table.add_row(estimator, *row)
    Console().print(table)


if __name__ == "__main__":
    main()
