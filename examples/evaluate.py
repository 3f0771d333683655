"""Evaluate DiPOD / d1 style generations on GSM8K, MATH-500, Countdown, 4x4 Sudoku or your own task.

Re-scoring mode: read a saved generation file (``{"generations": [{"question", "generations", "ground_truth"}]}``)
and score every item with the same parsing and reward code used in training::

    python examples/evaluate.py --generations gsm8k_instruct_256_128_0.json --task gsm8k [--output verdicts.json]

An empty file, an unreadable one (the error names it) and items without ``ground_truth`` are refused with one
``error:`` line and exit status 2; ``--skip_missing`` skips those items instead, and says how many.

Generation mode: sample on the task's test split with the diffusion sampler (batched, progress bar), save the
generations and verdicts as JSON (``--output``, default ``eval_<task>.json``) and print the accuracy::

    python examples/evaluate.py --task gsm8k --model GSAI-ML/LLaDA-8B-Instruct \
        [--adapter outputs/gsm8k-fpo_dipod] [--limit 200] [--dataset_path test.jsonl]

``--task`` is a built-in name, an installed ``dipod_trl.tasks`` entry point, or your own Task as
``package.module:MyTask`` / ``path/to/file.py:MyTask`` (see ``examples/custom_task.py``). The summary (accuracy,
counts; Sudoku also cell accuracy and exact-solve rate; math-verify checks that ran out of time) is printed as JSON on
stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dipod_trl.cli import debug_requested, user_errors
from dipod_trl.evaluation import load_generations, score_generations
from dipod_trl.tasks import get_task, set_math_verify_timeout, task_names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, help=f"task whose answer checker to use: {', '.join(task_names())}, "
                        "an entry point name, or package.module:MyTask / path/to/file.py:MyTask")
    source = parser.add_mutually_exclusive_group(required=True)  # what to evaluate
    source.add_argument("--generations", type=Path, help="saved generations JSON to re-score")
    source.add_argument("--model", help="model id or directory to generate with")
    gen = parser.add_argument_group("generation mode")
    gen.add_argument("--adapter", help="PEFT adapter directory to load on top of --model")
    gen.add_argument("--dataset_path", help="local test file (default: the task's hub test split)")
    gen.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems")
    gen.add_argument("--batch_size", type=int, default=8)
    gen.add_argument("--gen_length", type=int, default=256)
    gen.add_argument("--block_length", type=int, default=None,
                     help="default: a block-diffusion model's trained block size, else 32")
    gen.add_argument("--steps", type=int, default=None, help="diffusion steps (default gen_length // 2)")
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--mask_token_id", type=int, default=None, help="LLaDA: 126336 (default: from tokenizer)")
    gen.add_argument("--trust_remote_code", action="store_true", help="allow Hub code (not needed for LLaDA/Dream)")
    gen.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--math_verify_timeout", type=float, default=5.0,
                        help="seconds per math-verify check before the answer counts as wrong (training uses 0.5; "
                        "evaluation is generous so verdicts do not depend on machine load)")
    parser.add_argument("--output", type=Path, default=None, help="write summary plus per-item verdicts here")
    parser.add_argument("--skip_missing", action="store_true",
                        help="skip (and count) items without ground_truth instead of refusing the file")
    return parser


def rescore(task: str, generations: Path, output: Path | None = None, skip_missing: bool = False) -> dict[str, Any]:
    """Score a generation file; write the full report to ``output`` if given; return the summary.

    Items without ground truth are refused, or with ``skip_missing`` skipped, counted and reported on stderr."""
    items = load_generations(generations)
    report = score_generations(task, items, skip_missing=skip_missing, source=generations)
    if report.get("skipped_missing_ground_truth"):
        print(f"note: skipped {report['skipped_missing_ground_truth']} of {len(items)} items without ground_truth "
              f"in {generations} (--skip_missing); accuracy is over the other {report['n']}.", file=sys.stderr)
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

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype) if device == "cuda" else torch.float32
    model = load_diffusion_model(args.model, trust_remote_code=args.trust_remote_code, dtype=dtype).to(device)
    if args.adapter:  # PEFT's format, or LLaDA's original module names as dipod_trl saves them
        from dipod_trl.families.adapters import load_adapter, merged_for_inference

        # merged, except where adapted layers share tied base weights (DiffusionGemma's encoder and decoder)
        model = merged_for_inference(load_adapter(model, args.adapter))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    dataset = get_task(args.task).load(args.dataset_path, split="test")
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
    """Bad arguments, files or models print one `error:` line and return 2 (`--debug` / DIPOD_DEBUG=1: traceback)."""
    debug, argv = debug_requested(argv)
    args = build_parser().parse_args(argv)
    previous_timeout = None
    try:
        with user_errors(debug):
            get_task(args.task)  # an unknown task fails before any work
            previous_timeout = set_math_verify_timeout(args.math_verify_timeout)
            if args.model:
                summary = generate_and_score(args)
            else:
                summary = rescore(args.task, args.generations, args.output, args.skip_missing)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        if previous_timeout is not None:
            set_math_verify_timeout(previous_timeout)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
