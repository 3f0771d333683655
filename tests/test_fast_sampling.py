"""Fast paths of the sampler and the likelihood: same answers where they are exact, invariants everywhere."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import ContextFreeLM
from tiny import build_tiny_model

from dipod_trl.block_cache import BlockCache
from dipod_trl.likelihood import elbo_per_token
from dipod_trl.models import DiffusionLM, diffusion_adapter
from dipod_trl.sampler import diffusion_generate

NATIVE = ("llada", "dream")


class KwargsRecorder(torch.nn.Module):
    """Wraps a model, forwarding every argument, and records the token ids of each call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, input_ids, **kwargs):
        self.seen.append(input_ids.clone())
        return self.model(input_ids=input_ids, **kwargs)


def _native(tokenizer, arch: str, layers: int = 2):
    return build_tiny_model(tokenizer, arch, hidden_size=32, num_layers=layers, seed=3).eval()


def _padded_prompts(tokenizer):
    rows = [list(range(20, 27)), list(range(30, 34))]
    ids = torch.tensor([[tokenizer.pad_token_id] * (7 - len(r)) + r for r in rows])
    return ids, (ids != tokenizer.pad_token_id).long()


@pytest.mark.parametrize("arch", NATIVE)
def test_block_only_logits_give_the_same_greedy_tokens(tokenizer, arch):
    model = _native(tokenizer, arch)
    sparse = diffusion_adapter(model, tokenizer, attend_to_padding=False)
    assert sparse.sparse_logits and sparse.kv_cache
    dense = dataclasses.replace(sparse, sparse_logits=False)
    ids, mask = _padded_prompts(tokenizer)
    kw = dict(gen_length=16, block_length=8, steps=8, temperature=0.0)
    assert torch.equal(diffusion_generate(model, sparse, ids, mask, **kw), diffusion_generate(model, dense, ids, mask,
                                                                                              **kw))


@pytest.mark.parametrize("arch", NATIVE)
def test_scoring_only_masked_positions_gives_identical_elbo(tokenizer, arch):
    model = _native(tokenizer, arch)
    sparse = diffusion_adapter(model, tokenizer, attend_to_padding=False)
    ids, mask = _padded_prompts(tokenizer)
    completion = torch.randint(10, 90, (2, 12), generator=torch.Generator().manual_seed(0))
    input_ids, attention_mask = torch.cat([ids, completion], 1), torch.cat([mask, torch.ones_like(completion)], 1)
    attention_mask[1, -3:] = 0  # a completion cut by EOS
    seeds = torch.tensor([11, 12])
    with torch.no_grad():
        a = elbo_per_token(model, sparse, input_ids, attention_mask, 12, seeds, 3)
        b = elbo_per_token(model, dataclasses.replace(sparse, sparse_logits=False), input_ids, attention_mask, 12,
                           seeds, 3)
    assert (a != 0).any() and torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("arch", NATIVE)
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_kv_cache_is_exact_for_a_one_layer_model(tokenizer, arch, mode):
    """With one layer, a position's keys/values depend on its own token only, so cached logits must equal full ones."""
    model = _native(tokenizer, arch, layers=1)
    adapter = diffusion_adapter(model, tokenizer, attend_to_padding=False)
    ids, mask = _padded_prompts(tokenizer)
    x = torch.cat([ids, torch.full((2, 16), adapter.mask_token_id)], 1)
    attention_mask = torch.cat([mask, torch.ones(2, 16, dtype=torch.long)], 1)
    start, end = 7 + 8, 7 + 16  # the second block
    x[:, 7:start] = torch.randint(10, 90, (2, 8))
    cache = BlockCache(model, adapter, attention_mask, mode)
    with torch.no_grad():
        cache.block_logits(x, start, end, step=0)  # refresh
        x[:, start:start + 3] = torch.randint(10, 90, (2, 3))  # reveal some block tokens
        cached = cache.block_logits(x, start, end, step=1)
        full = adapter.logits(model, x, attention_mask)[:, start:end]
    assert torch.allclose(cached, full, atol=1e-5)
    kw = dict(gen_length=16, block_length=8, steps=8, temperature=0.0)
    assert torch.equal(diffusion_generate(model, adapter, ids, mask, kv_cache=mode, **kw),
                       diffusion_generate(model, adapter, ids, mask, **kw))


@pytest.mark.parametrize("arch", NATIVE)
@pytest.mark.parametrize("threshold, kv_cache, refresh", [
    (None, "none", 0), (0.3, "none", 0), (None, "prefix", 0), (None, "dual", 2), (0.3, "dual", 0)])
