"""Losses as pure functions on tensors: CFM loss, PPO / FPO / FPO++ surrogates, the DiPOD term, and GAE.

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
    """Conditional flow-matching loss of each draw, shape (B, n): ``mean_d (v(x_t, t, o) - (a - eps))^2``.

    Its mean over draws, ``L(a | o)``, bounds the negative log-likelihood up to weighting and constants, which is
    what FPO exploits: ``exp(L_old - L_new)`` stands in for the likelihood ratio.
    """
    n = t.shape[1]
    a = act.unsqueeze(1).expand(-1, n, -1)
    o = obs.unsqueeze(1).expand(-1, n, -1)
    x_t = (1.0 - t.unsqueeze(-1)) * eps + t.unsqueeze(-1) * a
    err = velocity(x_t, t, o) - (a - eps)
    return err.pow(2).mean(-1)


def straight_through_clamp(x: Tensor, max: float) -> Tensor:
    """Value ``min(x, max)``, gradient of the identity: a safeguard that never zeroes the gradient."""
    return x + (x.clamp(max=max) - x).detach()


def clipped_surrogate(
    logratio: Tensor, adv: Tensor, clip_coef: float, trust_region: str = "ppo"
) -> tuple[Tensor, dict[str, float]]:
    """Policy loss on ratios ``r = exp(logratio)``, averaged over all entries, plus diagnostics.

    ``adv`` (B,) broadcasts over trailing dims of ``logratio`` (per-sample ratios: (B, n)).
    ``ppo``: ``-min(r A, clip(r, 1-c, 1+c) A)``. ``aspo`` (FPO++): the PPO term where A > 0, the SPO penalty
    ``-(r A - |A| (r - 1)^2 / (2c))`` where A <= 0.
    """
    ratio = logratio.exp()
    adv = adv.reshape(adv.shape + (1,) * (ratio.dim() - adv.dim()))
    ppo = -torch.min(ratio * adv, ratio.clamp(1 - clip_coef, 1 + clip_coef) * adv)
    if trust_region == "ppo":
        per_entry = ppo
    elif trust_region == "aspo":
        spo = -(ratio * adv - adv.abs() / (2 * clip_coef) * (ratio - 1).pow(2))
        per_entry = torch.where(adv > 0, ppo, spo)
    else:
        raise ValueError(f"trust_region must be 'ppo' or 'aspo', got {trust_region!r}")
    with torch.no_grad():
        stats = {
            "approx_kl": ((ratio - 1) - logratio).mean().item(),
            "clipfrac": ((ratio - 1).abs() > clip_coef).float().mean().item(),
            "ratio_mean": ratio.mean().item(),
        }
    return per_entry.mean(), stats


def fpo_loss(
    new_cfm: Tensor,
    old_cfm: Tensor,
    adv: Tensor,
    clip_coef: float,
    *,
    per_sample_ratio: bool = False,
    logratio_clamp_max: float = 10.0,
    neg_adv_cfm_max: float = 0.0,
    trust_region: str = "ppo",
    dipod_cfm: Tensor | None = None,
    dipod_beta: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """FPO (defaults) or FPO++ surrogate on per-draw CFM losses (B, n) of identical draws, optionally + DiPOD.

    - ``per_sample_ratio``: FPO++ uses one ratio ``exp(l_old_i - l_new_i)`` per draw; FPO one per action,
      ``exp(mean_i l_old_i - mean_i l_new_i)``.
    - ``logratio_clamp_max``: straight-through upper clamp of the log-ratio (keeps ``exp`` finite, keeps the gradient).
    - ``neg_adv_cfm_max`` > 0 (FPO++): where A < 0, the new CFM loss is clamped (hard) at this value, so pushing an
      already unlikely bad action further away stops contributing gradient.
    - ``dipod_beta * mean(dipod_cfm)``: the per-update DiPOD term, the CFM loss of the policy on its own samples.
    """
    if neg_adv_cfm_max > 0:
        neg = (adv < 0).reshape(-1, *([1] * (new_cfm.dim() - 1)))
        new_cfm = torch.where(neg, new_cfm.clamp(max=neg_adv_cfm_max), new_cfm)
    logratio = old_cfm - new_cfm if per_sample_ratio else old_cfm.mean(-1) - new_cfm.mean(-1)
    logratio = straight_through_clamp(logratio, logratio_clamp_max)
    loss, stats = clipped_surrogate(logratio, adv, clip_coef, trust_region)
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
