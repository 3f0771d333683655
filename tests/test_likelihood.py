import itertools
import math

import pytest
import torch
from conftest import BagOfTokensLM, ContextFreeLM

from dipod_trl.likelihood import (
    elbo_draws,
    elbo_masks,
    elbo_per_token,
    hashed_uniform,
    one_step_logps,
    sample_seeds,
)
from dipod_trl.models import DiffusionLM

VOCAB, MASK = 12, 0


def test_hashed_uniform_is_a_pure_function_of_seed_stream_sample():
    seeds = torch.tensor([3, 4, 3])
    u = hashed_uniform(seeds, stream=1, sample=0, size=2000)
    assert torch.equal(u[0], u[2]) and not torch.equal(u[0], u[1])
    assert not torch.equal(u[0], hashed_uniform(seeds, 1, 1, 2000)[0])
    assert not torch.equal(u[0], hashed_uniform(seeds, 2, 0, 2000)[0])
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.02
    big = hashed_uniform(torch.arange(4000), 1, 0, 1)[:, 0]
    assert abs(big.mean().item() - 0.5) < 0.02 and abs(big.var().item() - 1 / 12) < 0.01
    seeds_a = sample_seeds(0, 5, 0, 64)
    assert torch.equal(seeds_a, sample_seeds(0, 5, 0, 64)) and seeds_a.unique().numel() == 64
    assert not torch.equal(seeds_a, sample_seeds(0, 5, 1, 64))


def test_elbo_masks_draw_k_uniformly_and_respect_padding():
    completion_mask = torch.tensor([[1, 1, 1, 1, 0, 0]] * 3000)
    masks, weights = elbo_masks(torch.arange(3000), completion_mask, num_samples=2)
    k = masks.sum(-1)
    assert not masks[..., 4:].any()
    assert ((k >= 1) & (k <= 4)).all()
    assert torch.allclose(weights, 4.0 / k.float())
    freq = torch.bincount(k.flatten(), minlength=5)[1:].float() / k.numel()
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.03), freq
    empty, w = elbo_masks(torch.tensor([1]), torch.zeros(1, 4), 1)
    assert not empty.any() and w.item() == 0.0


def _exact_any_order_loglik(model, prompt, x):
    """Average over all unmasking orders of sum_n log p(x_sigma(n) | x_sigma(<n) revealed, rest masked)."""
    total, count = 0.0, 0
    length = len(x)
    for order in itertools.permutations(range(length)):
        current = torch.tensor(prompt + [MASK] * length)
        logp = 0.0
        for pos in order:
            logits = model(current.unsqueeze(0)).logits[0, len(prompt) + pos]
            logp += torch.log_softmax(logits, -1)[x[pos]].item()
            current[len(prompt) + pos] = x[pos]
        total += logp
        count += 1
    return total / count


def _mc_elbo(model, prompt, x, n):
    ids = torch.tensor([prompt + x]).repeat(n, 1)
    with torch.no_grad():
        per_seq = elbo_per_token(model, DiffusionLM(MASK), ids, torch.ones_like(ids), len(x), torch.arange(n), 1).sum(-1)
    return per_seq.mean().item(), per_seq.std().item() / math.sqrt(n)


@pytest.mark.parametrize("x", [[3, 7, 5], [2, 9, 4, 4]])
def test_elbo_matches_exact_expectation_over_unmasking_orders(x):
    model = BagOfTokensLM(VOCAB, seed=1)
    prompt = [1, 6]
    exact = _exact_any_order_loglik(model, prompt, x)
    mean, stderr = _mc_elbo(model, prompt, x, 6000)
    assert abs(mean - exact) < 4 * stderr + 1e-3, (mean, exact, stderr)
    # the floor(t * L) draw of some reference code (k = 0 possible, k = L never) has a visibly different mean
    biased = _floor_tl_elbo(model, prompt, x, 6000)
    assert abs(biased - exact) > 4 * stderr, (biased, exact, stderr)


def _floor_tl_elbo(model, prompt, x, n):
    g = torch.Generator().manual_seed(0)
    length = len(x)
    ids = torch.tensor([prompt + x]).repeat(n, 1)
    k = (torch.rand(n, generator=g) * length).floor().long()
    ranks = torch.rand(n, length, generator=g).argsort(1).argsort(1)
    masked = ranks < k.unsqueeze(1)
    noisy = ids.clone()
    noisy[:, len(prompt):] = ids[:, len(prompt):].masked_fill(masked, MASK)
    with torch.no_grad():
        logp = torch.log_softmax(model(noisy).logits[:, len(prompt):], -1).gather(-1, ids[:, len(prompt):, None])[..., 0]
    return ((logp * masked).sum(1) * length / k.clamp(min=1)).mean().item()


