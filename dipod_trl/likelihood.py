"""Likelihood estimators for masked diffusion LMs, as pure functions of (model, ids, masks, seeds).

`ELBO(x) = E_{k ~ U{1..L}, M ~ U(subsets of size k)} [ (L / k) * sum_{i in M} log p(x_i | x with M masked) ]`

is the masked-diffusion evidence lower bound of a completion of `L` tokens given its prompt (equivalently, the
average over random unmasking orders of the any-order autoregressive log-likelihood). Returned per token, so that
summing over the completion gives the per-sequence estimate and TRL's per-token plumbing (old / reference log-probs)
carries it unchanged. The masks (plain Monte Carlo, the variance-reduced schemes, SPG's block masks) and the
coupled randomness behind them live in `dipod_trl.estimators`; `eos_convention` decides what the model sees and
what is scored around the end-of-sequence token.

Block-diffusion models (`adapter.block_size`): the ELBO is the sum over blocks of each block's masked-diffusion
ELBO given the prompt and the clean blocks before it, `sum_b E[(L_b / k_b) sum_{i in M_b} log p(y_i | x, y_<b,
noised y_b)]`, with masks drawn per block (`segments`). `completion_logps` scores every block of a row in one
forward of `[prefix ; noised copy ; clean copy]` under the block-diffusion mask (`dipod_trl.block_attention`).
"""

from __future__ import annotations

import torch
from torch import nn
from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

from .block_attention import diffusion_layout, positions_of
from .estimators import (  # noqa: F401  (hashed_uniform, sample_seeds, STREAM_*: also importable from here)
    STREAM_DIAGNOSTICS,
    STREAM_ELBO,
    STREAM_ONE_STEP,
    draw_masks,
    hashed_uniform,
    per_token_weights,
    sample_seeds,
)
from .models import DiffusionLM

AFTER_EOS = ("hidden", "visible", "masked")


def elbo_masks(
    seeds: torch.Tensor, completion_mask: torch.Tensor, num_samples: int, stream: int = STREAM_ELBO,
    masking: str = "uniform", segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks `(S, B, C)` and weights `(S, B)` of the ELBO's Monte-Carlo samples (`masking`: a completion-only scheme;
    with `segments`, per block and per-token weights `(S, B, C)`).

    Plain Monte Carlo (`"uniform"`): for each sample `k ~ U{1..L}` with `L` the number of valid completion tokens,
    then a uniformly random subset of `k` valid positions, weight `L / k`. Rows with `L = 0` get an empty mask and
    weight 0.
    """
    draw = draw_masks(masking, seeds, completion_mask, num_samples, stream, segments=segments)
    return draw.masks, draw.weights


def eos_convention(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_length: int,
    eos_token_ids: list[int],
    mask_token_id: int,
    score_eos: bool = True,
    after_eos: str = "hidden",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the likelihood sees and scores around the first EOS: `(input_ids, attention_mask, scored (B, C))`.

    `completion_mask` (the last `C` columns of `attention_mask`) covers the completion up to and including its first
    EOS. `score_eos=False` leaves that EOS unscored; unscored completion positions (the EOS then, and the padding
    after it) are then, per `after_eos`: `"hidden"` attention-masked (pad tokens, seen as such by models that ignore
    the attention mask, like LLaDA's own code); `"visible"` EOS tokens, attended, as the canvas the sampler produced
    (the FPO release); `"masked"` mask tokens, attended (SPG's release). Defaults change nothing. Idempotent.
    """
    if after_eos not in AFTER_EOS:
        raise ValueError(f"after_eos must be one of {AFTER_EOS}, got {after_eos!r}.")
    c = completion_length
    completion_ids = input_ids[:, -c:]
    valid = attention_mask[:, -c:].bool()
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_token_ids), device=input_ids.device))
    scored = valid if score_eos else valid & ~is_eos
    if score_eos and after_eos == "hidden":
        return input_ids, attention_mask, scored
    unscored = ~scored
    ids, attn = input_ids.clone(), attention_mask.clone()
    if after_eos == "hidden":
        attn[:, -c:] = scored.to(attn.dtype)
        return ids, attn, scored
    if after_eos == "visible":
        has_eos = is_eos.any(1)
        first = is_eos.int().argmax(1)
        row_eos = torch.where(has_eos, completion_ids.gather(1, first.unsqueeze(1))[:, 0], int(eos_token_ids[0]))
        ids[:, -c:] = torch.where(unscored, row_eos.unsqueeze(1), completion_ids)
    else:
        ids[:, -c:] = completion_ids.masked_fill(unscored, mask_token_id)
    attn[:, -c:] = 1
    return ids, attn, scored


