"""Train PPO / FPO / FPO++ (optionally with DiPOD) on a gymnasium continuous-control task, or aggregate finished runs.

    python examples/control.py --env Pendulum-v1 --algo fpo++ --seed 0 --config recipes/control/pendulum.yaml
    python examples/control.py --env HalfCheetah-v5 --algo fpo++ --self_distill_iters 100   # + the paper's DiPOD
    python examples/control.py --env HalfCheetah-v5 --algo fpo++ --dipod_beta 0.05          # + per-update DiPOD
    python examples/control.py --aggregate outputs/control --aggregate_out benchmarks/control_results

Every ``ControlConfig`` field is also a flag (``--n_mc 4``, ``--hidden_sizes 64 64``, ``--normalize_obs false``).
Precedence: dataclass defaults < ``--config`` YAML < command-line flags. Bad input prints one ``error:`` line and
exits with status 2; ``--debug`` (or ``DIPOD_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dipod_trl.cli import debug_requested, user_errors
from dipod_trl.control import ConfigError, ControlConfig, aggregate, load_config, run_experiment  # noqa: E402
from dipod_trl.control.envs import make_vec_env  # noqa: E402


class UsageError(Exception):
    """Bad command-line arguments (raised instead of argparse's exit, so that one error line is printed)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{message} (see --help)")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _optional(kind: type) -> typing.Callable[[str], typing.Any]:
    """Parser for ``X | None`` fields: ``none`` gives None (the algorithm's default)."""

    def parse(text: str) -> typing.Any:
        return None if text.lower() in ("none", "null", "auto") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe whose keys are ControlConfig fields")
    parser.add_argument("--aggregate", metavar="DIR", help="aggregate the runs under DIR instead of training")
    parser.add_argument("--aggregate_out", metavar="DIR", help="where to write the summary (default: DIR)")
    parser.add_argument("--no_progress", action="store_true", help="disable the progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also: DIPOD_DEBUG=1)")
    hints = typing.get_type_hints(ControlConfig)
    for f in dataclasses.fields(ControlConfig):
        names = [f"--{f.name}"] + (["--env"] if f.name == "env_id" else [])
        hint = hints[f.name]
        optional = type(None) in typing.get_args(hint)
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint  # X | None -> X
        if typing.get_origin(base) is list:
            parser.add_argument(*names, type=int, nargs="+", default=None)
        elif base is bool:
            parser.add_argument(*names, type=_optional(_bool), default=None, metavar="BOOL")
        else:
            parser.add_argument(*names, type=_optional(base) if optional else base, default=None)
    return parser


def _run(argv: list[str] | None) -> int:
    args = vars(build_parser().parse_args(argv))
    if args["aggregate"]:
        print(aggregate(args["aggregate"], args["aggregate_out"]))
        return 0
    fields = {f.name for f in dataclasses.fields(ControlConfig)}
    cfg = load_config(args["config"], **{k: v for k, v in args.items() if k in fields})
    if cfg.output_dir is None:
        cfg.output_dir = f"outputs/control/{cfg.env_id}/{cfg.method.replace(' ', '')}/seed{cfg.seed}"
    make_vec_env(cfg.env_id, 1).close()  # unknown ids, discrete or unbounded action spaces fail here, not mid-run
    try:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create output_dir {cfg.output_dir!r}: {err.strerror or err}") from err
    rows = run_experiment(cfg, progress=not args["no_progress"])
    last = rows[-1]
    print(f"{cfg.method} {cfg.env_id} seed={cfg.seed}: final eval return {last['eval_return']:.1f} "
          f"after {last['step']} steps in {last['wall_time']:.0f}s -> {cfg.output_dir}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 on success, 2 on bad input (one ``error:`` line on stderr, or the traceback when debugging)."""
    debug, argv = debug_requested(argv)
    try:
        with user_errors(debug, catch=(UsageError, ConfigError)):
            return _run(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