def test_elbo_equals_log_likelihood_for_context_free_model():
    length, prompt = 5, [1, 2]
    model = ContextFreeLM(len(prompt) + length, VOCAB)
    x = [3, 4, 8, 8, 11]
    exact = sum(torch.log_softmax(model.table[len(prompt) + i], -1)[t].item() for i, t in enumerate(x))
    mean, stderr = _mc_elbo(model, prompt, x, 4000)
    assert abs(mean - exact) < 4 * stderr + 1e-4, (mean, exact)
    # with every token masked (k = L) a single draw is exact
    ids = torch.tensor([prompt + x])
    logps, masks, weights = elbo_draws(model, DiffusionLM(MASK), ids, torch.ones_like(ids), length, torch.arange(1), 64)
    full = masks.sum(-1)[:, 0] == length
    assert full.any()
    per_draw = (logps * weights[..., None]).sum(-1)[:, 0]
    assert torch.allclose(per_draw[full], torch.tensor(exact), atol=1e-5)


def test_coupling_survives_shuffling_splitting_and_chunking():
    model = BagOfTokensLM(VOCAB, seed=2)
    torch.manual_seed(0)
    ids = torch.randint(1, VOCAB, (6, 9))
    attn = torch.ones_like(ids)
    attn[4, -2:] = 0  # a shorter completion
    seeds = sample_seeds(42, 0, 0, 6)
    adapter = DiffusionLM(MASK)
    with torch.no_grad():
        full = elbo_per_token(model, adapter, ids, attn, 5, seeds, 4)
        again = elbo_per_token(model, adapter, ids, attn, 5, seeds, 4)
        assert torch.equal(full, again)  # old == new at theta_old: the FPO ratio is exactly 1
        perm = torch.tensor([5, 2, 0, 4])
        part = elbo_per_token(model, adapter, ids[perm], attn[perm], 5, seeds[perm], 4)
        chunked = elbo_per_token(model, adapter, ids, attn, 5, seeds, 4, batch_size=5)
    assert torch.allclose(part, full[perm], atol=1e-5)
    assert torch.allclose(chunked, full, atol=1e-5)
    assert (full[4, -2:] == 0).all()


def test_one_step_masks_completion_and_a_fraction_of_the_prompt():
    seen = []

    class Spy(BagOfTokensLM):
        def forward(self, input_ids, attention_mask=None):
            seen.append(input_ids.clone())
            return super().forward(input_ids, attention_mask)

    model = Spy(VOCAB, length=64)
    ids = torch.randint(1, VOCAB, (400, 40))
    attn = torch.ones_like(ids)
    seeds = torch.arange(400)
    logps, ent = one_step_logps(model, DiffusionLM(MASK), ids, attn, 8, seeds, 0.15, compute_entropy=True)
    noisy = seen[-1]
    assert (noisy[:, -8:] == MASK).all()
    frac = (noisy[:, :-8] == MASK).float().mean().item()
    assert abs(frac - 0.15) < 0.01, frac
    assert logps.shape == (400, 8) and (logps <= 0).all() and logps.sum() < 0 and (ent >= 0).all()
    logps2, _ = one_step_logps(model, DiffusionLM(MASK), ids, attn, 8, seeds, 0.15)
    assert torch.equal(logps, logps2)


def test_shifted_logits_adapter_realigns_predictions():
    base = BagOfTokensLM(VOCAB, seed=3)

    class Shifted(torch.nn.Module):  # a Dream-style model: position i predicts token i + 1
        def forward(self, input_ids, attention_mask=None):
            out = base(input_ids)
            out.logits = torch.cat([out.logits[:, 1:], out.logits[:, -1:]], dim=1)
            return out

    ids = torch.randint(1, VOCAB, (2, 7))
    plain = DiffusionLM(MASK).logits(base, ids, None)
    realigned = DiffusionLM(MASK, shifted_logits=True).logits(Shifted(), ids, None)
    assert torch.allclose(plain[:, 1:], realigned[:, 1:])
