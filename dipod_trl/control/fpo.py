"""Losses as pure functions on tensors: CFM loss, PPO / FPO clipped surrogates, the DiPOD term, and GAE.

Conventions: actions live in the normalised box (roughly [-1, 1]^d); the flow interpolant is
``x_t = (1 - t) * eps + t * a`` (t=0 noise, t=1 action) and its velocity target is ``a - eps``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_t, t, obs) -> velocity, broadcast over leading dims


def draw_cfm_noise(
    batch: int, n_mc: int, act_dim: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Monte-Carlo draws for the CFM loss: ``t`` of shape (B, n) in [0, 1) and ``eps`` of shape (B, n, d)."""
    t = torch.rand(batch, n_mc, generator=generator)
    eps = torch.randn(batch, n_mc, act_dim, generator=generator)
    return t, eps


def cfm_loss(velocity: VelocityFn, obs: Tensor, act: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Per-sample conditional flow-matching loss, shape (B,).

    ``L(a | o) = mean_i mean_d (v(x_{t_i}, t_i, o) - (a - eps_i))^2`` over the n draws ``(t_i, eps_i)``.
    It upper-bounds the negative log-likelihood up to constants and weighting, which is what FPO exploits.
    """
    n = t.shape[1]
    a = act.unsqueeze(1).expand(-1, n, -1)
    o = obs.unsqueeze(1).expand(-1, n, -1)
    x_t = (1.0 - t.unsqueeze(-1)) * eps + t.unsqueeze(-1) * a
    err = velocity(x_t, t, o) - (a - eps)
    return err.pow(2).mean(-1).mean(-1)


def clipped_surrogate(logratio: Tensor, adv: Tensor, clip_coef: float) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip loss ``-E[min(r A, clip(r, 1-c, 1+c) A)]`` with ``r = exp(logratio)``, plus diagnostics."""
    ratio = logratio.exp()
    loss = -torch.min(ratio * adv, ratio.clamp(1 - clip_coef, 1 + clip_coef) * adv).mean()
    with torch.no_grad():
        stats = {
            "approx_kl": ((ratio - 1) - logratio).mean().item(),
            "clipfrac": ((ratio - 1).abs() > clip_coef).float().mean().item(),
            "ratio_mean": ratio.mean().item(),
        }
    return loss, stats


def fpo_loss(
    new_cfm: Tensor,
    old_cfm: Tensor,
    adv: Tensor,
    clip_coef: float,
    clip_logratio: float,
    dipod_cfm: Tensor | None = None,
    dipod_beta: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """FPO surrogate, optionally with the DiPOD term.

    The likelihood ratio is replaced by ``exp(L_old - L_new)`` (CFM losses on identical draws), clamped in log
    space to ``[-clip_logratio, clip_logratio]`` before the exponential. DiPOD adds ``dipod_beta * mean(dipod_cfm)``:
    the CFM loss of the policy on its own on-policy samples, which keeps the bound tight on what the policy samples.
    """
    logratio = (old_cfm - new_cfm).clamp(-clip_logratio, clip_logratio)
    loss, stats = clipped_surrogate(logratio, adv, clip_coef)
    if dipod_cfm is not None and dipod_beta != 0.0:
        dipod = dipod_cfm.mean()
        loss = loss + dipod_beta * dipod
        stats["dipod_cfm"] = dipod.item()
    return loss, stats


def gaussian_ppo_loss(
    new_logp: Tensor, old_logp: Tensor, entropy: Tensor, adv: Tensor, clip_coef: float, ent_coef: float
) -> tuple[Tensor, dict[str, float]]:
    """Standard PPO-clip on exact Gaussian log-likelihood ratios, with an optional entropy bonus."""
    loss, stats = clipped_surrogate(new_logp - old_logp, adv, clip_coef)
    stats["entropy"] = entropy.mean().item()
    return loss - ent_coef * entropy.mean(), stats


def value_loss(pred: Tensor, returns: Tensor) -> Tensor:
    return 0.5 * (pred - returns).pow(2).mean()


def gae(rewards: Tensor, values: Tensor, dones: Tensor, last_value: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates, all tensors (T, N) except ``last_value`` (N,).

    ``dones[t]`` marks that the episode ended at step t (terminated or truncated); truncation is expected to be
    handled by the caller by bootstrapping the reward with the value of the final observation.
    """
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for step in reversed(range(rewards.shape[0])):
        next_value = last_value if step == rewards.shape[0] - 1 else values[step + 1]
        nonterminal = 1.0 - dones[step]
        delta = rewards[step] + gamma * next_value * nonterminal - values[step]
        running = delta + gamma * lam * nonterminal * running
        adv[step] = running
    return adv
