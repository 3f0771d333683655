"""Block-diffusion sampling and likelihood on the SDAR / SDAR-MoE / LLaDA2 layouts (../shared tiny models).

The sampler's exact KV cache against the uncached block-causal canvas; the one-forward block ELBO against a direct
per-block computation; unbiasedness against exact enumeration; coupling; the drift diagnostics' orders.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dipod_trl  # noqa: F401  (registers the families)
from dipod_trl.block_attention import diffusion_layout
from dipod_trl.block_sampler import _CachedForward, _Canvas, block_diffusion_generate
from dipod_trl.diagnostics import iw_loglik, order_log_weights, order_ranks
from dipod_trl.likelihood import completion_logps, completion_segments, elbo_per_token, one_step_logps
from dipod_trl.models import diffusion_adapter, load_diffusion_model
from dipod_trl.sampler import diffusion_generate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
BLOCK_MODELS = ("sdar-tiny", "sdar-moe-tiny", "llada2-tiny")
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/models is not available")


@pytest.fixture(scope="module", params=BLOCK_MODELS)
def block_model(request):
    model = load_diffusion_model(str(SHARED / request.param)).eval()
    from transformers import AutoTokenizer

    return model, diffusion_adapter(model, AutoTokenizer.from_pretrained(str(SHARED / request.param)))


@pytest.fixture(scope="module")
def sdar():
    model = load_diffusion_model(str(SHARED / "sdar-tiny")).eval()
    return model, diffusion_adapter(model, mask_token_id=474)


def left_padded(lengths, extra: int = 0, pad: int = 0, seed: int = 0):
    """Random prompts (token ids < 440: no special tokens) of `lengths`, left-padded, plus `extra` columns."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width + extra), pad)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, width - n:] = torch.randint(0, 440, (n + extra,), generator=g)
        mask[r, width - n:] = 1
    return ids, mask


# ----------------------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("settings", [dict(), dict(threshold=0.05), dict(steps_per_block=2),
                                      dict(temperature=1.0, top_k=20, top_p=0.95),
                                      dict(temperature=1.0, remasking="random")])
def test_cached_sampler_gives_the_tokens_of_the_uncached_block_causal_canvas(block_model, settings):
    model, adapter = block_model
    block = adapter.block_size
    ids, mask = left_padded([5, 8, 11])  # three different offsets inside a block
    gen = 2 * block
    runs = []
    for kv_cache in (True, False):
        stats = {}
        out = block_diffusion_generate(model, adapter, ids, mask, gen_length=gen, kv_cache=kv_cache, stats=stats,
                                       generator=torch.Generator().manual_seed(3), **settings)
        runs.append((out, stats["forwards"]))
    (cached, n_cached), (full, n_full) = runs
    assert torch.equal(cached, full)
    assert n_cached <= n_full + 1  # the prefill; each finished block is stored by the next block's first step
    assert not (cached == adapter.mask_token_id).any() and cached.shape == (3, gen)


def test_batched_left_padded_rows_equal_each_row_alone(block_model):
    model, adapter = block_model
    ids, mask = left_padded([3, 9, 6], seed=1)
    batch = block_diffusion_generate(model, adapter, ids, mask, gen_length=adapter.block_size)
    for r in range(3):
        alone = block_diffusion_generate(model, adapter, ids[r:r + 1, mask[r].bool()], gen_length=adapter.block_size)
        assert torch.equal(alone[0], batch[r])


def test_eos_stops_generation_and_keeps_the_tokens_before_it(sdar):
    model, adapter = sdar
    ids, mask = left_padded([6, 6], seed=2)
    free_stats, stop_stats = {}, {}
    free = block_diffusion_generate(model, adapter, ids, mask, gen_length=16, stats=free_stats)
    eos = [int(free[0, 1]), int(free[1, 1])]  # each row emits one of them in its first block
    stopped = block_diffusion_generate(model, adapter, ids, mask, gen_length=16, eos_token_ids=eos, stats=stop_stats)
    for r in range(2):
        first = int(torch.isin(free[r], torch.tensor(eos)).nonzero()[0])
        assert torch.equal(stopped[r, : first + 1], free[r, : first + 1])
        assert (stopped[r, 4:] == eos[0]).all()  # after the finished block: filled with the first EOS id
    assert stop_stats["forwards"] < free_stats["forwards"]


