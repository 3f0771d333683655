"""Mask draws of the ELBO estimators: coupled randomness and the masking schemes, as pure functions of seeds.

Every scheme returns `MaskDraw(masks, weights, context)` for `S` masked copies of `B` sequences: `masks (S, B, C)`
are the scored (masked) completion positions, `weights (S, B)` such that `mean_s weights[s] * sum_{i in M_s} log p`
estimates the sequence ELBO, and `context (S, B, T)` (or `None`) extra positions of the whole sequence that are
masked but not scored. The ELBO they estimate is

    ELBO(x) = E_{k ~ U{1..L}, |M| = k} [(L / k) sum_{i in M} log p(x_i | x_M masked)]
            = int_0^1 h(t) dt,   h(t) = E_{M ~ Bernoulli(t)^L} [(1 / t) sum_{i in M} log p(x_i | x_M masked)],

(both equal `sum_i E_{j ~ U{0..L-1}} E[log p(x_i | x_i and j random others masked)]`). `h` is a polynomial of
degree `L - 1` in `t` (Bernstein form, coefficients `c_j = sum_i E[log p(x_i | x_i and j others masked)]`).

Schemes (`draw_masks(name, ...)`):
- `uniform`: plain Monte Carlo, `k ~ U{1..L}` and a uniform subset of size `k`, weight `L / k`. Unbiased.
- `stratified`: copy `s` draws its noise level from the `s`-th of `S` equal strata of `(0, 1)`,
  `k = 1 + floor(L (s + u) / S)`. Each `k` value keeps total probability `1 / L`: unbiased.
- `antithetic`: copies come in pairs sharing one random order of the positions: `M` = the `k` first,
  `M'` = the `L + 1 - k` last, so every token is masked exactly once per pair except one, masked twice (the
  complement plus one token, since both `k` and `L + 1 - k` must be uniform on `1..L`). Each copy is marginally a
  plain draw: unbiased.
- `quadrature`: GDPO's semi-deterministic Monte Carlo: the noise level takes the `S` Gauss-Legendre nodes `t_s` of
  `(0, 1)`, masks are Bernoulli(`t_s`) per token, weights `S w_s / t_s`. Biased by the quadrature error of `h`:
  exactly zero when `2S >= L` (Gauss-Legendre is exact up to degree `2S - 1`), otherwise bounded by
  `quadrature_bias_bound`.
- `block_random`: SPG's masks (`language/SPG/spg/spg_trainer.py`, `forward_process`, `forward_type=block_random`):
  a completion block `j` (entry `s` of a random permutation of the canvas blocks, modulo the sequence's number of
  blocks), a uniform number `1..m` of its `m` valid tokens masked, every later block masked, and each earlier
  completion token and each prompt token masked with probability `p_mask_context`; earlier completion tokens are
  scored, prompt tokens are context. Weight `L / k` with `k` the number of scored masked tokens, so that
  `ELBO / L` is SPG's per-token average over masked tokens. (The release also masks everything after the
  completion: `eos_convention(after_eos="masked")` in `dipod_trl.likelihood`.)

Blocks (`segments`): for a block-diffusion LM the ELBO is a sum over blocks, `sum_b E[(L_b / k_b) sum_{i in M_b}
log p(x_i | x, y_<b, noised y_b)]`. Given `segments (B, C)` (the block of each completion position), `uniform`,
`stratified` and `antithetic` draw `k_b` and `M_b` independently in every block (the block's own uniform and
order, from the same seed), and the weights become per-token `(S, B, C)`: `L_b / k_b` of the token's block.
`quadrature` masks are per-token Bernoulli draws already, so blocks change nothing. `block_random` (SPG's
canvas-level scheme) has no meaning for block-causal models and is refused. Without segments, everything is
exactly the full-sequence scheme (one block).

Coupled randomness: every random draw is a counter-based hash of `(seed of the sample, stream, index)`, so the
old, reference and current estimates of one rollout see identical masks wherever and in whatever batch the sample
is evaluated (shuffled, split for gradient accumulation, reused for several iterations, on another rank).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

_M32 = 0xFFFFFFFF
STREAM_ELBO = 1  # masks of the ELBO estimate (policy ratio, KL, DiPOD term)
STREAM_ONE_STEP = 2  # prompt masks of the one-step estimator
STREAM_DIAGNOSTICS = 3  # reserved for drift diagnostics
STREAM_ITERATION = 4  # per-iteration seeds (mask_redraw="per_iteration")

MASKINGS = ("uniform", "stratified", "antithetic", "quadrature", "block_random")
UNBIASED = ("uniform", "stratified", "antithetic")


class MaskDraw(NamedTuple):
    masks: torch.Tensor  # (S, B, C) bool: scored masked completion positions
    weights: torch.Tensor  # (S, B) float
    context: torch.Tensor | None  # (S, B, T) bool: masked, not scored (None: nothing)


# ------------------------------------------------------------------------------------------------ coupled randomness
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


def iteration_seeds(seeds: torch.Tensor, iteration: int) -> torch.Tensor:
    """The seeds of inner iteration `iteration`: `seeds` itself for 0, fresh independent seeds otherwise."""
    if iteration == 0:
        return seeds
    return (hashed_uniform(seeds, STREAM_ITERATION, iteration, 1)[:, 0] * 2.0**31).long()


def rank_select(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the `counts[b]` smallest `scores` in each row (exact count, no per-row loop)."""
    return ranks_of(scores) < counts.unsqueeze(-1)


