"""LLaDA-style diffusion sampler: iterative unmasking, block-wise semi-autoregressive, vectorised over the batch.

The completion starts as `gen_length` mask tokens after the (left-padded) prompt. It is revealed block by block from
left to right; inside a block, `steps_per_block` forwards each reveal a scheduled number of tokens per row, chosen
by model confidence (`low_confidence`) or at random (`random`). Tokens are drawn by Gumbel-max, which samples from
`softmax(logits / temperature)`; temperature 0 is greedy.
"""

from __future__ import annotations

import torch
from torch import nn

from .models import DiffusionLM


def transfer_schedule(num_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to reveal per step `(B, steps)`: `num_masked` split as evenly as possible, the remainder first."""
    base = num_masked.unsqueeze(1) // steps
    remainder = num_masked.unsqueeze(1) % steps
    step_index = torch.arange(steps, device=num_masked.device).unsqueeze(0)
    return base + (step_index < remainder).long()


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Sample from `softmax(logits / temperature)` by Gumbel-max, in float64 (low precision biases the draw)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    return (logits.double() / temperature + gumbel).argmax(dim=-1)


def _select_top(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the `counts[b]` highest `scores` in each row, without a per-row loop."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(scores.size(-1), device=scores.device)
                                             .expand_as(order).contiguous())
    return ranks < counts.unsqueeze(-1)


@torch.no_grad()
def diffusion_generate(
    model: nn.Module,
    adapter: DiffusionLM,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor | None = None,
    *,
    gen_length: int = 128,
    block_length: int = 32,
    steps: int = 64,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate `gen_length` tokens after each left-padded prompt; returns the completions `(B, gen_length)`.

    Invariants: prompt tokens never change; each step reveals exactly the scheduled number of tokens per row; no mask
    token remains; a fixed `generator` seed gives the same output.
    """
    if gen_length % block_length != 0:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length}).")
    num_blocks = gen_length // block_length
    if steps % num_blocks != 0 or steps < num_blocks:
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of blocks ({num_blocks}).")
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"Unknown remasking {remasking!r}; use 'low_confidence' or 'random'.")
    steps_per_block = steps // num_blocks
    batch, prompt_len = prompt_ids.shape
    device = prompt_ids.device
    mask_id = adapter.mask_token_id
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids)

    x = torch.cat([prompt_ids, prompt_ids.new_full((batch, gen_length), mask_id)], dim=1)
    attention_mask = torch.cat([prompt_mask, prompt_mask.new_ones((batch, gen_length))], dim=1)
    is_prompt = torch.zeros_like(x, dtype=torch.bool)
    is_prompt[:, :prompt_len] = prompt_mask.bool()

    for block in range(num_blocks):
        start = prompt_len + block * block_length
        end = start + block_length
        schedule = transfer_schedule((x[:, start:end] == mask_id).sum(dim=1), steps_per_block)
        for step in range(steps_per_block):
            logits = _guided_logits(model, adapter, x, attention_mask, is_prompt, cfg_scale)[:, start:end]
            logits[..., mask_id] = -torch.inf  # never propose the mask token itself
            masked = x[:, start:end] == mask_id
            proposal = gumbel_argmax(logits, temperature, generator)
            if remasking == "low_confidence":
                probs = torch.softmax(logits.float(), dim=-1)
                confidence = probs.gather(-1, proposal.unsqueeze(-1)).squeeze(-1)
            else:
                confidence = torch.rand(masked.shape, generator=generator, device=device)
            confidence = confidence.masked_fill(~masked, -1.0)
            reveal = _select_top(confidence, schedule[:, step]) & masked
            x[:, start:end] = torch.where(reveal, proposal, x[:, start:end])
    return x[:, prompt_len:]


def _guided_logits(
    model: nn.Module,
    adapter: DiffusionLM,
    x: torch.Tensor,
    attention_mask: torch.Tensor,
    is_prompt: torch.Tensor,
    cfg_scale: float,
) -> torch.Tensor:
    """Logits at every position, with classifier-free guidance against a prompt-masked copy when `cfg_scale > 0`."""
    if cfg_scale <= 0:
        return adapter.logits(model, x, attention_mask)
    unconditional = x.masked_fill(is_prompt, adapter.mask_token_id)
    both = adapter.logits(model, torch.cat([x, unconditional]), torch.cat([attention_mask, attention_mask]))
    cond, uncond = both.chunk(2)
    return uncond + (cfg_scale + 1.0) * (cond - uncond)
