"""Evaluate DiPOD / d1 style generations on GSM8K, MATH-500, Countdown and 4x4 Sudoku.

Re-scoring mode: read a saved generation file (``{"generations": [{"question", "generations", "ground_truth"}]}``)
and score every item with the same parsing and reward code used in training::

    python examples/evaluate.py --generations gsm8k_instruct_256_128_0.json --task gsm8k [--output verdicts.json]

Generation mode: sample on the task's test split with the diffusion sampler (batched, progress bar), save the
generations and verdicts as JSON (``--output``, default ``eval_<task>.json``) and print the accuracy::

    python examples/evaluate.py --task gsm8k --model GSAI-ML/LLaDA-8B-Instruct \
        [--adapter outputs/gsm8k-fpo_dipod] [--limit 200] [--dataset_path test.jsonl]

The summary (accuracy, counts; Sudoku also cell accuracy and exact-solve rate) is printed as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dipod_trl.evaluation import TASKS, load_generations, score_generations


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=TASKS, help="benchmark whose answer checker to use")
    source = parser.add_mutually_exclusive_group(required=True)  # what to evaluate
    source.add_argument("--generations", type=Path, help="saved generations JSON to re-score")
    source.add_argument("--model", help="model id or directory to generate with")
    gen = parser.add_argument_group("generation mode")
    gen.add_argument("--adapter", help="PEFT adapter directory to load on top of --model")
    gen.add_argument("--dataset_path", help="local test file (default: the task's hub test split)")
    gen.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems")
    gen.add_argument("--batch_size", type=int, default=8)
    gen.add_argument("--gen_length", type=int, default=256)
    gen.add_argument("--block_length", type=int, default=32)
    gen.add_argument("--steps", type=int, default=None, help="diffusion steps (default gen_length // 2)")
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--mask_token_id", type=int, default=None, help="LLaDA: 126336 (default: from tokenizer)")
    gen.add_argument("--trust_remote_code", action="store_true", help="allow Hub code (not needed for LLaDA/Dream)")
    gen.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--output", type=Path, default=None, help="write summary plus per-item verdicts here")
    return parser


def rescore(task: str, generations: Path, output: Path | None = None) -> dict[str, Any]:
    """Score a generation file; write the full report to ``output`` if given; return the summary."""
    report = score_generations(task, load_generations(generations))
    report["source"] = str(generations)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return {k: v for k, v in report.items() if k != "items"}


def generate_and_score(args: argparse.Namespace) -> dict[str, Any]:
    """Generate on the test split, write generations + verdicts to ``args.output``, return the summary."""
    import torch
    from transformers import AutoTokenizer

    from dipod_trl.evaluation import generate_items
    from dipod_trl.models import diffusion_adapter, load_diffusion_model
    from dipod_trl.runner import load_task_dataset

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype) if device == "cuda" else torch.float32
    model = load_diffusion_model(args.model, trust_remote_code=args.trust_remote_code, dtype=dtype).to(device)
    if args.adapter:  # PEFT's format, or LLaDA's original module names as dipod_trl saves them
        from dipod_trl.families.adapters import load_adapter

        model = load_adapter(model, args.adapter).merge_and_unload()
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    dataset = load_task_dataset(args.task, args.dataset_path, split="test")
    if args.limit is not None:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    adapter = diffusion_adapter(model, tokenizer, args.mask_token_id)
    items = generate_items(model, tokenizer, dataset, args.task, adapter=adapter, batch_size=args.batch_size,
                           gen_length=args.gen_length, block_length=args.block_length,
                           steps=args.steps or args.gen_length // 2, temperature=args.temperature)
    report = score_generations(args.task, items)
    report.update(model=args.model, adapter=args.adapter, generations=items)
    output = args.output or Path(f"eval_{args.task}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return {k: v for k, v in report.items() if k not in ("items", "generations")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.model:
            summary = generate_and_score(args)
        else:
            summary = rescore(args.task, args.generations, args.output)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