def masked_token_logps(
    model: nn.Module,
    adapter: DiffusionLM,
    noisy_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: torch.Tensor,
    score: torch.Tensor,
    batch_size: int | None = None,
    compute_entropy: bool = False,
    position_ids: torch.Tensor | None = None,
    end: int | None = None,
    token_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`log p(targets | noisy_ids)` on the `C` columns before `end` (default: the last `C`) where `score` is True
    (0 elsewhere), shape `(N, C)`.

    Only the scored positions go through the lm-head (models with `sparse_logits`) and the log-softmax (TRL's
    `selective_log_softmax`, fused on GPU). `batch_size` bounds the rows per forward. A 4-D `attention_mask` goes
    to the model as given, with `position_ids`.
    """
    num_rows, c = targets.shape
    batch_size = batch_size or num_rows
    logps = torch.zeros(num_rows, c, device=targets.device)
    entropies = torch.zeros(num_rows, c, device=targets.device) if compute_entropy else None
    pieces_logp, pieces_ent = [], []
    for start in range(0, num_rows, batch_size):
        sl = slice(start, start + batch_size)
        where = score[sl]
        if not where.any():  # e.g. quadrature's low noise level can leave a whole chunk unmasked: no forward
            continue
        keep = torch.zeros_like(noisy_ids[sl], dtype=torch.bool)
        stop = noisy_ids.size(1) if end is None else end
        keep[:, stop - c:stop] = where
        positions = None if position_ids is None else position_ids[sl]
        tokens = None if token_mask is None else token_mask[sl]
        chosen = adapter.scored_logits(model, noisy_ids[sl], attention_mask[sl], keep, positions, tokens)
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


def completion_segments(adapter: DiffusionLM, attention_mask: torch.Tensor, completion_length: int):
    """The block of each completion position `(B, C)` for block-diffusion models; `None` for full attention."""
    if adapter.attention != "block_causal":
        return None
    return positions_of(attention_mask)[:, -completion_length:] // adapter.block_size


def completion_logps(
    model: nn.Module,
    adapter: DiffusionLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_length: int,
    noise: torch.Tensor,
    score: torch.Tensor,
    batch_size: int | None = None,
    compute_entropy: bool = False,
    context: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`log p(y_i | x, y with the `noise` positions masked)` at the `score` positions, for `N` noised copies.

    `noise`, `score`: `(N, B, C)` over the completion; `context (N, B, T)`: further positions of the whole row to
    mask (full attention only). Returns log-probs (and entropies) `(N, B, C)`, 0 where not scored, in forwards of at
    most `batch_size` rows (default `B`). Block-diffusion models score all blocks in one forward of the layout.
    """
    n, b, c = noise.shape
    targets = input_ids[:, -c:].repeat(n, 1)
    kwargs = dict(batch_size=batch_size or b, compute_entropy=compute_entropy)
    if adapter.block_size is None:
        noisy = input_ids.unsqueeze(0).repeat(n, 1, 1)
        if context is not None:
            noisy = noisy.masked_fill(context, adapter.mask_token_id)
        noisy[:, :, -c:] = noisy[:, :, -c:].masked_fill(noise, adapter.mask_token_id)
        logps, ent = masked_token_logps(model, adapter, noisy.view(n * b, -1), attention_mask.repeat(n, 1), targets,
                                        score.reshape(n * b, c), **kwargs)
    else:
        if context is not None:
            raise ValueError("Context masks apply to full-attention models only.")
        layout = diffusion_layout(input_ids, attention_mask, c, adapter.block_size)
        logps, ent = masked_token_logps(
            model, adapter, layout.noised(noise, adapter.mask_token_id), layout.mask.repeat(n, 1, 1, 1), targets,
            score.reshape(n * b, c), position_ids=layout.position_ids.repeat(n, 1), end=layout.start + layout.span,
            token_mask=layout.valid.repeat(n, 1), **kwargs)
    return logps.view(n, b, c), None if ent is None else ent.view(n, b, c)


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
    *,
    masking: str = "uniform",
    scored: torch.Tensor | None = None,
    block_length: int | None = None,
    p_mask_context: float = 0.0,
    compute_entropy: bool = False,
    noise_options: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ELBO's Monte-Carlo draws: log-probs `(S, B, C)` at masked positions (0 elsewhere), masks, weights.

    `masking` picks the scheme of `dipod_trl.estimators` (`block_length`, `p_mask_context`: `block_random` only);
    `scored` (default: the completion's attention mask) are the positions the ELBO covers. The `S * B` masked
    copies go through the model in forwards of at most `batch_size` rows (default `B`: one copy of every sequence
    per forward). Block-diffusion models draw masks per block; their weights are per token `(S, B, C)`.
    With `compute_entropy`, the entropies `(S, B, C)` of the predictive distributions are returned fourth.
    Uniform-noise models (`adapter.noise == "uniform"`) use `uniform_likelihood.uniform_elbo_draws` with
    `noise_options` (its estimator, self-conditioning, EOS and fill tokens), per-token weights `(S, B, C)`.
    """
    c = completion_length
    if adapter.noise == "uniform":
        from .uniform_likelihood import uniform_elbo_draws

        if masking != "uniform" or compute_entropy:
            raise ValueError(f"Uniform-noise models draw their own corruption (t ~ U(eps, 1 - eps)): elbo_masking "
                             f"{masking!r} and per-token entropies are mask-noise features; use elbo_masking='uniform'.")
        return uniform_elbo_draws(model, input_ids, attention_mask, c, seeds, num_samples, scored=scored,
                                  **(noise_options or {}))
    valid = attention_mask[:, -c:].bool() if scored is None else scored.bool()
    draw = draw_masks(masking, seeds, valid, num_samples, stream, block_length=block_length,
                      prompt_valid=attention_mask[:, : input_ids.size(1) - c], p_mask_context=p_mask_context,
                      segments=completion_segments(adapter, attention_mask, c))
    logps, entropies = completion_logps(model, adapter, input_ids, attention_mask, c, draw.masks, draw.masks,
                                        batch_size, compute_entropy, draw.context)
    if compute_entropy:
        return logps, draw.masks, draw.weights, entropies
    return logps, draw.masks, draw.weights


def mean_over_masked_draws(values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per position `(B, C)`: the mean of `values (S, B, C)` over the draws that masked it (0 where none did), e.g.
    the predictive entropy at each scored position."""
    hits = masks.to(values.dtype)
    return (values * hits).sum(0) / hits.sum(0).clamp(min=1.0)


def elbo_per_token(*args, **kwargs) -> torch.Tensor:
    """Monte-Carlo ELBO per token `(B, C)`: `mean_s w_s * 1[i in M_s] * log p(x_i | x_masked)` (`w_s = L/k_s` for
    plain MC).

    Summing over the completion gives the sequence estimate; arguments as `elbo_draws`.
    """
    logps, _, weights = elbo_draws(*args, **kwargs)
    return (logps * per_token_weights(weights)).mean(dim=0)


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
    scored: torch.Tensor | None = None,
    keep_unscored: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """diffu-GRPO's one-step estimate: `log p(x_i | prompt partly masked, completion fully masked)` per token.

    Each prompt token is masked with probability `p_mask_prompt` (seeded per sample); the whole completion is masked
    (except, with `keep_unscored`, the positions outside `scored`, left as `eos_convention` wrote them). For
    block-diffusion models every block is fully masked and conditioned on the clean blocks before it. Returns
    per-token log-probs `(B, C)` (0 where not scored) and, if asked, the per-token entropies.
    """
    if adapter.noise != "mask":
        raise ValueError("likelihood_estimator='one_step' (diffu-GRPO) reads the model with the completion fully masked; "
                         "a uniform-noise model has no mask token. Use 'elbo' (FPO) or 'spg'.")
    c = completion_length
    valid = attention_mask[:, -c:].bool() if scored is None else scored.bool()
    noisy = input_ids.clone()
    prompt_len = input_ids.size(1) - c
    if prompt_len > 0 and p_mask_prompt > 0:
        u = hashed_uniform(seeds, STREAM_ONE_STEP, 0, prompt_len)
        prompt_hit = (u < p_mask_prompt) & attention_mask[:, :prompt_len].bool()
        noisy[:, :prompt_len] = noisy[:, :prompt_len].masked_fill(prompt_hit, adapter.mask_token_id)
    hide = valid if keep_unscored else torch.ones_like(valid)
    if adapter.block_size is not None:  # every block fully masked, given the clean blocks before it
        hide = hide & attention_mask[:, -c:].bool()
    logps, entropies = completion_logps(model, adapter, noisy, attention_mask, c, hide.unsqueeze(0),
                                        valid.unsqueeze(0), batch_size, compute_entropy)
    return logps[0], None if entropies is None else entropies[0]