@pytest.mark.parametrize("name", ["sdar-tiny", "sdar-moe-tiny"])
def test_cache_protocol_reproduces_the_original_generate_logits(name):
    """`cached_logits`: each row alone through SDAR's generate.py cache protocol (the original code's own calls)."""
    model = load_diffusion_model(str(SHARED / name)).eval()
    ref = load_file(str(SHARED / name / "reference_logits.safetensors"))
    worst = 0.0
    for r in range(ref["input_ids"].size(0)):
        real = ref["attention_mask"][r].bool()
        row = ref["input_ids"][r][real]
        prompt_len = 8 - int((~real).sum())  # 8 prompt columns, left padding inside them
        canvas = _Canvas(row[None, :prompt_len], torch.ones(1, prompt_len, dtype=torch.long), row.numel() - prompt_len,
                         4, 474, 448)
        beyond = canvas.position[0] >= row.numel()  # the original row ends mid-block: no positions after it
        canvas.generated &= ~beyond
        canvas.valid &= ~beyond
        canvas.x[canvas.generated] = row[prompt_len:]
        forward = _CachedForward(model, canvas)
        with torch.no_grad():
            forward.prefill()
            for index in range(canvas.num_blocks):
                cols = canvas.columns(index)
                logits = forward.block_logits(index)[0]
                inside = canvas.valid[0, cols]
                logits, positions = logits[inside], canvas.position[0, cols][inside]
                expected = ref["cached_logits"][r][real][positions]
                valid = ref["cached_logits_valid"][r][real][positions].bool()
                worst = max(worst, float((logits[valid] - expected[valid]).abs().max()) if valid.any() else 0.0)
                forward.finish(index)
    assert worst < 1e-5, worst


def test_block_length_other_than_the_trained_block_size_is_refused(sdar):
    model, adapter = sdar
    with pytest.raises(ValueError, match="trained with blocks of 4"):
        diffusion_generate(model, adapter, torch.tensor([[5, 6]]), gen_length=8, block_length=8, steps=8)
    out = diffusion_generate(model, adapter, torch.tensor([[5, 6]]), gen_length=8, block_length=4, steps=4)
    assert out.shape == (1, 8)


