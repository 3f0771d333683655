"""Masked-diffusion SFT: maximise the ELBO of reference completions given their prompts (LLaDA's SFT objective).

Per example: mask `k ~ U{1..L}` of the `L` completion tokens, predict them, weight the cross-entropy by `L / k`
and divide by `L`; the prompt is never masked. This is `-elbo_per_token(...) / L` with one Monte-Carlo sample, so the
same seeded masks and adapter as the RL estimators are used. Small enough for bootstrapping toy models on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .likelihood import elbo_per_token
from .models import DiffusionLM


def sft_loss(
    model: nn.Module,
    adapter: DiffusionLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_length: int,
    seeds: torch.Tensor,
) -> torch.Tensor:
    """Mean over the batch of `-ELBO / L`: the per-token masked-diffusion loss, one mask draw per sequence."""
    c = completion_length
    per_token = elbo_per_token(model, adapter, input_ids, attention_mask, c, seeds, 1)
    length = attention_mask[:, -c:].sum(dim=1).clamp(min=1)
    return (-(per_token * attention_mask[:, -c:]).sum(dim=1) / length).mean()


def masked_diffusion_sft(
    model: nn.Module,
    adapter: DiffusionLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_length: int,
    *,
    steps: int,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    warmup_steps: int = 20,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train `model` in place on the rows of `input_ids` (prompt + completion; `attention_mask` marks real tokens).

    AdamW with linear warm-up then cosine decay; minibatches and masks come from a generator seeded by `seed`.
    `on_step(step, loss)` is called after every update (e.g. to advance a progress bar). Returns the losses.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _warmup_cosine(s, warmup_steps, steps))
    device = next(model.parameters()).device
    model.train()
    losses = []
    for step in range(1, steps + 1):
        rows = torch.randint(0, input_ids.size(0), (batch_size,), generator=generator)
        seeds = torch.randint(0, 2**31 - 1, (batch_size,), generator=generator)
        loss = sft_loss(
            model, adapter, input_ids[rows].to(device), attention_mask[rows].to(device), completion_length,
            seeds.to(device),
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))
