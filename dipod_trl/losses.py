"""Losses as pure functions on per-sequence or per-token tensors; the trainer only wires them up.

Shapes: `B` sequences, `C` completion positions, `S` Monte-Carlo samples. Every function returns per-sequence
values; `aggregate` turns them into a scalar under the chosen normalisation.
"""

from __future__ import annotations

import math

import torch


def sequence_elbo(per_token: torch.Tensor, completion_mask: torch.Tensor, normalization: str) -> torch.Tensor:
    """ELBO per sequence `(B,)` from per-token terms: summed over tokens, or averaged for `normalization="token"`."""
    mask = completion_mask.to(per_token.dtype)
    total = (per_token * mask).sum(dim=-1)
    if normalization == "token":
        return total / mask.sum(dim=-1).clamp(min=1.0)
    return total


def aggregate(per_sequence: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the valid sequences (those with at least one completion token) of a per-sequence loss.

    With `lengths` (completion lengths `L_b`), the length-weighted mean `sum_b L_b l_b / sum_b L_b` instead, as SPG's
    release weights its sequence losses and DiPOD term.
    """
    weight = valid.to(per_sequence.dtype)
    if lengths is not None:
        weight = weight * lengths.to(per_sequence.dtype)
    return (per_sequence * weight).sum() / weight.sum().clamp(min=1.0)


def fpo_policy_loss(
    elbo_new: torch.Tensor,
    elbo_old: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    delta: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FPO: PPO-clip on the sequence ratio `exp(ELBO_new - ELBO_old)`. Returns (per-sequence loss, ratio).

    `delta` caps the ratio of negative-advantage sequences from above (two-sided clipping, as TRL's `delta`).
    The log-ratio is clamped to +-20 only to keep `exp` finite; inside that range the objective is exact.
    """
    ratio = torch.exp((elbo_new - elbo_old).clamp(-20.0, 20.0))
    capped = ratio.clamp(max=delta) if delta is not None else ratio
    unclipped = capped * advantages
    clipped = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high) * advantages
    return -torch.minimum(unclipped, clipped), ratio


def elbo_kl(elbo_new: torch.Tensor, elbo_ref: torch.Tensor) -> torch.Tensor:
    """Sequence KL penalty used with ELBO estimators: the first-order estimate `ELBO_new - ELBO_ref`.

    Matches the DiPOD release's FPO code. Note its gradient is `+grad ELBO_new`: with `beta > 0` it pushes the ELBO
    of sampled completions down, against the DiPOD term.
    """
    return elbo_new - elbo_ref


def dipod_regularizer(
    elbo: torch.Tensor, valid: torch.Tensor, dipod_beta: float, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """DiPOD: `dipod_beta * (-ELBO)` of the policy's own completions, averaged as `aggregate` (keeps the graph)."""
    return dipod_beta * aggregate(-elbo, valid, lengths)


def spg_eubo(
    token_logps: torch.Tensor,
    masks: torch.Tensor,
    weights: torch.Tensor,
    completion_mask: torch.Tensor,
    beta: float,
    normalization: str,
) -> torch.Tensor:
    """SPG's Renyi upper bound per sequence `(B,)`, on the same scale as `sequence_elbo`.

    Inputs are the ELBO's Monte-Carlo draws: raw log-probs `(S, B, C)` at masked positions, the masks, and the
    weights `L / k` (the inverse mask rate; per token `(S, B, C)`, `L_b / k_b`, for block models). Per token `i`:
    `S_i = mean_s 1[i in M_s] * p_s(x_i)^beta * (L / k_s)`, and `EUBO = (1 / beta) * mean_{i : S_i > 0} log S_i`
    per token, times `L` for `normalization="sequence"`.
    """
    num_samples = token_logps.size(0)
    weights = weights if weights.dim() == 3 else weights.unsqueeze(-1)  # per row, or per token (block models)
    log_w = beta * token_logps + torch.log(weights.clamp(min=1e-12))
    log_w = log_w.masked_fill(~masks, -math.inf)
    log_s = torch.logsumexp(log_w, dim=0) - math.log(num_samples)  # (B, C); -inf where never masked
    seen = masks.any(dim=0)
    per_token = torch.where(seen, log_s, 0.0).sum(-1) / seen.sum(-1).clamp(min=1) / beta
    if normalization == "token":
        return per_token
    return per_token * completion_mask.sum(-1).to(per_token.dtype)


def spg_policy_loss(
    elbo: torch.Tensor, eubo: torch.Tensor, advantages: torch.Tensor, omega: float
) -> torch.Tensor:
    """SPG's sandwich per sequence: `-A * ELBO` where `A > 0`, `-A * (omega * EUBO + (1 - omega) * ELBO)` else."""
    negative_bound = omega * eubo + (1.0 - omega) * elbo
    bound = torch.where(advantages > 0, elbo, negative_bound)
    return -advantages * bound
