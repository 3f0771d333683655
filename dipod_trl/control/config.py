"""Configuration for continuous-control runs: one flat dataclass, loadable from YAML and overridable from the CLI.

Method = ``algo`` (the surrogate: ``ppo``, ``fpo`` or ``fpo++``) plus two independent DiPOD add-ons for flow policies:
``self_distill_iters > 0`` (the paper's self-distillation at initialisation) and ``dipod_beta > 0`` (our per-update
term). Knobs left at ``None`` take the algorithm's default when the config is validated (see ``ALGO_DEFAULTS``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ALGOS = ("ppo", "fpo", "fpo++")
TRUST_REGIONS = ("ppo", "aspo")
# What FPO++ (the release's fpo_rsl_rl FPO) changes relative to the original FPO, knob by knob.
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "fpo": {"per_sample_ratio": False, "neg_adv_cfm_max": 0.0, "trust_region": "ppo"},
    # The release's default trust region is "aspo"; ours is PPO-clip (see README: ASPO learned slower at our budget).
    "fpo++": {"per_sample_ratio": True, "neg_adv_cfm_max": 20.0, "trust_region": "ppo"},
}
RENAMED = {
    "clip_logratio": "logratio_clamp_max (now a straight-through clamp; the old hard clamp removed the PPO gradient)",
    "distill_iters": "self_distill_iters (self-distillation at initialisation: student actor only, own AdamW)",
}


class ConfigError(ValueError):
    """A bad setting: the message names the key and the fix."""


@dataclass
class ControlConfig:
    """All knobs of a run. YAML recipes use exactly these field names."""

    # run
    env_id: str = "Pendulum-v1"
    algo: str = "fpo++"  # one of ALGOS
    seed: int = 0
    total_timesteps: int = 100_000
    output_dir: str | None = None
    torch_threads: int = 1

    # rollout / advantage estimation
    num_envs: int = 8
    num_steps: int = 256  # steps per env per rollout; batch = num_envs * num_steps
    gamma: float = 0.99
    gae_lambda: float = 0.95
    normalize_obs: bool = True
    normalize_reward: bool = True

    # optimisation (shared by all algorithms)
    learning_rate: float = 3e-4
    anneal_lr: bool = True
    update_epochs: int = 10
    num_minibatches: int = 32
    clip_coef: float = 0.2  # PPO-clip epsilon (also the SPO epsilon under trust_region=aspo)
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"

    # Gaussian PPO baseline
    init_log_std: float = 0.0
    ent_coef: float = 0.0

    # flow policy / FPO / FPO++
    flow_steps: int = 10  # Euler steps from noise to action
    n_mc: int = 8  # (t, eps) draws per action for the CFM loss
    logratio_clamp_max: float = 10.0  # straight-through upper clamp of L_old - L_new (value clamped, gradient kept)
    per_sample_ratio: bool | None = None  # one ratio per (t, eps) draw (FPO++) instead of one per action (FPO)
    neg_adv_cfm_max: float | None = None  # where A < 0, clamp the new CFM loss at this value (FPO++: 20); 0 = off
    trust_region: str | None = None  # "ppo" (clip) or "aspo" (clip for A > 0, SPO penalty for A < 0; release)

    # DiPOD, per update (our extension): + dipod_beta * CFM loss of on-policy actions
    dipod_beta: float = 0.0
    dipod_source: str = "rollout"  # "rollout": buffer actions; "current": re-sample from the current policy

    # DiPOD for control as the paper ran it: self-distillation at initialisation, then unchanged FPO(++)
    self_distill_iters: int = 0  # gradient steps of the phase; 0 = off
    self_distill_rollout_steps: int = 8  # teacher env steps (per env) collected before each gradient step
    self_distill_batch_size: int = 1024
    self_distill_lr: float = 3e-4
    self_distill_weight_decay: float = 1e-4
    self_distill_max_grad_norm: float = 1.0

    # exact likelihood drift diagnostic (flow policies): exact log-density on a subsample of each rollout
    drift_samples: int = 64  # actions per update; 0 = off
    drift_ode_steps: int = 16  # RK4 steps of the probability-flow ODE

    # evaluation
    eval_every: int = 10_000  # env steps between deterministic evaluations
    eval_episodes: int = 5
    eval_seed: int = 10_000

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def method(self) -> str:
        return method_label(self.to_dict())

    def validate(self) -> ControlConfig:
        """Check types and ranges, then fill the algorithm's defaults into the ``None`` knobs. Idempotent."""
        check_types(self)
        if self.algo not in ALGOS:
            hint = "; fpo_dipod is now algo fpo (or fpo++) with dipod_beta 0.05" if self.algo == "fpo_dipod" else ""
            raise ConfigError(f"algo must be one of {ALGOS}, got {self.algo!r}{hint}")
        for key, value in ALGO_DEFAULTS.get(self.algo, ALGO_DEFAULTS["fpo"]).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.trust_region not in TRUST_REGIONS:
            raise ConfigError(f"trust_region must be one of {TRUST_REGIONS}, got {self.trust_region!r}")
        if self.dipod_source not in ("rollout", "current"):
            raise ConfigError(f"dipod_source must be 'rollout' or 'current', got {self.dipod_source!r}")
        from .policy import ACTIVATIONS

        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        positive = ("total_timesteps", "num_envs", "num_steps", "update_epochs", "num_minibatches", "flow_steps",
                    "n_mc", "eval_every", "eval_episodes", "torch_threads", "self_distill_rollout_steps",
                    "self_distill_batch_size", "drift_ode_steps", "learning_rate", "clip_coef", "max_grad_norm",
                    "logratio_clamp_max", "self_distill_lr", "self_distill_max_grad_norm")  # fmt: skip
        for key in positive:
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)!r}")
        for key in ("dipod_beta", "neg_adv_cfm_max", "self_distill_iters", "drift_samples", "vf_coef", "ent_coef",
                    "self_distill_weight_decay"):  # fmt: skip
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        for key in ("gamma", "gae_lambda"):
            if not 0 < getattr(self, key) <= 1:
                raise ConfigError(f"{key} must be in (0, 1], got {getattr(self, key)!r}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ConfigError(f"hidden_sizes must be a non-empty list of positive ints, got {self.hidden_sizes!r}")
        if self.batch_size % self.num_minibatches:
            raise ConfigError(
                f"num_envs * num_steps ({self.batch_size}) must be divisible by num_minibatches ({self.num_minibatches})"
            )
        if self.algo == "ppo" and (self.dipod_beta > 0 or self.self_distill_iters > 0):
            raise ConfigError("dipod_beta and self_distill_iters act on flow policies: use algo fpo or fpo++")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def method_label(cfg: dict[str, Any]) -> str:
    """The method of a run: algo plus the DiPOD add-ons in use (``fpo++``, ``fpo++ +SD``, ``fpo++ +DiPOD``)."""
    label = str(cfg.get("algo"))
    if (cfg.get("self_distill_iters") or 0) > 0:
        label += " +SD"
    if (cfg.get("dipod_beta") or 0) > 0:
        label += " +DiPOD"
    return label


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the field's type hint (ints are accepted for floats, bools never for numbers)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def check_types(cfg: ControlConfig) -> None:
    hints = typing.get_type_hints(ControlConfig)
    for f in dataclasses.fields(ControlConfig):
        value = getattr(cfg, f.name)
        if not _type_ok(value, hints[f.name]):
            extra = " (a finite number)" if isinstance(value, float) else ""
            raise ConfigError(
                f"config key {f.name!r} must be {_type_name(hints[f.name])}{extra}, got {type(value).__name__} {value!r}"
            )


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file as a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not a text file: {err}") from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of ControlConfig keys, got {type(values).__name__}")
    return values


def load_config(path: str | Path | None = None, **overrides: Any) -> ControlConfig:
    """Defaults < YAML file < keyword overrides (``None`` values are ignored)."""
    values: dict[str, Any] = read_yaml(path) if path is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(ControlConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        hints = [f"{k} -> {RENAMED[k]}" for k in unknown if k in RENAMED]
        raise ConfigError(f"unknown config keys: {unknown}" + (f"; renamed: {'; '.join(hints)}" if hints else ""))
    hints = typing.get_type_hints(ControlConfig)
    for key, value in values.items():  # PyYAML reads 3e-4 (no dot) as a string: accept numeric text for floats
        if isinstance(value, str) and float in typing.get_args(hints[key]) + (hints[key],):
            try:
                values[key] = float(value)
            except ValueError:
                pass
    return ControlConfig(**values).validate()
