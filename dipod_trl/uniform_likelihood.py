"""Likelihood estimates of completions under DiffusionGemma (uniform-state noise, one canvas at a time).

Layout. A completion of `C` tokens after a left-padded prompt of `P` columns fills `K = ceil(C / canvas)` canvases;
canvas `k` covers completion columns `k * canvas ...`. It is predicted by the decoder from its corrupted copy, with
the encoder over the prompt and the clean canvases before it (the model call of TRL's `sft_diffusion_gemma.py`:
decoder positions `E + arange(canvas)`, `E = P + k * canvas` in columns, as `generate` counts them). The encoder is
causal, so ONE encoder pass over the clean `[prompt ; completion]` gives the exact prefix keys and values of every
canvas; each decoder call then reads the keys `generate` would hold at that canvas: all columns `< E` for
full-attention layers, the last `sliding_window - 1` for sliding layers (a `DynamicCache`'s), pads masked. Cost per
batch: one encoder pass over `(B, P + C)` (shared by all samples and canvases) plus, per sample and canvas, one
decoder call (two with `self_conditioning="two_pass"`) on the rows whose canvas holds scored tokens. Both
estimators keep only the decoder's logits for the backward (4 bytes per logit); the ELBO needs the whole
distribution at every position (a few more passes over the logits, recomputed in the backward).

Canvas targets follow the recipe: the completion up to its first EOS, then `fill_token_id` (the recipe's
`tokenizer.eos_token_id`) to the end of the canvas; the fill is scored for rows that end with an EOS and not for
truncated ones. The fill's terms live past the completion mask, so `fill="fold"` adds them to the row's last scored
position (the sum over the completion is then the canvas sum); `fill="drop"` leaves them out (they stay decoder
input).

Estimators (per-token terms `(S, B, C)`, weights `(S, B, C)`; `sum_i mean_s weights * terms` estimates the
sequence-level log-likelihood, the contract of `dipod_trl.likelihood.elbo_draws`):
- `"training"`: the recipe's objective, `log p(x_i | corrupted canvas)` at every canvas position (corrupted or not),
  weight 1; `-sum` is the recipe's canvas cross-entropy summed instead of averaged (it averages over positions).
- `"elbo"`: the continuous-time ELBO of uniform-state diffusion (UDLM, Schiff et al. 2024; see `elbo_integrand`;
  the noise the recipe trains with: `alpha_t = 1 - t`), an integral over `t` estimated by `t ~ U(eps, 1 - eps)`,
  weight `1 - 2 eps`: unbiased for the integral over `(eps, 1 - eps)`. Reconstruction at `t = 0` is the identity
  (`alpha_0 = 1`), the prior at `t = 1` is uniform: both terms vanish.

Coupled randomness (`dipod_trl.estimators.hashed_uniform`; streams 1-4 are taken there): stream 5 holds the noise
level of each canvas (`sample 2s`, column `k`) and the corruption indicators (`sample 2s + 1`, column = completion
position); stream 6 the replacement tokens (`sample s`), uniform over the whole vocabulary as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, bidirectional_mask_function

from .estimators import hashed_uniform
from .families import unwrap

STREAM_UNIFORM_NOISE = 5  # noise levels t (sample 2s, column = canvas) and corruption indicators (sample 2s + 1)
STREAM_UNIFORM_TOKENS = 6  # replacement tokens (sample s, column = completion position)
EPS = 1e-4  # t ~ U(eps, 1 - eps), the recipe's `SafeSpan(safety_epsilon=1e-4)`
ESTIMATORS = ("training", "elbo")
SELF_CONDITIONING = ("none", "two_pass")
FILL = ("fold", "drop")


class UniformDraw(NamedTuple):
    t: torch.Tensor  # (S, B, K) float64: noise level of each canvas
    corrupt: torch.Tensor  # (S, B, K * canvas) bool: replaced positions
    tokens: torch.Tensor  # (S, B, K * canvas) long: their replacements, uniform over the vocabulary


def uniform_corruption(seeds: torch.Tensor, num_canvases: int, canvas_length: int, vocab_size: int,
                       num_samples: int, eps: float = EPS) -> UniformDraw:
    """The corruption of `num_samples` copies of each row's canvases, a pure function of the row seeds."""
    n = num_canvases * canvas_length
    t, corrupt, tokens = [], [], []
    for s in range(num_samples):
        level = eps + (1 - 2 * eps) * hashed_uniform(seeds, STREAM_UNIFORM_NOISE, 2 * s, num_canvases)
        u = hashed_uniform(seeds, STREAM_UNIFORM_NOISE, 2 * s + 1, n)
        t.append(level)
        corrupt.append(u < level.repeat_interleave(canvas_length, dim=1))
        draw = hashed_uniform(seeds, STREAM_UNIFORM_TOKENS, s, n)
        tokens.append((draw * vocab_size).long().clamp(max=vocab_size - 1))
    return UniformDraw(torch.stack(t), torch.stack(corrupt), torch.stack(tokens))


