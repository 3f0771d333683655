"""Drift study: FPO vs FPO+DiPOD on the demo's task over several seeds, mean +- std of final reward and drift gap.

    python examples/drift_study.py --seeds 3 [--quick] [--stress | --both] [--maskings uniform,antithetic]
                                   [--output_dir demo_out/drift_study] [--resume]

Each seed bootstraps its own tiny model by SFT (`examples/demo.py`'s `sft_model`), then RL-trains FPO and FPO+DiPOD from
it (`run_demo`, whose per-seed report and plots land in `OUTPUT_DIR/SETTING/seed_N/`). `--stress`
uses the harsher RL setting where FPO drifts (`demo.STRESS`: larger learning rate, more inner
iterations); `--both` runs the default and the stress setting from the same SFT models. `--maskings` repeats every
run with each ELBO mask scheme (`DiPODConfig.elbo_masking`, `dipod_trl.estimators`) from the same SFT model and
seed. The table is printed and written to `OUTPUT_DIR/drift_study.md` (raw numbers in `drift_study.json`).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from demo import (
    METHODS,
    SIZES,
    STRESS,
    evaluate,
    quiet,
    reversal_examples,
    rl_run,
    run_demo,
    sft_model,
    summarize,
)

COLUMNS = {
    "reward_final": "train reward (last 10%)",
    "eval_reward": "held-out reward",
    "eval_exact": "held-out exact",
    "gap_final": "drift gap final",
    "gap_max": "drift gap max",
}


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def table(per_seed: list[dict], setting: str) -> str:
    """Markdown table of mean +- std over seeds, one row per method."""
    lines = [f"| {setting} ({len(per_seed)} seeds) | " + " | ".join(COLUMNS.values()) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for method in METHODS:
        cells = [mean_std([summary[method][key] for summary in per_seed]) for key in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_with_masking(setting, seed: int, base: tuple, masking: str, output_dir: Path, progress: bool) -> dict:
    """`run_demo` with `elbo_masking=masking` for both methods, from the SFT model `base`; the summary only."""
    if masking == "uniform":
        return run_demo(setting, output_dir, seed, progress=progress, base=base)["summary"]
    base_model, tokenizer, _ = base
    held_out = reversal_examples(setting.eval_size, seed + 10_000)
    results = {"size": asdict(setting), "seed": seed, "masking": masking}
    for method in METHODS:
        model = copy.deepcopy(base_model)
        run = rl_run(model, tokenizer, method, setting, seed, progress, elbo_masking=masking)
        results[method] = {**run, "eval": evaluate(model, tokenizer, held_out, seed)}
    results["summary"] = summarize(results)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results["summary"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the demo's --quick size")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # seconds: for the tests
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--stress", action="store_true", help=f"only the stress setting {STRESS}")
    mode.add_argument("--both", action="store_true", help="the default and the stress setting")
    parser.add_argument("--maskings", default="uniform", help="comma-separated ELBO mask schemes to compare")
    parser.add_argument("--output_dir", default="demo_out/drift_study")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument("--resume", action="store_true", help="reuse the runs already in --output_dir")
    args = parser.parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    size = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    settings = {"default": size, "stress": replace(size, **STRESS)}
    if not args.both:
        settings = {k: v for k, v in settings.items() if (k == "stress") == args.stress}
    out = Path(args.output_dir)
    start = time.time()
    maskings = args.maskings.split(",")
    runs = {(name if masking == "uniform" else f"{name}, {masking}"): (setting, masking)
            for name, setting in settings.items() for masking in maskings}
    summaries: dict[str, list[dict]] = {name: [] for name in runs}
    for seed in range(args.seeds):
        base = None  # the SFT model, built only if some run of this seed is not on disk yet
        for name, (setting, masking) in runs.items():
            folder = out / name.replace(", ", "_") / f"seed_{seed}"
            if args.resume and (folder / "results.json").exists():  # finished by an earlier, interrupted study
                summaries[name].append(json.loads((folder / "results.json").read_text())["summary"])
                continue
            base = base or sft_model(size, seed, progress=not args.no_progress)
            summaries[name].append(run_with_masking(setting, seed, base, masking, folder, not args.no_progress))
            print(f"[{name} seed {seed}] done after {time.time() - start:.0f} s", flush=True)
    wall = time.time() - start
    tables = [table(per_seed, name) for name, per_seed in summaries.items()]
    header = (
        f"Drift study: `python examples/drift_study.py --seeds {args.seeds}{' --quick' if args.quick else ''}"
        f"{' --stress' if args.stress else ''}{' --both' if args.both else ''}"
        f"{'' if maskings == ['uniform'] else ' --maskings ' + args.maskings}`, {wall / 60:.1f} min wall on "
        f"{args.threads} thread(s).\nSettings: " + "; ".join(
            f"{name}: lr {s.learning_rate:g}, num_iterations {s.num_iterations}, {s.rl_steps} RL steps"
            for name, s in settings.items()
        )
        + ". Drift gap = IW log-likelihood bound - ELBO on on-policy completions (nats per sequence); final = mean "
        "of the last 3 probes. Mean ± std over seeds.\n"
    )
    text = header + "\n" + "\n\n".join(tables) + "\n"
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift_study.md").write_text(text)
    (out / "drift_study.json").write_text(json.dumps({"summaries": summaries, "wall_seconds": wall}, indent=1))
    return summaries


if __name__ == "__main__":
    main()
