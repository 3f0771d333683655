"""Continuous control with flow-matching policies: PPO, FPO, FPO++ and DiPOD on gymnasium tasks.

Needs the ``control`` extra (``gymnasium[mujoco]``, ``mujoco``). Modules, top-down:
``config`` (run settings) -> ``trainer`` (rollouts, GAE, update loop, self-distillation at init, drift probe)
-> ``policy`` (flow / Gaussian policies) -> ``fpo`` (losses as pure tensor functions) and ``likelihood`` (exact flow
log-density); ``envs`` (vector envs, normalisers); ``report`` (CSV, plots, tables).
"""

from .config import ALGOS, ConfigError, ControlConfig, load_config
from .fpo import (
    cfm_loss,
    clipped_surrogate,
    draw_cfm_noise,
    fpo_loss,
    gae,
    gaussian_ppo_loss,
    straight_through_clamp,
)
from .likelihood import flow_log_likelihood
from .policy import Critic, FlowPolicy, GaussianPolicy
from .report import aggregate
from .trainer import ControlTrainer, run_experiment

__all__ = [
    "ALGOS",
    "ConfigError",
    "ControlConfig",
    "ControlTrainer",
    "Critic",
    "FlowPolicy",
    "GaussianPolicy",
    "aggregate",
    "cfm_loss",
    "clipped_surrogate",
    "draw_cfm_noise",
    "flow_log_likelihood",
    "fpo_loss",
    "gae",
    "gaussian_ppo_loss",
    "load_config",
    "run_experiment",
    "straight_through_clamp",
]