class Canvases(NamedTuple):
    targets: torch.Tensor  # (B, K * canvas): clean canvases, the completion then the fill
    scored: torch.Tensor  # (B, K * canvas): positions whose terms enter the estimate
    fill: torch.Tensor  # (B, K * canvas): scored fill positions (past the completion's response)


def clean_canvases(completion_ids: torch.Tensor, response: torch.Tensor, scored: torch.Tensor, canvas_length: int,
                   fill_token_id: int, eos_token_ids: Sequence[int]) -> Canvases:
    """Clean canvases of completions `(B, C)`: `response` (the completion up to its first EOS, a prefix of each row),
    `fill_token_id` after it, to the end of the canvas holding the last response token. Fill positions are scored
    where the response ends with an EOS (the recipe drops the fill of truncated examples)."""
    b, c = completion_ids.shape
    n = -(-c // canvas_length) * canvas_length
    length = response.long().sum(1)
    cols = torch.arange(n, device=completion_ids.device)
    last = completion_ids.gather(1, (length - 1).clamp(min=0).unsqueeze(1))[:, 0]
    ended = (length > 0) & torch.isin(last, torch.tensor(list(eos_token_ids), device=last.device))
    end = -(-length // canvas_length) * canvas_length  # end of the last canvas holding the response
    in_response = cols < length.unsqueeze(1)
    padded = nn.functional.pad(completion_ids, (0, n - c), value=fill_token_id)
    targets = torch.where(in_response, padded, fill_token_id)
    fill = ~in_response & (cols < end.unsqueeze(1)) & ended.unsqueeze(1)
    return Canvases(targets, nn.functional.pad(scored.bool(), (0, n - c)) | fill, fill)


def encode_clean(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> DynamicCache:
    """One encoder pass over the clean rows (positions = columns, as the recipe and `generate`): every layer's keys
    and values of all columns, through the model's own forward (a one-token decoder call, discarded)."""
    cache = DynamicCache()  # no config: full layers, so sliding layers keep every column (cut per canvas below)
    model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, decoder_input_ids=input_ids[:, -1:])
    return cache


def decoder_logits(model: nn.Module, cache: DynamicCache, attention_mask: torch.Tensor, rows: torch.Tensor,
                   start: torch.Tensor, canvas_ids: torch.Tensor, self_conditioning_logits: torch.Tensor | None = None,
                   self_conditioning_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Decoder logits `(R, canvas, V)` of canvases `canvas_ids (R, canvas)` starting at columns `start (R,)` of cache
    rows `rows (R,)`: the keys `generate`'s cache would hold after encoding columns `< start` (pads masked)."""
    config = unwrap(model).config
    text = config.get_text_config()
    window = text.sliding_window - 1  # what a DynamicSlidingWindowLayer keeps
    r, width = canvas_ids.shape
    valid = attention_mask[rows].bool()
    hi = int(start.max())
    layers, key_masks = [], {}
    for i, kind in enumerate(text.layer_types):
        sliding = kind == "sliding_attention"
        lo = max(0, int(start.min()) - window) if sliding else 0
        layer = cache.layers[i]
        layers.append((layer.keys[rows][:, :, lo:hi], layer.values[rows][:, :, lo:hi]))
        if kind not in key_masks:
            cols = torch.arange(lo, hi, device=start.device)
            keep = valid[:, lo:hi] & (cols < start.unsqueeze(1))
            if sliding:
                keep &= cols >= (start - window).unsqueeze(1)
            key_masks[kind] = torch.cat([keep, keep.new_ones(r, width)], dim=1)
    impl = text._attn_implementation
    dtype = unwrap(model).dtype
    masks = {kind: ALL_MASK_ATTENTION_FUNCTIONS[impl](
        batch_size=r, q_length=width, kv_length=keep.size(1), mask_function=bidirectional_mask_function,
        attention_mask=keep, allow_is_causal_skip=False, allow_is_bidirectional_skip=False, dtype=dtype,
        config=text, use_vmap=False, device=start.device) for kind, keep in key_masks.items()}
    out = model(cache=DynamicCache(ddp_cache_data=layers), decoder_input_ids=canvas_ids, decoder_attention_mask=masks,
                decoder_position_ids=start.unsqueeze(1) + torch.arange(width, device=start.device),
                self_conditioning_logits=self_conditioning_logits, self_conditioning_mask=self_conditioning_mask)
    return out.logits


class _SoftmaxSums(torch.autograd.Function):
    """`(logsumexp l, sum_{j != x} p_j, sum_{j != x} log1p(c p_j))` over the last axis, `p = softmax(l)`. The
    backward recomputes `p` from the saved logits, so that no vocabulary-sized intermediate is kept for it."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, clean: torch.Tensor, c: torch.Tensor):
        lse = logits.logsumexp(-1)
        p, keep = _probs(logits, lse, clean)
        ctx.save_for_backward(logits, lse, clean, c)
        return lse, (p * keep).sum(-1), (torch.log1p(c.unsqueeze(-1) * p) * keep).sum(-1)

    @staticmethod
    def backward(ctx, g_lse: torch.Tensor, g_rest: torch.Tensor, g_log: torch.Tensor):
        logits, lse, clean, c = ctx.saved_tensors
        p, keep = _probs(logits, lse, clean)
        cp = c.unsqueeze(-1) * p
        h = keep * cp / (1 + cp)  # p_j d/dp_j log1p(c p_j), j != x
        rest = (p * keep).sum(-1, keepdim=True)
        grad = p * (g_lse.unsqueeze(-1) + g_rest.unsqueeze(-1) * (keep - rest) - g_log.unsqueeze(-1) * h.sum(-1, True))
        return grad + g_log.unsqueeze(-1) * h, None, None


def _probs(logits: torch.Tensor, lse: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = (logits - lse.unsqueeze(-1)).exp()
    return p, torch.ones_like(p).scatter_(-1, clean.unsqueeze(-1), 0.0)


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`log softmax(logits)[targets]` in float32 (autograd keeps only the logits)."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def elbo_integrand(logits: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """UDLM's continuous-time ELBO integrand per position, `ELBO(x) = int_0^1 E_{z_t}[sum_i g_i(t, z_t)] dt`.

    With `N` the vocabulary, `alpha = 1 - t`, `xb = N alpha onehot(x) + 1 - alpha`, `xb_theta = N alpha p_theta +
    1 - alpha` and `z` the noisy token (Schiff et al. 2024, UDLM's continuous-time bound; here `alpha' = -1`):
    `g = (1 / (N alpha)) [N / xb_z - N / xb_theta_z - sum_j (xb_j / xb_z) log(xb_theta_z xb_j / (xb_theta_j xb_z))]`.
    Evaluated in a rearranged form (V-sized reductions in float32, the cancelling scalars in float64).
    `logits (..., V)`, `clean`, `noisy (...)`, `t (...)` broadcastable; returns float32 `(...)`.
    """
    v = logits.size(-1)
    logits = logits.float()
    a, b = (1 - t).double(), t.double()
    c = (v * a / b).expand(clean.shape)
    lse, rest, log_r_rest = _SoftmaxSums.apply(logits, clean, c.float())  # rest = 1 - p_x without cancellation
    p_x = (logits.gather(-1, clean.unsqueeze(-1)).squeeze(-1) - lse).double().exp()
    p_z = (logits.gather(-1, noisy.unsqueeze(-1)).squeeze(-1) - lse).double().exp()
    rest, log_r_rest = rest.double(), log_r_rest.double()
    bracket = (1 + c) * torch.log1p(c * rest / (1 + c * p_x)) - log_r_rest
    e = c * rest / (1 + c)  # 1 - u, u = (1 + c p_x) / (1 + c): for z = x, 1 - 1/u - log u = -e/u - log u
    log_u = torch.where(e < 0.5, torch.log1p(-e), torch.log1p(c * p_x) - torch.log1p(c))
    same = (v / b) / (1 + c) * (-c * rest / (1 + c * p_x) - log_u) - bracket / (1 + c)
    y = c * p_z
    other = (v / b) * (y / (1 + y) - torch.log1p(y)) - bracket
    return (torch.where(clean == noisy, same, other) / (v * a)).float()


def uniform_elbo_draws(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_length: int,
    seeds: torch.Tensor,
    num_samples: int,
    *,
    fill_token_id: int,
    eos_token_ids: Sequence[int],
    estimator: str = "training",
    self_conditioning: str = "none",
    scored: torch.Tensor | None = None,
    fill: str = "fold",
    eps: float = EPS,
    draw: UniformDraw | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token terms `(S, B, C)` (0 where not scored), masks `(S, B, C)` and weights `(S, B, C)` of `[prompt ;
    completion]` rows (prompt left-padded, completion `completion_length` columns, `attention_mask` 1 up to its
    first EOS): `sum_i mean_s weights * terms` estimates the completion's log-likelihood (see the module docstring).

    `scored` (default: the completion's attention mask) are the positions the estimate covers. `self_conditioning`:
    `"none"` (no signal, the first step of `generate`) or `"two_pass"` (training's second pass: conditioned on the
    detached logits of a first pass over the same corrupted canvas), the same for old, reference and current.
    `draw`: a given corruption (`uniform_corruption`'s shapes) instead of the one of `seeds`.
    """
    if estimator not in ESTIMATORS or self_conditioning not in SELF_CONDITIONING or fill not in FILL:
        raise ValueError(f"estimator in {ESTIMATORS}, self_conditioning in {SELF_CONDITIONING}, fill in {FILL}; got "
                         f"{estimator!r}, {self_conditioning!r}, {fill!r}.")
    config = unwrap(model).config
    width, vocab = config.canvas_length, config.get_text_config().vocab_size
    c = completion_length
    p = input_ids.size(1) - c
    response = attention_mask[:, p:].bool()
    scored = response if scored is None else scored.bool()
    canvases = clean_canvases(input_ids[:, p:], response, scored, width, fill_token_id, eos_token_ids)
    grid = canvases.scored if fill == "fold" else canvases.scored & ~canvases.fill
    k_total = grid.size(1) // width
    draw = draw if draw is not None else uniform_corruption(seeds, k_total, width, vocab, num_samples, eps)
    num_samples = draw.t.size(0)
    noisy = torch.where(draw.corrupt, draw.tokens, canvases.targets)
    terms = torch.zeros(num_samples, *grid.shape, device=input_ids.device)
    cache = encode_clean(model, input_ids, attention_mask)
    for k in range(k_total):
        cols = slice(k * width, (k + 1) * width)
        rows = grid[:, cols].any(1).nonzero()[:, 0]
        if rows.numel() == 0:
            continue
        start = torch.full_like(rows, p + k * width)
        for s in range(num_samples):
            z, x = noisy[s, rows, cols], canvases.targets[rows, cols]
            sc = None
            if self_conditioning == "two_pass":
                with torch.no_grad():
                    sc = decoder_logits(model, cache, attention_mask, rows, start, z).detach()
            logits = decoder_logits(model, cache, attention_mask, rows, start, z, sc)
            if estimator == "training":
                term = token_logps(logits, x)
            else:
                term = elbo_integrand(logits, x, z, draw.t[s, rows, k].unsqueeze(1))
            terms[s, rows, cols] = term.float() * grid[rows, cols]
    return fold_terms(terms, grid, scored, c, eps if estimator == "elbo" else None)


def fold_terms(terms: torch.Tensor, grid: torch.Tensor, scored: torch.Tensor, completion_length: int,
               eps: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canvas-grid terms `(S, B, K * canvas)` -> completion terms `(S, B, C)`, masks and weights: the scored grid
    positions outside `scored` (the fill) are added to each row's last scored position."""
    c = completion_length
    s = terms.size(0)
    inside = nn.functional.pad(scored, (0, grid.size(1) - c))
    extra = (terms * (grid & ~inside)).sum(-1)  # (S, B)
    out = terms[..., :c] * scored
    cols = torch.arange(c, device=scored.device)
    last = torch.where(scored, cols, -1).amax(1)
    has = last >= 0
    out[:, has, last[has]] += extra[:, has]
    masks = scored.unsqueeze(0).expand(s, -1, -1)
    weight = 1.0 if eps is None else 1 - 2 * eps
    return out, masks, masks.float() * weight
