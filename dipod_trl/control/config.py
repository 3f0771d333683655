"""Configuration for continuous-control runs: one flat dataclass, loadable from YAML and overridable from the CLI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ALGOS = ("ppo", "fpo", "fpo_dipod")


@dataclass
class ControlConfig:
    """All knobs of a run. YAML recipes use exactly these field names."""

    # run
    env_id: str = "Pendulum-v1"
    algo: str = "fpo_dipod"  # one of ALGOS
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
    clip_coef: float = 0.2
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"

    # Gaussian PPO baseline
    init_log_std: float = 0.0
    ent_coef: float = 0.0

    # flow policy / FPO
    flow_steps: int = 10  # Euler steps from noise to action
    n_mc: int = 8  # (t, eps) draws per action for the CFM loss
    clip_logratio: float = 1.0  # clamp |L_old - L_new| before exp
    dipod_beta: float = 0.05  # weight of the on-policy self-distillation term (used by algo=fpo_dipod only)
    dipod_source: str = "rollout"  # "rollout": buffer actions; "current": re-sample from the current policy
    distill_iters: int = 0  # optional warm-up: rollout iterations of self-distillation from a frozen initial copy

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

    def validate(self) -> ControlConfig:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        if self.dipod_source not in ("rollout", "current"):
            raise ValueError(f"dipod_source must be 'rollout' or 'current', got {self.dipod_source!r}")
        if self.batch_size % self.num_minibatches:
            raise ValueError("num_envs * num_steps must be divisible by num_minibatches")
        if self.flow_steps < 1 or self.n_mc < 1:
            raise ValueError("flow_steps and n_mc must be >= 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, **overrides: Any) -> ControlConfig:
    """Defaults < YAML file < keyword overrides (``None`` values are ignored)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(yaml.safe_load(Path(path).read_text()) or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(ControlConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    return ControlConfig(**values).validate()
