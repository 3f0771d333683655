"""Train PPO / FPO / FPO+DiPOD on a gymnasium continuous-control task, or aggregate finished runs.

    python examples/control.py --env Pendulum-v1 --algo fpo_dipod --seed 0 --total_timesteps 100000 \
        --config recipes/control/pendulum.yaml --output_dir outputs/control/pendulum/fpo_dipod/seed0
    python examples/control.py --aggregate outputs/control --aggregate_out benchmarks/control_results

Every ``ControlConfig`` field is also a flag (``--n_mc 4``, ``--hidden_sizes 64 64``, ``--normalize_obs false``).
Precedence: dataclass defaults < ``--config`` YAML < command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dipod_trl.control import ControlConfig, aggregate, load_config, run_experiment  # noqa: E402


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe whose keys are ControlConfig fields")
    parser.add_argument("--aggregate", metavar="DIR", help="aggregate the runs under DIR instead of training")
    parser.add_argument("--aggregate_out", metavar="DIR", help="where to write the summary (default: DIR)")
    parser.add_argument("--no_progress", action="store_true", help="disable the progress bar")
    defaults = ControlConfig()
    for f in dataclasses.fields(ControlConfig):
        default = getattr(defaults, f.name)
        names = [f"--{f.name}"] + (["--env"] if f.name == "env_id" else [])
        if isinstance(default, bool):
            parser.add_argument(*names, type=_bool, default=None, metavar="BOOL")
        elif isinstance(default, list):
            parser.add_argument(*names, type=int, nargs="+", default=None)
        elif f.name == "output_dir":
            parser.add_argument(*names, default=None)
        else:
            parser.add_argument(*names, type=type(default), default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    if args["aggregate"]:
        print(aggregate(args["aggregate"], args["aggregate_out"]))
        return 0
    fields = {f.name for f in dataclasses.fields(ControlConfig)}
    cfg = load_config(args["config"], **{k: v for k, v in args.items() if k in fields})
    if cfg.output_dir is None:
        cfg.output_dir = f"outputs/control/{cfg.env_id}/{cfg.algo}/seed{cfg.seed}"
    rows = run_experiment(cfg, progress=not args["no_progress"])
    last = rows[-1]
    print(f"{cfg.algo} {cfg.env_id} seed={cfg.seed}: final eval return {last['eval_return']:.1f} "
          f"after {last['step']} steps in {last['wall_time']:.0f}s -> {cfg.output_dir}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
