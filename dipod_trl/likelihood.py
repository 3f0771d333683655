"""Likelihood estimators for masked diffusion LMs, as pure functions of (model, ids, masks, seeds).

`ELBO(x) = E_{k ~ U{1..L}, M ~ U(subsets of size k)} [ (L / k) * sum_{i in M} log p(x_i | x with M masked) ]`

is the masked-diffusion evidence lower bound of a completion of `L` tokens given its prompt (equivalently, the
average over random unmasking orders of the any-order autoregressive log-likelihood). Returned per token, so that
summing over the completion gives the per-sequence estimate and TRL's per-token plumbing (old / reference log-probs)
carries it unchanged.

Coupled randomness: every random draw is a counter-based hash of `(seed of the sample, stream, index)`, so the old,
reference and current estimates of one rollout see identical masks wherever and in whatever batch the sample is
evaluated (shuffled, split for gradient accumulation, reused for several iterations, on another rank).
"""

from __future__ import annotations

import torch
from torch import nn
from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

from .models import DiffusionLM

_M32 = 0xFFFFFFFF
STREAM_ELBO = 1  # masks of the ELBO estimate (policy ratio, KL, DiPOD term)
STREAM_ONE_STEP = 2  # prompt masks of the one-step estimator
STREAM_DIAGNOSTICS = 3  # reserved for drift diagnostics


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xorshift-multiply), on int64 tensors holding values in [0, 2^32)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def hashed_uniform(seeds: torch.Tensor, stream: int, sample: int, size: int) -> torch.Tensor:
    """Uniforms in (0, 1), shape `(B, size)`: a pure function of `(seeds[b], stream, sample, column)`."""
    key = _mix32(seeds.long() & _M32)
    key = _mix32(key ^ ((stream * 0x9E3779B1 + sample * 0x85EBCA77) & _M32))
    cols = torch.arange(size, device=seeds.device, dtype=torch.long)
    h = _mix32(key.unsqueeze(1) ^ _mix32((cols * 0xC2B2AE3D + 0x27D4EB2F) & _M32).unsqueeze(0))
    return (h.double() + 0.5) / 2.0**32


def sample_seeds(base_seed: int, step: int, rank: int, count: int, device=None) -> torch.Tensor:
    """Per-sample mask seeds for one generation round: deterministic in (base_seed, step, rank), distinct rows."""
    head = torch.tensor([(base_seed * 1000003 + step * 8191 + rank) & _M32], dtype=torch.long, device=device)
    return (hashed_uniform(head, stream=0, sample=0, size=count)[0] * 2.0**31).long()


