"""The ELBO's mask schemes against exact enumeration on a 4-token completion (no model forward per draw: the
sequence estimate of a draw is looked up in a table of `f(M) = sum_{i in M} log p(x_i | x_M masked)`)."""

import itertools
import math

import pytest
import torch
from conftest import BagOfTokensLM

from dipod_trl.estimators import (
    MASKINGS,
    draw_masks,
    gauss_legendre,
    iteration_seeds,
    quadrature_bias_bound,
)
from dipod_trl.likelihood import eos_convention

MASK, PROMPT, X = 0, [1, 6], [2, 9, 4, 7]
L = len(X)


@pytest.fixture(scope="module")
def table():
    """`f(M)` for all 2^L subsets (indexed by bitmask) and the Bernstein coefficients `c_j` of `h(t)`."""
    model = BagOfTokensLM(12, seed=1)
    subsets = torch.tensor(list(itertools.product([0, 1], repeat=L)), dtype=torch.bool).flip(1)  # row m: bits of m
    ids = torch.tensor([PROMPT + X]).repeat(len(subsets), 1)
    noisy = ids.clone()
    noisy[:, len(PROMPT):] = ids[:, len(PROMPT):].masked_fill(subsets, MASK)
    with torch.no_grad():
        logp = torch.log_softmax(model(noisy).logits[:, len(PROMPT):], -1).gather(-1, ids[:, len(PROMPT):, None])[..., 0]
    per_token = (logp * subsets).double()
    f = per_token.sum(1)
    sizes = subsets.sum(1)
    coef = torch.stack([per_token[sizes == j + 1].sum(0) / math.comb(L - 1, j) for j in range(L)]).sum(1)
    return f, subsets, sizes, coef


def exact_elbo(f, sizes):
    return sum(f[sizes == k].mean().item() / k * L / L for k in range(1, L + 1))


def estimates(masking, f, num_samples, n=40_000):
    draw = draw_masks(masking, torch.arange(n), torch.ones(n, L, dtype=torch.bool), num_samples)
    index = (draw.masks.long() * (2 ** torch.arange(L))).sum(-1)  # (S, n) bitmask of each draw
    return (draw.weights.double() * f[index]).mean(0)  # (n,)


@pytest.mark.parametrize("masking,num_samples", [("uniform", 4), ("stratified", 4), ("antithetic", 4),
                                                 ("antithetic", 3)])
def test_unbiased_schemes_match_exact_enumeration(table, masking, num_samples):
    f, _, sizes, _ = table
    est = estimates(masking, f, num_samples)
    exact = exact_elbo(f, sizes)
    stderr = est.std().item() / math.sqrt(est.numel())
    assert abs(est.mean().item() - exact) < 4 * stderr, (masking, est.mean().item(), exact, stderr)


def test_variance_reduction_on_the_toy_sequence(table):
    f, _, _, _ = table
    plain = estimates("uniform", f, 4).var().item()
    for masking in ("stratified", "antithetic"):
        assert estimates(masking, f, 4).var().item() < plain, masking
    # quadrature's Bernoulli masks add count noise at its low node (weight S w / t): more variance at this length
    assert estimates("quadrature", f, 4).var().item() > plain


def test_quadrature_is_exact_in_t_for_2s_at_least_l_and_within_its_bias_bound_otherwise(table):
    f, subsets, sizes, coef = table
    exact = exact_elbo(f, sizes)

    def expected(num_nodes):  # the quadrature estimator's exact expectation: sum_s w_s / t_s E_{Bern(t_s)}[f]
        nodes, weights = gauss_legendre(num_nodes)
        return sum(w / t * (t ** sizes.double() * (1 - t) ** (L - sizes.double()) * f).sum().item() for t, w in zip(nodes, weights))

    assert abs(expected(2) - exact) < 1e-9 and abs(expected(3) - exact) < 1e-9  # 2S >= L: no bias
    bias = abs(expected(1) - exact)
    assert 0 < bias <= quadrature_bias_bound(1, L, coef.abs().max().item())
    assert quadrature_bias_bound(2, L, 1.0) == 0.0
    est = estimates("quadrature", f, 1)  # the implementation's mean is that expectation
    stderr = est.std().item() / math.sqrt(est.numel())
    assert abs(est.mean().item() - expected(1)) < 4 * stderr


def test_structure_of_stratified_antithetic_and_padding():
    n, valid = 2000, torch.tensor([[1] * 6 + [0] * 2], dtype=torch.bool).repeat(2000, 1)
    strat = draw_masks("stratified", torch.arange(n), valid, 3)
    k = strat.masks.sum(-1)  # stratum s of 1..6 under k = 1 + floor(6 (s + u) / 3): {1, 2}, {3, 4}, {5, 6}
    assert [(k[s].min().item(), k[s].max().item()) for s in range(3)] == [(1, 2), (3, 4), (5, 6)]
    anti = draw_masks("antithetic", torch.arange(n), valid, 2)
    first, second = anti.masks
    assert torch.equal(first | second, valid) and ((first & second).sum(-1) == 1).all()
    assert torch.allclose(anti.weights[1], 6.0 / second.sum(-1).float())
    for masking in ("uniform", "stratified", "antithetic", "quadrature"):
        draw = draw_masks(masking, torch.arange(n), valid, 4)
        assert not draw.masks[..., 6:].any() and draw.context is None
        empty = draw_masks(masking, torch.tensor([3]), torch.zeros(1, 5, dtype=torch.bool), 2)
        assert not empty.masks.any() and (empty.weights == 0).all()
    with pytest.raises(ValueError, match="masking"):
        draw_masks("sobol", torch.arange(2), valid[:2], 2)


