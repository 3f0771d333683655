"""Sampler for block-diffusion LMs (SDAR, LLaDA2): blocks left to right, an exact KV cache, batched.

Blocks are counted from each row's first real token, as the models' own `generate()` does: a prompt of `P` tokens
fills `P // block` whole blocks, and its last `P % block` tokens share the first generated block with the first
completion tokens. Rows are laid out on one canvas so that every row's blocks fall on the same columns: row `r` is
left-padded by whole blocks, and the first generated block (columns `Q * block ...`) holds each row's prompt tail.
Generation goes on to the end of the block holding a row's last completion token (as the originals do) and keeps
the first `gen_length` completion tokens.

Inside the active block, each step proposes a token for every masked position (Gumbel-max from the temperature-
scaled, `top_k`/`top_p`/`min_p`-filtered distribution; temperature 0 is greedy) and reveals `schedule[step]` of them (the
block length split over `steps_per_block`, capped by what is still masked): the most confident (`low_confidence`)
or random ones (`random`). With `threshold` (SDAR's `low_confidence_dynamic`, LLaDA2's default 0.95), every proposal
whose confidence exceeds it is revealed if there are at least `schedule[step]` of them, else the top
`schedule[step]`. Confidence is the probability of the proposal under the filtered distribution.

Prompt and finished blocks are causal context, so their keys and values are cached exactly: the whole-block prompt
prefix is prefilled once, and each finished block is stored by the same forward that makes the next block's first
step. `kv_cache=False` recomputes the canvas up to the active block at every step (LLaDA2's own `generate()`): same
tokens, the reference the tests compare the cache with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import DynamicCache

from .block_attention import block_causal_mask
from .models import DiffusionLM
from .sampler import filter_logits, gumbel_argmax, select_top

REMASKING = ("low_confidence", "random")


def block_schedule(block_size: int, steps: int) -> list[int]:
    """Tokens to reveal at each of a block's `steps` (the originals' `get_num_transfer_tokens`)."""
    base, remainder = divmod(block_size, steps)
    return [base + (i < remainder) for i in range(steps)]


class _Canvas:
    """Rows laid out so that blocks share columns; `completion()` reads each row's `gen_length` tokens back."""

    def __init__(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, gen_length: int, block: int,
                 mask_id: int, pad_id: int):
        b, width = prompt_ids.shape
        device = prompt_ids.device
        lengths = prompt_mask.long().sum(1)
        full, tail = lengths // block, lengths % block
        self.prefix_blocks = int(full.max()) if b else 0
        self.num_blocks = int(((tail + gen_length + block - 1) // block).max()) if b else 0
        self.block, self.gen_length = block, gen_length
        total = (self.prefix_blocks + self.num_blocks) * block
        lead = (self.prefix_blocks - full) * block  # left padding of each row, in whole blocks
        cols = torch.arange(total, device=device).unsqueeze(0)
        self.position = (cols - lead.unsqueeze(1)).clamp(min=0)
        self.start = (self.prefix_blocks * block + tail).unsqueeze(1)  # first completion column per row
        row_end = self.prefix_blocks * block + (tail + gen_length + block - 1) // block * block
        is_prompt = (cols >= lead.unsqueeze(1)) & (cols < self.start)
        self.generated = (cols >= self.start) & (cols < row_end.unsqueeze(1))
        self.valid = is_prompt | self.generated
        self.x = torch.full((b, total), pad_id, dtype=prompt_ids.dtype, device=device)
        src = prompt_mask.bool()  # left-padded prompt tokens, in order, into each row's prompt columns
        self.x[is_prompt] = prompt_ids[src]
        self.x[self.generated] = mask_id

    def columns(self, block_index: int) -> slice:
        start = (self.prefix_blocks + block_index) * self.block
        return slice(start, start + self.block)

    def completion(self) -> torch.Tensor:
        index = self.start + torch.arange(self.gen_length, device=self.x.device).unsqueeze(0)
        return self.x.gather(1, index)


@torch.no_grad()
def block_diffusion_generate(
    model: nn.Module,
    adapter: DiffusionLM,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor | None = None,
    *,
    gen_length: int,
    steps_per_block: int | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float | None = None,
    remasking: str = "low_confidence",
    threshold: float | None = None,
    kv_cache: bool = True,
    eos_token_ids: Sequence[int] | None = None,
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """Generate `gen_length` tokens after each left-padded prompt with a block-diffusion model `(B, gen_length)`.

    `steps_per_block` defaults to the block size (one token per step). `eos_token_ids` stops once every row has an
    EOS in a finished block and fills the rest of the completion with the first of them. `stats` receives the
    number of forwards.
    """
    block = adapter.block_size
    if block is None:
        raise ValueError("block_diffusion_generate needs a block-diffusion model (adapter.block_size).")
    steps = steps_per_block or block
    if not 1 <= steps <= block:
        raise ValueError(f"steps per block ({steps}) must be in 1..{block} (the block size).")
    if remasking not in REMASKING:
        raise ValueError(f"Unknown remasking {remasking!r}; use one of {REMASKING}.")
    if threshold is not None and (remasking != "low_confidence" or not 0.0 < threshold <= 1.0):
        raise ValueError(f"threshold ({threshold}) must be in (0, 1] and needs remasking='low_confidence'.")
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids)
    mask_id = adapter.mask_token_id
    canvas = _Canvas(prompt_ids, prompt_mask, gen_length, block, mask_id, pad_token_id)
    schedule = block_schedule(block, steps)
    eos = torch.tensor(list(eos_token_ids or []), device=prompt_ids.device, dtype=prompt_ids.dtype)
    forward = _CachedForward(model, canvas) if kv_cache else _FullForward(model, canvas)
    was_training = model.training
    model.eval()
    try:
        forward.prefill()
        for index in range(canvas.num_blocks):
            cols = canvas.columns(index)
            for step in range(steps):
                masked = (canvas.x[:, cols] == mask_id) & canvas.generated[:, cols]
                if not masked.any():
                    break
                logits = forward.block_logits(index)
                proposal, confidence = _propose(logits, masked, temperature, top_k, top_p, min_p, remasking,
                                                generator)
                count = torch.minimum(masked.sum(1), torch.full_like(masked.sum(1), schedule[step]))
                reveal = select_top(confidence, count)
                if threshold is not None:
                    confident = (confidence > threshold) & masked
                    reveal = torch.where((confident.sum(1) >= count).unsqueeze(1), confident, reveal)
                canvas.x[:, cols] = torch.where(reveal & masked, proposal, canvas.x[:, cols])
            done = canvas.generated[:, : cols.stop] & (canvas.x[:, : cols.stop] != mask_id)
            if eos.numel() and bool((torch.isin(canvas.x[:, : cols.stop], eos) & done).any(1).all()):
                rest = canvas.generated.clone()
                rest[:, : cols.stop] = False
                canvas.x[rest] = eos[0]
                break
            forward.finish(index)
    finally:
        model.train(was_training)
    if stats is not None:
        stats["forwards"] = stats.get("forwards", 0) + forward.calls
    return canvas.completion()


def _propose(logits, masked, temperature, top_k, top_p, min_p, remasking, generator):
    """Proposals and confidences `(B, block)` at masked positions (-1 confidence elsewhere)."""
    chosen = logits[masked].float()
    scaled = filter_logits(chosen / temperature if temperature > 0 else chosen, top_k, top_p, min_p)
    tokens = gumbel_argmax(scaled, 1.0 if temperature > 0 else 0.0, generator)
    if remasking == "low_confidence":
        score = scaled.softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    else:
        score = torch.rand(tokens.shape, generator=generator, device=logits.device)
    proposal = torch.zeros(masked.shape, dtype=tokens.dtype, device=logits.device)
    confidence = torch.full(masked.shape, -1.0, device=logits.device)
    return proposal.masked_scatter(masked, tokens), confidence.masked_scatter(masked, score.float())


class _FullForward:
    """No cache: each step runs the canvas up to the active block under the block-causal mask."""

    def __init__(self, model: nn.Module, canvas: _Canvas):
        self.model, self.canvas, self.calls = model, canvas, 0

    def prefill(self) -> None:
        pass

    def block_logits(self, index: int) -> torch.Tensor:
        c = self.canvas
        cols = c.columns(index)
        keep = torch.zeros_like(c.valid[:, : cols.stop])
        keep[:, cols] = True
        mask = block_causal_mask(c.position[:, : cols.stop], c.valid[:, : cols.stop], c.block)
        out = self.model(input_ids=c.x[:, : cols.stop], attention_mask=mask, position_ids=c.position[:, : cols.stop],
                         logits_to_keep=keep)
        self.calls += 1
        return out.logits.view(c.x.size(0), c.block, -1)

    def finish(self, index: int) -> None:
        pass


class _CachedForward:
    """Exact cache: the prefix once, then per block its denoising steps over the block alone; a finished block's
    keys and values are stored by the forward that also makes the next block's first step."""

    def __init__(self, model: nn.Module, canvas: _Canvas):
        self.model, self.canvas, self.calls = model, canvas, 0
        self.cache = DynamicCache()
        self.pending: tuple[int, torch.Tensor] | None = None  # (block, logits of its first step) from the storing call
        self.stored = 0  # columns whose keys/values are in the cache

    def _run(self, start: int, stop: int, keep_from: int) -> torch.Tensor:
        """Forward columns `start:stop` on the cache (`start == self.stored`); logits of columns `keep_from:stop`."""
        c = self.canvas
        q = slice(start, stop)
        mask = block_causal_mask(c.position[:, :stop], c.valid[:, :stop], c.block, queries=q)
        keep = torch.zeros_like(c.valid[:, q])
        keep[:, keep_from - start:] = True
        out = self.model(input_ids=c.x[:, q], attention_mask=mask, position_ids=c.position[:, q], cache=self.cache,
                         use_cache=True, logits_to_keep=keep)
        self.calls += 1
        return out.logits.view(c.x.size(0), stop - keep_from, -1)

    def _keep(self, length: int) -> None:
        """Drop the cached keys/values past the first `length` columns."""
        extra = self.cache.get_seq_length() - length
        if extra > 0:
            self.cache.crop(-extra)

    def prefill(self) -> None:
        c = self.canvas
        stop = c.prefix_blocks * c.block
        if stop > 0:
            self._run(0, stop, stop - 1)
            self.stored = stop

    def block_logits(self, index: int) -> torch.Tensor:
        pending, self.pending = self.pending, None
        if pending is not None and pending[0] == index:
            return pending[1]
        cols = self.canvas.columns(index)
        logits = self._run(cols.start, cols.stop, cols.start)
        self._keep(self.stored)
        return logits

    def finish(self, index: int) -> None:
        c = self.canvas
        cols = c.columns(index)
        if index + 1 < c.num_blocks:  # store this block and take the next block's first step in one forward
            following = c.columns(index + 1)
            self.pending = (index + 1, self._run(cols.start, following.stop, following.start))
            self._keep(cols.stop)
        self.stored = cols.stop