def ranks_of(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every entry within its row (0 = smallest; ties broken by position)."""
    order = scores.argsort(dim=-1, stable=True)
    cols = torch.arange(scores.size(-1), device=scores.device).expand_as(order).contiguous()
    return torch.empty_like(order).scatter_(-1, order, cols)


# ------------------------------------------------------------------------------------------------------- schemes
def _lengths(valid: torch.Tensor) -> torch.Tensor:
    return valid.sum(dim=1)


def _inverse_rate(length: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.where(length > 0, length.double() / k.clamp(min=1).double(), 0.0)


def _positions(seeds: torch.Tensor, stream: int, sample: int, valid: torch.Tensor) -> torch.Tensor:
    """Uniform scores of the valid positions (invalid ones score 2, ranked last)."""
    return hashed_uniform(seeds, stream, sample, valid.size(1)).masked_fill(~valid, 2.0)


def _k_from_level(u: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """`k = 1 + floor(u L)` in `1..max(L, 1)`: uniform on `1..L` for `u ~ U(0, 1)`."""
    return (1 + (u * length.double()).floor().long()).clamp(max=length.clamp(min=1))


class _Segments(NamedTuple):
    """Each completion position's segment (block) as a column `0..n-1` of per-segment draws, and segment lengths."""

    index: torch.Tensor  # (B, C) long
    count: int  # n: columns of per-segment draws
    length: torch.Tensor  # (B, C): valid positions in the position's segment

    def level(self, seeds: torch.Tensor, stream: int, sample: int) -> torch.Tensor:
        """One uniform per segment, read at every position `(B, C)` (segment 0 reads the full-sequence draw)."""
        return hashed_uniform(seeds, stream, sample, self.count).gather(1, self.index)

    def ranks(self, scores: torch.Tensor) -> torch.Tensor:
        """Rank of each position among the positions of its segment, by score (0 = smallest)."""
        if self.count == 1:
            return ranks_of(scores)
        keyed = self.index.double() * 4.0 + scores  # scores < 4: segments stay apart, in order
        start = torch.zeros_like(self.index).scatter_add_(1, self.index, torch.ones_like(self.index))
        start = (start.cumsum(1) - start).gather(1, self.index)  # positions in earlier segments
        return ranks_of(keyed) - start


def _segments(valid: torch.Tensor, segments: torch.Tensor | None) -> _Segments:
    if segments is None:
        index = torch.zeros_like(valid, dtype=torch.long)
    else:
        index = segments.long() - segments.long().min(dim=1, keepdim=True).values
    count = int(index.max()) + 1 if index.numel() else 1
    length = torch.zeros_like(index).scatter_add_(1, index, valid.long()).gather(1, index)
    return _Segments(index, count, length)


def _weights(length: torch.Tensor, k: torch.Tensor, per_token: bool) -> torch.Tensor:
    """`L / k` per position `(B, C)`, or per row `(B,)` for one segment (the full-sequence schemes)."""
    w = _inverse_rate(length, k)
    return w if per_token else w.max(dim=1).values if w.size(1) else w.sum(1)


def uniform_masks(seeds: torch.Tensor, valid: torch.Tensor, num_samples: int, stream: int = STREAM_ELBO,
                  segments: torch.Tensor | None = None) -> MaskDraw:
    """Plain Monte Carlo: `k ~ U{1..L}`, then a uniform subset of `k` valid positions; weight `L / k` (per block
    with `segments`)."""
    seg = _segments(valid, segments)
    masks, weights = [], []
    for s in range(num_samples):
        k = _k_from_level(seg.level(seeds, stream, 2 * s), seg.length)
        masks.append((seg.ranks(_positions(seeds, stream, 2 * s + 1, valid)) < k) & valid)
        weights.append(_weights(seg.length, k, segments is not None))
    return MaskDraw(torch.stack(masks), torch.stack(weights).float(), None)


def stratified_masks(seeds: torch.Tensor, valid: torch.Tensor, num_samples: int, stream: int = STREAM_ELBO,
                     segments: torch.Tensor | None = None) -> MaskDraw:
    """Stratified noise levels: copy `s` takes `u` in the `s`-th of `S` equal strata of (0, 1); unbiased."""
    seg = _segments(valid, segments)
    masks, weights = [], []
    for s in range(num_samples):
        k = _k_from_level((s + seg.level(seeds, stream, 2 * s)) / num_samples, seg.length)
        masks.append((seg.ranks(_positions(seeds, stream, 2 * s + 1, valid)) < k) & valid)
        weights.append(_weights(seg.length, k, segments is not None))
    return MaskDraw(torch.stack(masks), torch.stack(weights).float(), None)


def antithetic_masks(seeds: torch.Tensor, valid: torch.Tensor, num_samples: int, stream: int = STREAM_ELBO,
                     segments: torch.Tensor | None = None) -> MaskDraw:
    """Complementary pairs on one random order: `M` = the first `k`, `M'` = the last `L + 1 - k`; unbiased.

    Copy `2p` is exactly `uniform_masks`' copy `2p`; an odd last copy is an unpaired plain draw.
    """
    seg = _segments(valid, segments)
    masks, weights = [], []
    for s in range(num_samples):
        pair = s - s % 2
        k = _k_from_level(seg.level(seeds, stream, 2 * pair), seg.length)
        ranks = seg.ranks(_positions(seeds, stream, 2 * pair + 1, valid))
        if s % 2 == 0:
            mask = ranks < k
        else:  # ranks k-1 .. L-1: the complement of M plus its last token
            mask = ranks >= k - 1
            k = seg.length + 1 - k
        masks.append(mask & valid)
        weights.append(_weights(seg.length, k, segments is not None))
    return MaskDraw(torch.stack(masks), torch.stack(weights).float(), None)


def ranks_within(scores: torch.Tensor, valid: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
    """Rank of each position within its segment (block) by score; the whole row is one segment without `segments`."""
    return _segments(valid.bool(), segments).ranks(scores)


def per_token_weights(weights: torch.Tensor) -> torch.Tensor:
    """A draw's weights as `(S, B, C)`-broadcastable: per-row weights `(S, B)` get a trailing axis."""
    return weights if weights.dim() == 3 else weights.unsqueeze(-1)


def gauss_legendre(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on (0, 1) (weights sum to 1)."""
    x, w = np.polynomial.legendre.leggauss(num_nodes)
    return (x + 1.0) / 2.0, w / 2.0


def quadrature_masks(seeds: torch.Tensor, valid: torch.Tensor, num_samples: int, stream: int = STREAM_ELBO,
                     segments: torch.Tensor | None = None) -> MaskDraw:
    """Semi-deterministic MC (GDPO): Gauss-Legendre noise levels `t_s`, Bernoulli(`t_s`) masks, weight `S w_s / t_s`.

    Biased by the quadrature error of the degree-`L - 1` polynomial `h(t)`: zero for `2S >= L`, else within
    `quadrature_bias_bound(S, L, max_j |c_j|)`. Per-token Bernoulli masks: `segments` (blocks) change nothing, and
    the bound holds per block with `L = L_b`.
    """
    nodes, node_weights = gauss_legendre(num_samples)
    length = _lengths(valid)
    masks, weights = [], []
    for s in range(num_samples):
        masks.append((hashed_uniform(seeds, stream, 2 * s + 1, valid.size(1)) < nodes[s]) & valid)
        w = num_samples * node_weights[s] / nodes[s]
        weights.append(torch.where(length > 0, w, 0.0).double())
    return MaskDraw(torch.stack(masks), torch.stack(weights).float(), None)


def quadrature_bias_bound(num_nodes: int, length: int, coef_max: float) -> float:
    """Bound on |quadrature ELBO - ELBO| for a sequence of `length` tokens, `coef_max = max_j |c_j|`.

    Gauss-Legendre remainder on (0, 1): `(n!)^4 / ((2n + 1) ((2n)!)^3) * max |h^(2n)|`, and for a Bernstein
    polynomial of degree `m = L - 1`, `|h^(r)| <= m! / (m - r)! * 2^r * max_j |c_j|`. Zero when `2n > m`.
    """
    n, m = num_nodes, length - 1
    if 2 * n > m:
        return 0.0
    remainder = math.factorial(n) ** 4 / ((2 * n + 1) * math.factorial(2 * n) ** 3)
    derivative = math.factorial(m) / math.factorial(m - 2 * n) * 2.0 ** (2 * n)
    return remainder * derivative * coef_max


def block_random_masks(
    seeds: torch.Tensor,
    valid: torch.Tensor,
    num_samples: int,
    stream: int,
    block_length: int,
    prompt_valid: torch.Tensor,
    p_mask_context: float,
) -> MaskDraw:
    """SPG's `block_random` masks (see the module docstring); `valid` must be a prefix of each row."""
    b, c = valid.shape
    p = prompt_valid.size(1)
    length = _lengths(valid)
    num_blocks = -(-c // block_length)
    row_blocks = ((length - 1).clamp(min=0) // block_length + 1).clamp(min=1)  # blocks holding valid tokens
    block_of = torch.arange(c, device=valid.device) // block_length  # (C,)
    masks, weights, contexts = [], [], []
    for s in range(num_samples):
        group, slot = divmod(s, num_blocks)
        permutation = hashed_uniform(seeds, stream, 4 * group * num_blocks, num_blocks).argsort(dim=-1)
        chosen = permutation[:, slot] % row_blocks  # (B,)
        in_block = (block_of.unsqueeze(0) == chosen.unsqueeze(1)) & valid
        count = 1 + (hashed_uniform(seeds, stream, 4 * s + 1, 1)[:, 0] * in_block.sum(1).double()).floor().long()
        scores = hashed_uniform(seeds, stream, 4 * s + 2, c).masked_fill(~in_block, 2.0)
        picked = rank_select(scores, count) & in_block
        later = block_of.unsqueeze(0) > chosen.unsqueeze(1)
        earlier = block_of.unsqueeze(0) < chosen.unsqueeze(1)
        hit = hashed_uniform(seeds, stream, 4 * s + 3, p + c) < p_mask_context
        mask = valid & (picked | later | (earlier & hit[:, p:]))
        context = torch.cat([prompt_valid.bool() & hit[:, :p], torch.zeros_like(valid)], dim=1)
        masks.append(mask)
        weights.append(_inverse_rate(length, mask.sum(1)))
        contexts.append(context)
    return MaskDraw(torch.stack(masks), torch.stack(weights).float(), torch.stack(contexts))


def draw_masks(
    masking: str,
    seeds: torch.Tensor,
    valid: torch.Tensor,
    num_samples: int,
    stream: int = STREAM_ELBO,
    *,
    block_length: int | None = None,
    prompt_valid: torch.Tensor | None = None,
    p_mask_context: float = 0.0,
    segments: torch.Tensor | None = None,
) -> MaskDraw:
    """The masks of scheme `masking` (one of `MASKINGS`) for the valid (scored) completion positions `valid`.

    `segments (B, C)`: the block of each position, for block-diffusion models (masks drawn per block).
    """
    valid = valid.bool()
    if segments is not None and masking == "block_random":
        raise ValueError("elbo_masking='block_random' is SPG's scheme for full-attention models (a random block, "
                         "later blocks masked); block-diffusion models never see later blocks. Use 'uniform', "
                         "'stratified', 'antithetic' or 'quadrature'.")
    if masking == "block_random":
        if block_length is None or prompt_valid is None:
            raise ValueError("block_random masks need block_length and prompt_valid.")
        return block_random_masks(seeds, valid, num_samples, stream, block_length, prompt_valid, p_mask_context)
    schemes = {"uniform": uniform_masks, "stratified": stratified_masks, "antithetic": antithetic_masks,
               "quadrature": quadrature_masks}
    if masking not in schemes:
        raise ValueError(f"Unknown ELBO masking {masking!r}; choose one of {MASKINGS}.")
    return schemes[masking](seeds, valid, num_samples, stream, segments=segments)
