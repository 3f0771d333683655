"""Run the control comparison (benchmarks/control_results): 5 methods x envs x seeds, one run at a time, resumable.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/run_control.py --out outputs/control_bench \
        --envs pendulum halfcheetah hopper walker2d --seeds 0 1 2 3 4
    python examples/control.py --aggregate outputs/control_bench --aggregate_out benchmarks/control_results

Runs go seed by seed (every env and method for seed 0, then seed 1, ...), so a partial sweep is balanced. A run
whose ``progress.csv`` is complete is skipped, so the command can be restarted. Each run uses ``recipes/control/<env>
.yaml``; the Pendulum smoke check takes seeds 0-2 only.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dipod_trl.control import load_config, run_experiment  # noqa: E402
from dipod_trl.control.report import read_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = {  # label -> overrides of the recipe
    "ppo": {"algo": "ppo"},
    "fpo": {"algo": "fpo"},
    "fpo++": {"algo": "fpo++"},
    "fpo++_sd": {"algo": "fpo++", "self_distill_iters": 300},
    "fpo++_dipod": {"algo": "fpo++", "dipod_beta": 0.05},
}
SMOKE_SEEDS = {"pendulum": 3}


def finished(out: Path, total: int) -> bool:
    csv = out / "progress.csv"
    return csv.exists() and bool(rows := read_csv(csv)) and rows[-1]["step"] >= total - 4096


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/control_bench")
    parser.add_argument("--envs", nargs="+", default=["pendulum", "halfcheetah", "hopper", "walker2d"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    start = time.time()
    for seed in args.seeds:
        for env in args.envs:
            if env in SMOKE_SEEDS and seed >= SMOKE_SEEDS[env]:
                continue
            for method in args.methods:
                out = Path(args.out) / env / method / f"seed{seed}"
                cfg = load_config(ROOT / "recipes" / "control" / f"{env}.yaml", seed=seed, output_dir=str(out),
                                  **METHODS[method])  # fmt: skip
                if finished(out, cfg.total_timesteps):
                    continue
                t0 = time.time()
                try:
                    rows = run_experiment(cfg, progress=False)
                    print(f"[{time.time() - start:7.0f}s] {env} {method} seed{seed}: "
                          f"{rows[-1]['eval_return']:.1f} in {time.time() - t0:.0f}s", flush=True)  # fmt: skip
                except Exception:  # keep the sweep going; the failure is in the log
                    print(f"[{time.time() - start:7.0f}s] {env} {method} seed{seed}: FAILED", flush=True)
                    traceback.print_exc()
    print(f"sweep done in {time.time() - start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