# -------------------------------------------------------------------------------------------------------- likelihood
def _direct_logp(model, row: torch.Tensor, masked: torch.Tensor, position: int, block: int) -> float:
    """log p(row[position]) from one forward over the row up to the end of `position`'s block, `masked` masked."""
    stop = (position // block + 1) * block
    x = row[:stop].clone()
    x[masked[:stop]] = 474 if block == 4 else 452
    with torch.no_grad():
        return float(model(x[None]).logits[0, position].log_softmax(-1)[row[position]])


def test_one_forward_block_elbo_equals_a_forward_per_block(block_model):
    """(a) `[prefix ; noised ; clean]` in one forward == each block over prompt + clean earlier blocks + itself."""
    model, adapter = block_model
    block, c = adapter.block_size, 10
    ids, mask = left_padded([5, 8, 11], extra=c)
    mask[2, -3:] = 0  # a completion that ended early
    noise = (torch.rand(2, 3, c, generator=torch.Generator().manual_seed(0)) < 0.5) & mask[:, -c:].bool()
    with torch.no_grad():
        logps, _ = completion_logps(model, adapter, ids, mask, c, noise, noise)
    worst = 0.0
    for s, r in itertools.product(range(2), range(3)):
        real = mask[r].bool()
        row, prompt_len = ids[r][real], int(real[:-c].sum())
        masked = torch.zeros(row.numel(), dtype=torch.bool)
        masked[prompt_len:] = noise[s, r][real[-c:]]
        for i in masked.nonzero()[:, 0].tolist():
            own_block = (torch.arange(row.numel()) // block) == i // block
            direct = _direct_logp(model, row, masked & own_block, i, block)
            worst = max(worst, abs(direct - float(logps[s, r, i - prompt_len])))
    assert worst < 1e-5, worst


def _exact_block_elbo(model, row: torch.Tensor, prompt_len: int, block: int) -> float:
    """The block ELBO by enumeration: every block, every nonempty subset M, weight (1/L_b) / C(L_b, |M|) * L_b/|M|."""
    total, n = 0.0, row.numel()
    blocks = sorted({i // block for i in range(prompt_len, n)})
    for b in blocks:
        members = [i for i in range(prompt_len, n) if i // block == b]
        size = len(members)
        for k in range(1, size + 1):
            for subset in itertools.combinations(members, k):
                masked = torch.zeros(n, dtype=torch.bool)
                masked[list(subset)] = True
                value = sum(_direct_logp(model, row, masked, i, block) for i in subset)
                total += value / size / math.comb(size, k) * size / k
    return total


@pytest.mark.parametrize("masking", ["uniform", "stratified", "antithetic"])
def test_block_elbo_is_unbiased_against_exact_enumeration(sdar, masking):
    """(b) 2 prompt tokens + 6 completion tokens: blocks of 2 and 4 completion tokens."""
    model, adapter = sdar
    ids, mask = left_padded([2], extra=6, seed=4)
    exact = _exact_block_elbo(model, ids[0], 2, 4)
    n = 3000
    with torch.no_grad():
        estimates = elbo_per_token(model, adapter, ids.repeat(n, 1), mask.repeat(n, 1), 6, torch.arange(n), 2,
                                   masking=masking).sum(-1).double()
    error = float(estimates.mean()) - exact
    assert abs(error) < 4 * float(estimates.std()) / math.sqrt(n) + 1e-4, (error, exact)


def test_coupled_masks_give_ratio_one_at_the_first_inner_iteration(block_model):
    """(c) The old and current estimates of a rollout see the same masks in any batch: exp(ELBO - ELBO_old) = 1."""
    model, adapter = block_model
    ids, mask = left_padded([4, 7, 9, 5], extra=8, seed=5)
    seeds = torch.tensor([11, 22, 33, 44])
    with torch.no_grad():
        old = elbo_per_token(model, adapter, ids, mask, 8, seeds, 3).sum(-1)
        order = torch.tensor([2, 0, 3, 1])
        halves = [elbo_per_token(model, adapter, ids[order[h]], mask[order[h]], 8, seeds[order[h]], 3).sum(-1)
                  for h in (slice(0, 2), slice(2, 4))]
    new = torch.empty_like(old)
    new[order] = torch.cat(halves)
    ratio = torch.exp(new - old)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5), ratio


def test_one_step_masks_every_block_given_the_clean_blocks_before_it(sdar):
    model, adapter = sdar
    ids, mask = left_padded([3, 6], extra=6, seed=6)
    with torch.no_grad():
        logps, _ = one_step_logps(model, adapter, ids, mask, 6, torch.tensor([1, 2]), p_mask_prompt=0.0)
    for r in range(2):
        real = mask[r].bool()
        row, prompt_len = ids[r][real], int(real[:-6].sum())
        for i in range(prompt_len, row.numel()):
            masked = torch.zeros(row.numel(), dtype=torch.bool)
            block = torch.arange(row.numel()) // 4
            masked[prompt_len:] = block[prompt_len:] == i // 4
            assert abs(_direct_logp(model, row, masked, i, 4) - float(logps[r, i - prompt_len])) < 1e-5


def test_drift_orders_are_exact_and_the_iw_bound_is_above_the_elbo(sdar):
    """(d) Orders inside blocks, blocks in sequence: each order's log-weight by direct sequential unmasking;
    the mean over all orders is the block ELBO (enumerated), and the IW bound is above the ELBO."""
    model, adapter = sdar
    ids, mask = left_padded([2], extra=6, seed=7)
    row, c = ids[0], 6
    with torch.no_grad():
        log_w = order_log_weights(model, adapter, ids, mask, c, torch.tensor([9]), num_orders=6)[:, 0]
    ranks = order_ranks(torch.tensor([9]), mask[:, -c:], 6, completion_segments(adapter, mask, c))[:, 0]

    def order_weight(rank: torch.Tensor) -> float:
        total = 0.0
        for i in range(c):
            block = (torch.arange(2, 8) // 4) == (i + 2) // 4
            masked = torch.zeros(8, dtype=torch.bool)
            masked[2:] = block & (rank >= rank[i])
            total += _direct_logp(model, row, masked, i + 2, 4)
        return total

    for k in range(6):
        assert abs(order_weight(ranks[k]) - float(log_w[k])) < 1e-4
    # every order: block of 2 tokens x block of 4 tokens
    first, second = itertools.permutations(range(2)), list(itertools.permutations(range(4)))
    all_orders = [torch.tensor(list(a) + list(b)) for a in first for b in second]
    weights = torch.tensor([order_weight(rank) for rank in all_orders], dtype=torch.float64)
    elbo = _exact_block_elbo(model, row, 2, 4)
    assert abs(float(weights.mean()) - elbo) < 1e-4  # E_sigma log w_sigma = ELBO
    assert float(torch.logsumexp(weights, 0) - math.log(len(weights))) >= elbo  # log p(x) >= ELBO
    assert float(iw_loglik(log_w[:, None])[0]) >= float(log_w.mean()) - 1e-6


def test_layout_mask_structure():
    """Pure function: a noised block sees the clean past and itself; the clean copy is block-causal."""
    ids = torch.arange(10).unsqueeze(0)
    mask = torch.ones_like(ids)
    layout = diffusion_layout(ids, mask, completion_length=4, block_size=4)  # prompt 6: positions 4, 5 share block 1
    assert layout.start == 6 and layout.span == 6  # [prompt (6) ; noised positions 4..9 ; clean positions 4..9]
    m = layout.mask[0, 0]
    noised, clean = list(range(6, 12)), list(range(12, 18))  # positions 4..9: block 1 = 4..7, block 2 = 8, 9
    assert m[noised[0], :4].all() and not m[noised[0], 4:6].any()  # prompt block 0; cols 4, 5 live in the copies
    assert m[noised[0], noised[:4]].all() and not m[noised[0], clean].any()  # block 1 noised: itself, no clean copy
    assert m[noised[-1], noised[4:]].all() and m[noised[-1], clean[:4]].all()  # block 2: clean block 1 + itself
    assert not m[noised[-1], noised[:4]].any() and not m[noised[-1], clean[4:]].any()
    assert m[clean[0], :4].all() and m[clean[0], clean[:4]].all() and not m[clean[0], clean[4:]].any()
    assert not m[:6, 6:].any()  # the prefix sees only the prefix
    assert torch.equal(layout.position_ids[0], torch.tensor([0, 1, 2, 3, 4, 5] + list(range(4, 10)) * 2))
