"""LLaDA-style diffusion sampler: iterative unmasking, block-wise semi-autoregressive, vectorised over the batch.

The completion starts as `gen_length` mask tokens after the (left-padded) prompt. It is revealed block by block from
left to right; inside a block, `steps_per_block` forwards each reveal a scheduled number of tokens per row, chosen
by model confidence (`low_confidence`) or at random (`random`). Tokens are drawn by Gumbel-max, which samples from
`softmax(logits / temperature)`; temperature 0 is greedy.

Block-diffusion models (`adapter.block_size` set) are sampled by `dipod_trl.block_sampler` with the same arguments:
`block_length` must be the model's trained block size, and their KV cache is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .block_cache import KV_CACHE_MODES, BlockCache
from .families import unwrap
from .models import DiffusionLM


def default_block_length(model_block_size: int | None, gen_length: int) -> int:
    """The block length when none is given: a block-diffusion model's trained block size, else 32 (capped at
    `gen_length`)."""
    return model_block_size or min(32, gen_length)


def block_steps(steps: int, gen_length: int, block_size: int) -> int:
    """Denoising steps per block of a block-diffusion model: `steps` split over the `ceil(gen_length / block_size)`
    blocks that `gen_length` tokens span (a completion may end inside a block), at least 1 and at most `block_size`
    (one token per step). Every generated block gets this many, including the one a prompt tail shares."""
    num_blocks = -(-gen_length // block_size)
    return min(max(steps // num_blocks, 1), block_size)


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


def select_top(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
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
    threshold: float | None = None,
    kv_cache: str | None = None,
    cache_refresh: int = 0,
    eos_token_ids: Sequence[int] | None = None,
    stats: dict | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    pad_token_id: int = 0,
    sampler_settings: dict | None = None,
    min_p: float | None = None,
) -> torch.Tensor:
    """Generate `gen_length` tokens after each left-padded prompt; returns the completions `(B, gen_length)`.

    Exact decoding (the defaults) reveals a fixed schedule of `steps / num_blocks` steps per block. Fast paths:
    `threshold` reveals every masked token of the block whose confidence reaches it, at least one per row and step,
    until the block is done (Fast-dLLM's parallel decoding; `steps` is then unused). `kv_cache` (`"prefix"` or
    `"dual"`) caches the keys/values outside the active block, refreshed at block boundaries and every
    `cache_refresh` steps (0: only there); see `dipod_trl.block_cache`. `eos_token_ids` stops once every row has an
    EOS in a finished block and fills the rest with the first of them (LLaDA pads with EOS). `stats`, if given,
    receives the number of forwards.

    Invariants: prompt tokens never change; no mask token remains; a fixed `generator` seed gives the same output.
    The lm-head runs on the active block only (`adapter.sparse_logits`) and noise is drawn for masked positions only.
    `top_k` / `top_p` / `min_p` filter the proposal distribution (after the temperature, in transformers' order);
    confidences are read from the filtered distribution.

    Encoder-decoder canvas models (DiffusionGemma) sample with their own `generate` (`canvas_generate`): their
    knobs are `sampler_settings` (`canvas_sampler.SAMPLER_SETTINGS`, e.g. `t_min`, `t_max`), `steps` is spread over
    the canvases as `max_denoising_steps` (`None`: the generation config's), `temperature` scales the temperature
    schedule (`t_min`, `t_max`), and the mask-sampler knobs (remasking, threshold, guidance, cache, top-k/top-p)
    are refused by name. Block-diffusion
    models go to `block_diffusion_generate`, with `block_steps(steps, gen_length, block)` steps per
    block; `gen_length` need not be a multiple of their block size (the last block is generated whole and cut).
    Their `kv_cache` is `"prefix"` (exact, the default `None`) or `"none"` (recompute every step).
    """
    if adapter.attention == "encoder_decoder":
        return _generate_canvases(model, prompt_ids, prompt_mask, gen_length, block_length, steps, temperature,
                                  remasking, cfg_scale, threshold, kv_cache, eos_token_ids, stats, top_k, top_p,
                                  pad_token_id, sampler_settings, min_p)
    if sampler_settings:
        raise ValueError(f"Unknown sampler setting(s) {sorted(sampler_settings)} (generation_kwargs): this sampler "
                         "takes none; use the named DiPODConfig knobs (temperature, top_k, top_p, remasking, ...).")
    if adapter.block_size is not None:
        return _generate_blocks(model, adapter, prompt_ids, prompt_mask, gen_length, block_length, steps, temperature,
                                remasking, cfg_scale, generator, threshold, kv_cache, eos_token_ids, stats, top_k,
                                top_p, pad_token_id, min_p)
    kv_cache = kv_cache or "none"
    if gen_length % block_length != 0:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length}).")
    num_blocks = gen_length // block_length
    if steps % num_blocks != 0 or steps < num_blocks:
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of blocks ({num_blocks}).")
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"Unknown remasking {remasking!r}; use 'low_confidence' or 'random'.")
    if threshold is not None and (remasking != "low_confidence" or not 0.0 < threshold <= 1.0):
        raise ValueError(f"threshold ({threshold}) must be in (0, 1] and needs remasking='low_confidence'.")
    if kv_cache not in KV_CACHE_MODES:
        raise ValueError(f"kv_cache must be one of {KV_CACHE_MODES}, got {kv_cache!r}.")
    if kv_cache != "none" and cfg_scale > 0:
        raise ValueError("kv_cache does not combine with classifier-free guidance (cfg_scale > 0); choose one.")
    steps_per_block = steps // num_blocks
    batch, prompt_len = prompt_ids.shape
    mask_id = adapter.mask_token_id
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids)

    x = torch.cat([prompt_ids, prompt_ids.new_full((batch, gen_length), mask_id)], dim=1)
    attention_mask = torch.cat([prompt_mask, prompt_mask.new_ones((batch, gen_length))], dim=1)
    is_prompt = torch.zeros_like(x, dtype=torch.bool)
    is_prompt[:, :prompt_len] = prompt_mask.bool()
    cache = BlockCache(model, adapter, attention_mask, kv_cache, cache_refresh) if kv_cache != "none" else None
    eos = torch.tensor(list(eos_token_ids or []), device=x.device, dtype=x.dtype)
    forwards = 0
    was_training = model.training
    model.eval()  # no dropout, and a KV cache even under gradient checkpointing
    try:
        for block in range(num_blocks):
            start, end = prompt_len + block * block_length, prompt_len + (block + 1) * block_length
            schedule = transfer_schedule((x[:, start:end] == mask_id).sum(dim=1), steps_per_block)
            step = 0
            while threshold is not None or step < steps_per_block:
                masked = x[:, start:end] == mask_id
                if not masked.any():
                    break
                if cache is not None:
                    logits = cache.block_logits(x, start, end, step)
                else:
                    logits = _block_logits(model, adapter, x, attention_mask, is_prompt, cfg_scale, start, end)
                forwards += 1
                proposal, confidence = _propose(logits, masked, mask_id, temperature, remasking, generator, top_k, top_p,
                                                min_p)
                if threshold is None:
                    reveal = select_top(confidence, schedule[:, step])
                else:  # everything confident enough, and at least the most confident masked token of each row
                    reveal = (confidence >= threshold) | select_top(confidence, torch.ones_like(schedule[:, 0]))
                x[:, start:end] = torch.where(reveal & masked, proposal, x[:, start:end])
                step += 1
            if eos.numel() and bool(torch.isin(x[:, prompt_len:end], eos).any(dim=1).all()):
                x[:, end:] = eos[0]
                break
    finally:
        model.train(was_training)
    if stats is not None:
        stats["forwards"] = stats.get("forwards", 0) + forwards
    return x[:, prompt_len:]


def _generate_blocks(model, adapter, prompt_ids, prompt_mask, gen_length, block_length, steps, temperature, remasking,
                     cfg_scale, generator, threshold, kv_cache, eos_token_ids, stats, top_k, top_p, pad_token_id,
                     min_p):
    from .block_sampler import block_diffusion_generate

    block = adapter.block_size
    if block_length != block:
        raise ValueError(f"This block-diffusion model was trained with blocks of {block} tokens; block_length "
                         f"{block_length} would change its attention pattern. Leave block_length unset (or {block}).")
    if gen_length < 1 or steps < 1:
        raise ValueError(f"gen_length ({gen_length}) and steps ({steps}) must be positive.")
    if kv_cache not in (None, "prefix", "none"):
        raise ValueError(f"kv_cache={kv_cache!r}: block-diffusion models cache the prompt and finished blocks exactly "
                         "('prefix', the default) or recompute them ('none'); later blocks are never attended.")
    if cfg_scale > 0:
        raise ValueError("cfg_scale > 0 (classifier-free guidance) is not implemented for block-diffusion models.")
    return block_diffusion_generate(
        model, adapter, prompt_ids, prompt_mask, gen_length=gen_length,
        steps_per_block=block_steps(steps, gen_length, block),
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, remasking=remasking, threshold=threshold,
        kv_cache=kv_cache != "none", eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, generator=generator,
        stats=stats)


def _generate_canvases(model, prompt_ids, prompt_mask, gen_length, block_length, steps, temperature, remasking,
                       cfg_scale, threshold, kv_cache, eos_token_ids, stats, top_k, top_p, pad_token_id,
                       sampler_settings, min_p):
    from .canvas_sampler import canvas_generate, check_mask_sampler_knobs

    check_mask_sampler_knobs(remasking=remasking, decoding_threshold=threshold, cfg_scale=cfg_scale,
                             kv_cache=kv_cache, top_k=top_k, top_p=top_p, min_p=min_p)
    settings = dict(sampler_settings or {})
    generation = unwrap(model).generation_config
    if temperature != 1.0 and "t_min" not in settings and "t_max" not in settings:
        # generate's temperature at step n is t_min + (t_max - t_min) n / N: scaling both ends scales every step.
        # It has no greedy mode: temperature 0 takes the near-greedy schedule (1e-4, 2e-4).
        t_min, t_max = (1e-4, 2e-4) if temperature <= 0 else (generation.t_min, generation.t_max)
        scale = 1.0 if temperature <= 0 else temperature
        settings.update(t_min=scale * t_min, t_max=scale * t_max)
    canvas = getattr(unwrap(model).config, "canvas_length", None) or block_length
    if steps is not None and "max_denoising_steps" not in settings:
        settings["max_denoising_steps"] = max(1, steps // -(-gen_length // canvas))
    return canvas_generate(model, prompt_ids, prompt_mask, gen_length=gen_length, eos_token_ids=eos_token_ids,
                           pad_token_id=pad_token_id, stats=stats, **settings)


def filtering(top_k: int | None = 0, top_p: float | None = 1.0, min_p: float | None = None) -> bool:
    """Whether any of the proposal filters is active."""
    return bool(top_k) or (top_p is not None and top_p < 1.0) or bool(min_p)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float | None = None) -> torch.Tensor:
    """Keep the `top_k` largest logits, the smallest nucleus of mass `>= top_p`, and the tokens at least `min_p`
    times as likely as the most likely one (transformers' min-p); the rest set to -inf, in that order."""
    if top_k and 0 < top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p is not None and top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.float().softmax(-1)
        drop = (probs.cumsum(-1) - probs) >= top_p  # tokens after the nucleus is complete
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -torch.inf)
    if min_p:
        probs = logits.float().softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), -torch.inf)
    return logits


