"""Shared fixtures: tiny tokenizer and models built locally (no hub), and a few toy models with known likelihoods."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # tiny.py, demo.py, custom_task.py
from tiny import build_tiny_model, build_tiny_tokenizer, save_tiny  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per xdist worker: `-n 2` on 2 cores with 2 threads each oversubscribes them, and OpenMP's spin-waiting
# then slows small forwards down by an order of magnitude.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture(scope="session")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_model(tokenizer):
    return build_tiny_model(tokenizer, "modernbert")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny(str(tmp_path_factory.mktemp("tiny-modernbert")), "modernbert")


class ContextFreeLM(nn.Module):
    """p(x_i | anything) = softmax(table[i]): predictions ignore every other token (exact log-likelihood known)."""

    def __init__(self, length: int, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(length, vocab, generator=g))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[: input_ids.size(1)].unsqueeze(0).expand(input_ids.size(0), -1, -1))


class BagOfTokensLM(nn.Module):
    """A context-dependent mask-predictor: logits depend on the sum of embeddings of all visible tokens."""

    def __init__(self, vocab: int, dim: int = 16, length: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(length, dim))
        self.out = nn.Linear(2 * dim, vocab)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids) * 2.0
        context = h.sum(dim=1, keepdim=True).expand_as(h)
        pos = self.pos[: input_ids.size(1)].unsqueeze(0).expand_as(h)
        return SimpleNamespace(logits=self.out(torch.cat([context + pos, h], dim=-1)))