def _rank_select(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the `counts[b]` smallest `scores` in each row (exact count, no per-row loop)."""
    order = scores.argsort(dim=-1, stable=True)
    cols = torch.arange(scores.size(-1), device=scores.device).expand_as(order).contiguous()
    ranks = torch.empty_like(order).scatter_(-1, order, cols)
    return ranks < counts.unsqueeze(-1)


def elbo_masks(
    seeds: torch.Tensor, completion_mask: torch.Tensor, num_samples: int, stream: int = STREAM_ELBO
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks `(S, B, C)` and weights `L / k` `(S, B)` for the ELBO's Monte-Carlo samples.

    For each sample: `k ~ U{1..L}` with `L` the number of valid completion tokens, then a uniformly random subset of
    `k` valid positions. Rows with `L = 0` get an empty mask and weight 0.
    """
    valid = completion_mask.bool()
    length = valid.sum(dim=1)
    masks, weights = [], []
    for s in range(num_samples):
        u_k = hashed_uniform(seeds, stream, 2 * s, 1)[:, 0]
        k = (1 + (u_k * length.double()).floor().long()).clamp(max=length.clamp(min=1))
        u_pos = hashed_uniform(seeds, stream, 2 * s + 1, valid.size(1)).masked_fill(~valid, 2.0)
        masks.append(_rank_select(u_pos, k) & valid)
        weights.append(torch.where(length > 0, length.double() / k.double(), 0.0))
    return torch.stack(masks), torch.stack(weights).float()


def masked_token_logps(
    model: nn.Module,
    adapter: DiffusionLM,
    noisy_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: torch.Tensor,
    score: torch.Tensor,
    batch_size: int | None = None,
    compute_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`log p(targets | noisy_ids)` on the last `C` positions where `score` is True (0 elsewhere), shape `(N, C)`.

    Only the scored positions go through the lm-head (models with `sparse_logits`) and the log-softmax (TRL's
    `selective_log_softmax`, fused on GPU). `batch_size` bounds the rows per forward.
    """
    num_rows, c = targets.shape
    batch_size = batch_size or num_rows
    logps = torch.zeros(num_rows, c, device=targets.device)
    entropies = torch.zeros(num_rows, c, device=targets.device) if compute_entropy else None
    pieces_logp, pieces_ent = [], []
    for start in range(0, num_rows, batch_size):
        sl = slice(start, start + batch_size)
        where = score[sl]
        keep = torch.zeros_like(noisy_ids[sl], dtype=torch.bool)
        keep[:, -c:] = where
        chosen = adapter.scored_logits(model, noisy_ids[sl], attention_mask[sl], keep)
        if compute_entropy:
            lp, ent = selective_log_softmax_and_entropy(chosen, targets[sl][where])
            pieces_ent.append(ent.float())
        else:
            lp = selective_log_softmax(chosen, targets[sl][where])
        pieces_logp.append(lp.float())
    logps = logps.masked_scatter(score, torch.cat(pieces_logp)) if pieces_logp else logps
    if compute_entropy and pieces_ent:
        entropies = entropies.masked_scatter(score, torch.cat(pieces_ent))
    return logps, entropies


def elbo_draws(
    model: nn.Module,
    adapter: DiffusionLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_length: int,
    seeds: torch.Tensor,
    num_samples: int,
    batch_size: int | None = None,
    stream: int = STREAM_ELBO,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ELBO's Monte-Carlo draws: log-probs `(S, B, C)` at masked positions (0 elsewhere), masks, weights `L/k`.

    The `S * B` masked copies go through the model in forwards of at most `batch_size` rows (default `B`: one sample
    of every sequence per forward).
    """
    c = completion_length
    completion_ids, completion_mask = input_ids[:, -c:], attention_mask[:, -c:]
    masks, weights = elbo_masks(seeds, completion_mask, num_samples, stream)
    s, b = masks.shape[:2]
    noisy = input_ids.unsqueeze(0).repeat(s, 1, 1)
    noisy[:, :, -c:] = completion_ids.masked_fill(masks, adapter.mask_token_id)
    logps, _ = masked_token_logps(
        model,
        adapter,
        noisy.view(s * b, -1),
        attention_mask.repeat(s, 1),
        completion_ids.repeat(s, 1),
        masks.view(s * b, c),
        batch_size=batch_size or b,
    )
    return logps.view(s, b, c), masks, weights


def elbo_per_token(*args, **kwargs) -> torch.Tensor:
    """Monte-Carlo ELBO per token `(B, C)`: `mean_s (L/k_s) * 1[i in M_s] * log p(x_i | x_masked)`.

    Summing over the completion gives the unbiased sequence estimate; arguments as `elbo_draws`.
    """
    logps, _, weights = elbo_draws(*args, **kwargs)
    return (logps * weights.unsqueeze(-1)).mean(dim=0)


def one_step_logps(
    model: nn.Module,
    adapter: DiffusionLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_length: int,
    seeds: torch.Tensor,
    p_mask_prompt: float,
    compute_entropy: bool = False,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """diffu-GRPO's one-step estimate: `log p(x_i | prompt partly masked, completion fully masked)` per token.

    Each prompt token is masked with probability `p_mask_prompt` (seeded per sample); the whole completion is masked.
    Returns per-token log-probs `(B, C)` (0 on padding) and, if asked, the per-token entropies.
    """
    c = completion_length
    completion_mask = attention_mask[:, -c:].bool()
    noisy = input_ids.clone()
    prompt_len = input_ids.size(1) - c
    if prompt_len > 0 and p_mask_prompt > 0:
        u = hashed_uniform(seeds, STREAM_ONE_STEP, 0, prompt_len)
        prompt_hit = (u < p_mask_prompt) & attention_mask[:, :prompt_len].bool()
        noisy[:, :prompt_len] = noisy[:, :prompt_len].masked_fill(prompt_hit, adapter.mask_token_id)
    noisy[:, -c:] = adapter.mask_token_id
    return masked_token_logps(
        model, adapter, noisy, attention_mask, input_ids[:, -c:], completion_mask, batch_size, compute_entropy
    )