def _release_block_random(length, c, block, num_t, p, prompt_len, g):
    """SPG's release `forward_process(forward_type="block_random", min_t=0, max_t=1)`, one row, with torch RNG."""
    num_blocks, row_blocks = c // block, (length - 1) // block + 1
    chosen = torch.randperm(num_blocks, generator=g)[:num_t] % row_blocks
    out = []
    for j in chosen.tolist():
        mask = torch.zeros(prompt_len + c, dtype=torch.bool)
        mask[prompt_len + j * block:] = True
        m = min(block, length - block * j)
        count = int(torch.randint(1, m + 1, (1,), generator=g))
        follow = torch.ones(prompt_len + c, dtype=torch.bool)
        follow[prompt_len + j * block: prompt_len + j * block + m] = (torch.arange(m) < count)[torch.randperm(m, generator=g)]
        hit = ~mask & (torch.rand(prompt_len + c, generator=g) < p)
        out.append(hit | (mask & follow))
    return torch.stack(out)


def test_block_random_matches_the_release_position_by_position():
    length, c, block, p, prompt_len, n = 11, 16, 4, 0.15, 3, 6000
    valid = (torch.arange(c) < length).unsqueeze(0).repeat(n, 1)
    draw = draw_masks("block_random", torch.arange(n), valid, 2, block_length=block,
                      prompt_valid=torch.ones(n, prompt_len), p_mask_context=p)
    after = ~valid  # the release masks what follows the completion: eos_convention(after_eos="masked") here
    ours = torch.cat([draw.context[..., :prompt_len], draw.masks | draw.context[..., prompt_len:] | after], -1).float()
    g = torch.Generator().manual_seed(0)
    release = torch.stack([_release_block_random(length, c, block, 2, p, prompt_len, g) for _ in range(n)], 1).float()
    assert torch.allclose(ours.mean(1), release.mean(1), atol=0.03)  # per sample, per position masking rate
    assert not (draw.masks & ~valid).any() and (draw.masks.sum(-1) >= 1).all()
    assert torch.allclose(draw.weights, length / draw.masks.sum(-1).float())
    # without context masking: a partly masked block j, then every later valid position masked, nothing before
    bare = draw_masks("block_random", torch.arange(50), valid[:50], 3, block_length=block,
                      prompt_valid=torch.ones(50, prompt_len), p_mask_context=0.0)
    assert not bare.context.any()
    for row in bare.masks.flatten(0, 1):
        j = int(row.nonzero().min()) // block
        assert row[(j + 1) * block: length].all() and not row[: j * block].any()


def test_iteration_seeds_are_fresh_but_deterministic():
    seeds = torch.arange(50)
    assert torch.equal(iteration_seeds(seeds, 0), seeds)
    one, two = iteration_seeds(seeds, 1), iteration_seeds(seeds, 2)
    assert torch.equal(one, iteration_seeds(seeds, 1)) and not torch.equal(one, two)
    assert one.unique().numel() == 50 and not torch.equal(one, seeds)
    assert set(MASKINGS) == {"uniform", "stratified", "antithetic", "quadrature", "block_random"}


def test_eos_conventions():
    eos, pad, mask = 5, 7, 0
    ids = torch.tensor([[1, 2, 3, 9, 5, pad, pad], [1, 2, 4, 8, 6, 9, 8]])  # prompt 2; row 0 ends with EOS + pads
    attn = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    same = eos_convention(ids, attn, 5, [eos], mask)
    assert same[0] is ids and same[1] is attn and torch.equal(same[2], attn[:, 2:].bool())
    ids_v, attn_v, scored = eos_convention(ids, attn, 5, [eos], mask, score_eos=False, after_eos="visible")
    assert scored[0].tolist() == [True, True, False, False, False] and scored[1].all()
    assert ids_v[0].tolist() == [1, 2, 3, 9, 5, 5, 5] and attn_v.all() and torch.equal(ids_v[1], ids[1])
    ids_m, attn_m, scored_m = eos_convention(ids, attn, 5, [eos], mask, score_eos=True, after_eos="masked")
    assert ids_m[0].tolist() == [1, 2, 3, 9, 5, mask, mask] and attn_m.all() and scored_m[0].sum() == 3
    ids_h, attn_h, _ = eos_convention(ids, attn, 5, [eos], mask, score_eos=False, after_eos="hidden")
    assert torch.equal(ids_h, ids) and attn_h[0].tolist() == [1, 1, 1, 1, 0, 0, 0]
    again = eos_convention(ids_v, attn_h, 5, [eos], mask, score_eos=False, after_eos="visible")  # idempotent
    assert torch.equal(again[0], ids_v) and torch.equal(again[2], scored)