def test_fast_paths_keep_the_sampler_invariants(tokenizer, arch, threshold, kv_cache, refresh):
    model = KwargsRecorder(_native(tokenizer, arch))
    adapter = diffusion_adapter(model.model, tokenizer)
    ids, mask = _padded_prompts(tokenizer)
    kw = dict(gen_length=16, block_length=8, steps=8, temperature=1.0, threshold=threshold, kv_cache=kv_cache,
              cache_refresh=refresh)
    stats = {}
    a = diffusion_generate(model, adapter, ids, mask, generator=torch.Generator().manual_seed(0), stats=stats, **kw)
    b = diffusion_generate(model, adapter, ids, mask, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a, b) and a.shape == (2, 16)  # seeded
    assert not (a == adapter.mask_token_id).any()  # nothing left masked
    full_width = [x for x in model.seen if x.size(1) == ids.size(1) + 16]
    assert full_width and all(torch.equal(x[:, :7], ids) for x in full_width)  # the prompt never changes
    assert stats["forwards"] == len(model.seen) // 2 and 2 <= stats["forwards"] <= 16


def test_threshold_decoding_reveals_every_confident_token_at_once(tokenizer):
    table_model = ContextFreeLM(24, len(tokenizer), seed=0)
    with torch.no_grad():  # near one-hot predictions: confidence ~1 everywhere
        table_model.table.copy_(20.0 * torch.nn.functional.one_hot(table_model.table.argmax(-1), len(tokenizer)))
    adapter = DiffusionLM(tokenizer.mask_token_id)
    ids = torch.tensor([list(range(20, 28))])
    exact, fast = {}, {}
    kw = dict(gen_length=16, block_length=8, steps=16, temperature=0.0)
    a = diffusion_generate(table_model, adapter, ids, stats=exact, **kw)
    b = diffusion_generate(table_model, adapter, ids, threshold=0.9, stats=fast, **kw)
    assert exact["forwards"] == 16 and fast["forwards"] == 2  # one forward per block
    assert torch.equal(a, b)  # context-free: the order of reveals does not change the tokens


def test_stop_at_eos_fills_the_rest_and_saves_forwards(tokenizer):
    eos = tokenizer.eos_token_id
    table_model = ContextFreeLM(24, len(tokenizer), seed=0)
    with torch.no_grad():
        table_model.table[:, eos] = 50.0  # EOS everywhere, confidently
    adapter = DiffusionLM(tokenizer.mask_token_id)
    ids = torch.tensor([list(range(20, 28))])
    stopped, full = {}, {}
    kw = dict(gen_length=16, block_length=4, steps=8, temperature=0.0)
    out = diffusion_generate(table_model, adapter, ids, eos_token_ids=[eos], stats=stopped, **kw)
    diffusion_generate(table_model, adapter, ids, stats=full, **kw)
    assert (out == eos).all() and stopped["forwards"] == 2 and full["forwards"] == 8


def test_fast_path_arguments_are_checked(tokenizer, tiny_model):
    adapter = diffusion_adapter(tiny_model, tokenizer)
    ids = torch.tensor([[5, 6]])
    with pytest.raises(ValueError, match="native LLaDA/Dream"):
        diffusion_generate(tiny_model, adapter, ids, gen_length=4, block_length=4, steps=2, kv_cache="prefix")
    with pytest.raises(ValueError, match="threshold"):
        diffusion_generate(tiny_model, adapter, ids, gen_length=4, block_length=4, steps=2, threshold=0.5,
                           remasking="random")


@pytest.mark.parametrize("arch", NATIVE)
def test_trainer_trains_with_fast_decoding_and_cache(tmp_path, tokenizer, arch):
    from test_trainer import digit_reward, logged, make_config, make_dataset

    from dipod_trl import DiPODTrainer

    model = build_tiny_model(tokenizer, arch, hidden_size=32)
    args = make_config(tmp_path, likelihood_estimator="one_step", decoding_threshold=0.5, kv_cache="dual",
                       kv_cache_refresh=2, dipod_elbo_samples=2)
    trainer = DiPODTrainer(model, [digit_reward], args=args, train_dataset=make_dataset(), processing_class=tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(v < 0 for v in logged(trainer, "dipod/elbo"))


def test_kl_with_an_in_memory_model_asks_for_a_path(tmp_path, tokenizer):
    from test_trainer import digit_reward, make_config, make_dataset

    from dipod_trl import DiPODTrainer

    model = build_tiny_model(tokenizer, "llada", hidden_size=32)
    with pytest.raises(ValueError, match="save_pretrained"):
        DiPODTrainer(model, [digit_reward], args=make_config(tmp_path, beta=0.04), train_dataset=make_dataset(),
                     processing_class=tokenizer)


def test_a_native_model_built_from_scratch_saves_loads_and_trains_with_kl(tmp_path, tokenizer):
    """No Hub code behind it: the saved config has no auto_map, and TRL builds the KL reference natively."""
    from test_trainer import digit_reward, make_config, make_dataset

    from dipod_trl import DiPODTrainer

    build_tiny_model(tokenizer, "llada", hidden_size=32).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    trainer = DiPODTrainer(str(tmp_path / "m"), [digit_reward], args=make_config(tmp_path, beta=0.04, max_steps=1),
                           train_dataset=make_dataset())
    assert type(trainer.ref_model) is type(trainer.model)
    trainer.train()
