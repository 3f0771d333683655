"""Continuous control with flow-matching policies: PPO, FPO and FPO + DiPOD on gymnasium tasks.

Needs the ``control`` extra (``gymnasium[mujoco]``, ``mujoco``). Modules, top-down:
``config`` (run settings) -> ``trainer`` (rollouts, GAE, update loop) -> ``policy`` (flow / Gaussian policies)
-> ``fpo`` (losses as pure tensor functions); ``envs`` (vector envs, normalisers); ``report`` (CSV, plots, tables).
"""

from .config import ALGOS, ControlConfig, load_config
from .fpo import cfm_loss, clipped_surrogate, draw_cfm_noise, fpo_loss, gae, gaussian_ppo_loss
from .policy import Critic, FlowPolicy, GaussianPolicy
from .report import aggregate
from .trainer import ControlTrainer, run_experiment

__all__ = [
    "ALGOS",
    "ControlConfig",
    "ControlTrainer",
    "Critic",
    "FlowPolicy",
    "GaussianPolicy",
    "aggregate",
    "cfm_loss",
    "clipped_surrogate",
    "draw_cfm_noise",
    "fpo_loss",
    "gae",
    "gaussian_ppo_loss",
    "load_config",
    "run_experiment",
]
