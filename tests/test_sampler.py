import pytest
import torch

from dipod_trl.models import DiffusionLM, diffusion_adapter
from dipod_trl.sampler import diffusion_generate, transfer_schedule


class Recorder(torch.nn.Module):
    """Wraps a model and records every input it sees."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.seen = []

    def forward(self, input_ids, attention_mask=None):
        self.seen.append(input_ids.clone())
        return self.model(input_ids=input_ids, attention_mask=attention_mask)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()


def _prompts(tokenizer):
    rows = [list(range(20, 26)), list(range(30, 34)), list(range(40, 45))]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    return ids, (ids != tokenizer.pad_token_id).long()


def test_transfer_schedule_even_split():
    sched = transfer_schedule(torch.tensor([8, 7, 3]), 4)
    assert sched.tolist() == [[2, 2, 2, 2], [2, 2, 2, 1], [1, 1, 1, 0]]


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_sampler_invariants(tiny_model, tokenizer, remasking):
    adapter = diffusion_adapter(tiny_model, tokenizer)
    model = Recorder(tiny_model)
    ids, mask = _prompts(tokenizer)
    gen, block, steps = 12, 4, 6
    out = diffusion_generate(model, adapter, ids, mask, gen_length=gen, block_length=block, steps=steps,
                             temperature=1.0, remasking=remasking, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, gen)
    assert not (out == adapter.mask_token_id).any(), "a mask token survived"
    for x in model.seen:  # prompts (and their padding) never change
        assert torch.equal(x[:, : ids.size(1)], ids)
    masked_counts = torch.stack([(x[:, ids.size(1):] == adapter.mask_token_id).sum(1) for x in model.seen])
    masked_counts = torch.cat([masked_counts, torch.zeros(1, 3, dtype=torch.long)])
    revealed = masked_counts[:-1] - masked_counts[1:]
    assert (revealed == block // (steps // (gen // block))).all(), revealed.T  # 2 tokens per step in every row
    # tokens outside the current block stay masked until their block starts
    first = model.seen[0][:, ids.size(1):]
    assert (first == adapter.mask_token_id).all()


def test_sampler_seeded_and_rowwise_independent(tiny_model, tokenizer):
    adapter = diffusion_adapter(tiny_model, tokenizer)
    ids = torch.tensor([list(range(20, 26)), list(range(30, 36))])
    kw = dict(gen_length=8, block_length=4, steps=4, temperature=1.0)
    a = diffusion_generate(tiny_model, adapter, ids, generator=torch.Generator().manual_seed(1), **kw)
    b = diffusion_generate(tiny_model, adapter, ids, generator=torch.Generator().manual_seed(1), **kw)
    c = diffusion_generate(tiny_model, adapter, ids, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    kw["temperature"] = 0.0  # greedy: a row's result must not depend on its batch-mates
    both = diffusion_generate(tiny_model, adapter, ids, **kw)
    for r in range(2):
        alone = diffusion_generate(tiny_model, adapter, ids[r : r + 1], **kw)
        assert torch.equal(both[r], alone[0])


def test_sampler_cfg_runs_conditional_and_unconditional(tiny_model, tokenizer):
    adapter = diffusion_adapter(tiny_model, tokenizer)
    model = Recorder(tiny_model)
    ids = torch.tensor([list(range(20, 26))])
    out = diffusion_generate(model, adapter, ids, gen_length=4, block_length=4, steps=2, cfg_scale=1.5)
    assert not (out == adapter.mask_token_id).any()
    assert model.seen[0].size(0) == 2 and (model.seen[0][1, :6] == adapter.mask_token_id).all()


def test_sampler_rejects_bad_schedule(tiny_model, tokenizer):
    adapter = DiffusionLM(tokenizer.mask_token_id)
    with pytest.raises(ValueError, match="multiple of block_length"):
        diffusion_generate(tiny_model, adapter, torch.tensor([[5, 6]]), gen_length=10, block_length=4, steps=4)
    with pytest.raises(ValueError, match="number of blocks"):
        diffusion_generate(tiny_model, adapter, torch.tensor([[5, 6]]), gen_length=8, block_length=4, steps=3)
