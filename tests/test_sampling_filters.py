"""TRL's sampling knobs in the diffusion samplers: `top_k`, `top_p` and `min_p` filter the proposal distribution
before the Gumbel draw (confidences from the same filtered distribution), in the full-attention and block samplers,
and reach them from `DiPODConfig`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dipod_trl import sampler as sampler_module
from dipod_trl.block_sampler import _propose as block_propose
from dipod_trl.models import diffusion_adapter
from dipod_trl.sampler import _propose, diffusion_generate, filter_logits

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
MASK = 0


def _logits(rows: int = 6, vocab: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 2.0


def test_filter_logits_keeps_the_top_k_the_nucleus_and_the_min_p_set():
    logits = _logits()
    probs = logits.softmax(-1)
    top3 = filter_logits(logits, top_k=3) > -torch.inf
    assert (top3.sum(-1) == 3).all() and torch.equal(top3, probs >= probs.topk(3).values[:, -1:])
    nucleus = filter_logits(logits, top_p=0.6) > -torch.inf
    for row, keep in zip(probs, nucleus):  # the smallest set of the most likely tokens with mass >= 0.6
        ordered = row.sort(descending=True).values
        size = int((ordered.cumsum(0) < 0.6).sum()) + 1
        assert keep.sum() == size and row[keep].min() >= ordered[size - 1]
    min_p = filter_logits(logits, min_p=0.2) > -torch.inf
    assert torch.equal(min_p, probs >= 0.2 * probs.amax(-1, keepdim=True))
    assert torch.equal(filter_logits(logits), logits)  # defaults: no filter


@pytest.mark.parametrize("propose", ["full", "block"])
def test_proposals_never_leave_the_filtered_support(propose):
    """Over many draws at temperature 1, every proposal lies in the top-k / nucleus / min-p set; top_k=1 is greedy,
    and the confidences are the filtered distribution's probabilities."""
    logits = _logits(rows=4).unsqueeze(0)  # (1, block 4, V)
    logits[..., MASK] = -torch.inf  # the block sampler never proposes the mask token through its logits
    masked = torch.ones(1, 4, dtype=torch.bool)

    def draw(seed, **filters):
        g = torch.Generator().manual_seed(seed)
        if propose == "full":
            return _propose(logits.clone(), masked, MASK, 1.0, "low_confidence", g, filters.get("top_k", 0),
                            filters.get("top_p", 1.0), filters.get("min_p"))
        return block_propose(logits.clone(), masked, 1.0, filters.get("top_k", 0), filters.get("top_p", 1.0),
                             filters.get("min_p"), "low_confidence", g)

    for filters in (dict(top_k=2), dict(top_p=0.5), dict(min_p=0.3), dict(top_k=4, top_p=0.8, min_p=0.1)):
        support = filter_logits(logits[0], **filters) > -torch.inf
        seen = torch.zeros_like(support)
        for seed in range(200):
            tokens, confidence = draw(seed, **filters)
            assert support.gather(-1, tokens[0].unsqueeze(-1)).all(), filters
            seen.scatter_(-1, tokens[0].unsqueeze(-1), True)
            filtered = filter_logits(logits[0], **filters).softmax(-1)
            assert torch.allclose(confidence[0], filtered.gather(-1, tokens[0].unsqueeze(-1)).squeeze(-1), atol=1e-6)
        assert torch.equal(seen, support)  # and every token of the support does get proposed
    greedy = logits[0].argmax(-1)
    assert all(torch.equal(draw(seed, top_k=1)[0][0], greedy) for seed in range(20))


def test_top_k_one_generates_the_greedy_completion(tiny_model, tokenizer):
    """One step per block, so that the reveal order (confidences of the filtered distribution, all 1 under top_k=1)
    does not matter: top_k=1 and a min_p near 1 at temperature 1 are greedy decoding."""
    adapter = diffusion_adapter(tiny_model, tokenizer)
    ids = torch.tensor([list(range(20, 26)), list(range(30, 36))])
    kw = dict(gen_length=8, block_length=4, steps=2)
    greedy = diffusion_generate(tiny_model, adapter, ids, temperature=0.0, **kw)
    sampled = diffusion_generate(tiny_model, adapter, ids, temperature=1.0, generator=torch.Generator().manual_seed(0),
                                 **kw)
    top1 = diffusion_generate(tiny_model, adapter, ids, temperature=1.0, top_k=1,
                              generator=torch.Generator().manual_seed(0), **kw)
    tiny_min_p = diffusion_generate(tiny_model, adapter, ids, temperature=1.0, min_p=0.999,
                                    generator=torch.Generator().manual_seed(0), **kw)
    assert not torch.equal(sampled, greedy)  # temperature 1 does sample
    assert torch.equal(top1, greedy) and torch.equal(tiny_min_p, greedy)


@pytest.mark.skipif(not (SHARED / "sdar-tiny").is_dir(), reason="../shared/models/sdar-tiny is not available")
def test_block_sampler_top_k_one_and_min_p_are_greedy():
    """As above, on the block sampler (SDAR's block of 4, one step per block)."""
    from transformers import AutoTokenizer

    from dipod_trl.models import load_diffusion_model

    model = load_diffusion_model(str(SHARED / "sdar-tiny"))
    tokenizer = AutoTokenizer.from_pretrained(str(SHARED / "sdar-tiny"))
    adapter = diffusion_adapter(model, tokenizer)
    ids = torch.randint(10, 200, (2, 6), generator=torch.Generator().manual_seed(0))
    kw = dict(gen_length=8, block_length=adapter.block_size, steps=2)
    greedy = diffusion_generate(model, adapter, ids, temperature=0.0, **kw)
    sampled = diffusion_generate(model, adapter, ids, temperature=1.0, generator=torch.Generator().manual_seed(1), **kw)
    assert not torch.equal(sampled, greedy)
    for filters in (dict(top_k=1), dict(min_p=0.999)):
        out = diffusion_generate(model, adapter, ids, temperature=1.0, generator=torch.Generator().manual_seed(1),
                                 **filters, **kw)
        assert torch.equal(out, greedy), filters


def test_the_trainer_passes_every_filter_to_the_sampler(tmp_path, tokenizer, tiny_model, monkeypatch):
    from test_trainer import digit_reward, make_config, make_dataset

    from dipod_trl import DiPODTrainer

    seen = []
    real = sampler_module.diffusion_generate

    def recording(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("top_k", "top_p", "min_p", "temperature")})
        return real(*args, **kwargs)

    monkeypatch.setattr("dipod_trl.trainer.diffusion_generate", recording)
    args = make_config(tmp_path, max_steps=1, top_k=5, top_p=0.9, min_p=0.05, temperature=0.7, save_strategy="no")
    DiPODTrainer(tiny_model, [digit_reward], args=args, train_dataset=make_dataset(),
                 processing_class=tokenizer).train()
    assert seen and all(s == dict(top_k=5, top_p=0.9, min_p=0.05, temperature=0.7) for s in seen)
