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


# TRL's `loss_type`s that only aggregate (PPO-clip on the ratio); the others change the objective itself.
LOSS_TYPE_AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


def sequence_weights(
    lengths: torch.Tensor,
    rule: str,
    max_completion_length: int | None = None,
    num_tokens: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Weights `w (B,)` that turn per-sequence losses into the micro-batch loss `sum_b w_b l_b`.

    `lengths`: each completion's scored token count `L_b` (0: nothing scored, weight 0). `rule`: DiPOD's own
    `"mean"` (over the scored sequences) or `"length"` (`L_b / sum L`), or a TRL `loss_type`, aggregating a sequence
    loss exactly as TRL aggregates a per-sequence loss broadcast over the `L_b` tokens (its sequence-level
    importance sampling): `grpo` `1[L_b > 0] / B`; `bnpo` `L_b / sum L`; `dr_grpo` `L_b / (B * max_completion_length)`;
    `dapo` `L_b / num_tokens` (the completion tokens per micro-batch of the whole generation batch); `luspo` `L_b / B`.
    """
    length = lengths.float()
    scored = (length > 0).float()
    batch = length.size(0)
    if rule == "mean":
        return scored / scored.sum().clamp(min=1.0)
    if rule in ("length", "bnpo"):
        return length / length.sum().clamp(min=1.0)
    if rule == "grpo":
        return scored / batch
    if rule == "dr_grpo":
        return length / (batch * max_completion_length)
    if rule == "dapo":
        return length / torch.as_tensor(num_tokens, dtype=length.dtype, device=length.device).clamp(min=1.0)
    if rule == "luspo":
        return length / batch
    raise ValueError(f"Unknown aggregation {rule!r}: use 'mean', 'length' or one of {LOSS_TYPE_AGGREGATIONS}.")


def off_policy_keep(
    advantages: torch.Tensor, log_ratio: torch.Tensor, threshold: float
) -> torch.Tensor:
    """TRL's off-policy sequence mask (DeepSeek-V3.2) on a sequence ratio: keep a sequence unless its advantage is
    negative and its per-token KL estimate `-log_ratio` (old minus new, per token) exceeds `threshold`. `(B,)`."""
    kl = -log_ratio.detach()
    return ((advantages >= 0) | (kl <= threshold)).to(log_ratio.dtype)


def fpo_policy_loss(
    elbo_new: torch.Tensor,
    elbo_old: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    delta: float | None = None,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FPO: PPO-clip on the sequence ratio `exp(ELBO_new - ELBO_old)`. Returns (per-sequence loss, ratio).

    `delta` caps the ratio of negative-advantage sequences from above (two-sided clipping, as TRL's `delta`).
    `lengths` (`L_b`): the log-ratio is divided by them, GSPO's length-normalised sequence ratio (TRL's
    `importance_sampling_level="sequence"`). The log-ratio is clamped to +-20 only to keep `exp` finite; inside that
    range the objective is exact.
    """
    log_ratio = elbo_new - elbo_old
    if lengths is not None:
        log_ratio = log_ratio / lengths.to(log_ratio.dtype).clamp(min=1.0)
    ratio = torch.exp(log_ratio.clamp(-20.0, 20.0))
    capped = ratio.clamp(max=delta) if delta is not None else ratio
    unclipped = capped * advantages
    clipped = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high) * advantages
    return -torch.minimum(unclipped, clipped), ratio


def elbo_kl(elbo_new: torch.Tensor, elbo_ref: torch.Tensor, ratio: torch.Tensor | None = None) -> torch.Tensor:
    """Sequence KL penalty used with ELBO estimators: the first-order estimate `ELBO_new - ELBO_ref`.

    Matches the DiPOD release's FPO code. Note its gradient is `+grad ELBO_new`: with `beta > 0` it pushes the ELBO
    of sampled completions down, against the DiPOD term. `ratio`: TRL's `use_bias_correction_kl`, the estimate times
    the sequence importance ratio, gradient included (on-policy the ratio is 1 and adds `kl * grad log ratio`).
    """
    kl = elbo_new - elbo_ref
    return kl if ratio is None else kl * ratio


def dipod_regularizer(elbo: torch.Tensor, weights: torch.Tensor, dipod_beta: float) -> torch.Tensor:
    """DiPOD: `dipod_beta * (-ELBO)` of the policy's own completions, weighted as the policy loss
    (`sequence_weights`; keeps the graph)."""
    return dipod_beta * (-elbo * weights).sum()


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
