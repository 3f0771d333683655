"""Evaluate DiPOD / d1 style generations on GSM8K, MATH-500, Countdown and 4x4 Sudoku.

Re-scoring mode: read a saved generation file (``{"generations": [{"question", "generations", "ground_truth"}]}``)
and score every item with the same parsing and reward code used in training::

    python examples/evaluate.py --generations gsm8k_instruct_256_128_0.json --task gsm8k [--output verdicts.json]

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = rescore(args.task, args.generations, args.output)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