def _propose(
    logits: torch.Tensor, masked: torch.Tensor, mask_id: int, temperature: float, remasking: str,
    generator: torch.Generator | None, top_k: int = 0, top_p: float = 1.0, min_p: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposed tokens and their confidence `(B, block)` at masked positions (-1 confidence elsewhere).

    Only the masked positions are sampled (and draw noise); the mask token itself is never proposed.
    """
    chosen = logits[masked]
    chosen[:, mask_id] = -torch.inf
    if filtering(top_k, top_p, min_p):  # TRL's order: temperature first, then the filters
        scaled = chosen / temperature if temperature > 0 else chosen
        support = filter_logits(scaled, top_k, top_p, min_p) > -torch.inf
        chosen = chosen.masked_fill(~support, -torch.inf)
    tokens = gumbel_argmax(chosen, temperature, generator)
    if remasking == "low_confidence":
        probs = torch.softmax(chosen.float(), dim=-1)
        score = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    else:
        score = torch.rand(tokens.shape, generator=generator, device=logits.device)
    proposal = torch.full(masked.shape, mask_id, dtype=tokens.dtype, device=logits.device)
    confidence = torch.full(masked.shape, -1.0, device=logits.device)
    return proposal.masked_scatter(masked, tokens), confidence.masked_scatter(masked, score.float())


def _block_logits(
    model: nn.Module,
    adapter: DiffusionLM,
    x: torch.Tensor,
    attention_mask: torch.Tensor,
    is_prompt: torch.Tensor,
    cfg_scale: float,
    start: int,
    end: int,
) -> torch.Tensor:
    """Logits `(B, block, V)` of the active block, with classifier-free guidance against a prompt-masked copy."""
    batch = x.size(0)
    if cfg_scale > 0:
        x = torch.cat([x, x.masked_fill(is_prompt, adapter.mask_token_id)])
        attention_mask = torch.cat([attention_mask, attention_mask])
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[:, start:end] = True
    logits = adapter.scored_logits(model, x, attention_mask, keep).view(x.size(0), end - start, -1)
    if cfg_scale <= 0:
        return logits
    cond, uncond = logits[:batch], logits[batch:]
    return uncond + (cfg_scale + 1.0) * (cond - uncond)
