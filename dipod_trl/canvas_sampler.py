"""Rollouts of DiffusionGemma through transformers' own `DiffusionGemmaForBlockDiffusion.generate`.

`generate` writes canvases of `config.canvas_length` tokens left to right. Each canvas starts from uniform random
tokens and is denoised for at most `max_denoising_steps` decoder calls: every step samples a token per position from
the temperature-scaled logits (the temperature falls linearly from `t_max` at the first step to `t_min`), accepts the
lowest-entropy samples whose summed entropy minus the largest stays within `entropy_bound` and renoises the rest;
the canvas stops early once its argmax is stable for `stability_threshold` steps and its mean entropy is below
`confidence_threshold`. The canvas written out is the argmax of the last step's logits. Self-conditioning feeds
each step's temperature-scaled logits to the next. A row is finished once a canvas holds an EOS: `generate` writes
`pad_token_id` after its first EOS and over every later canvas, and stops when all rows are finished.

What it can and cannot do for RL (transformers 5.24):
- batched left-padded prompts work when the 2-D `attention_mask` is passed (without it pads are attended);
- all randomness comes from torch's global RNG (`generator` is ignored): rows of a batch share one stream, so a
  row's sample depends on the batch; TRL seeds the global RNG per rank and checkpoints it;
- `temperature`, `do_sample`, `top_k`, `top_p` and `generator` are accepted and silently ignored: refused here;
- the new part is a whole number of canvases: `max_new_tokens` is rounded up to canvases, the output cut back;
- no per-token sampling log-probabilities: the written tokens are an argmax after a stochastic trajectory, so the
  likelihood of a rollout has to be estimated (`dipod_trl.uniform_likelihood`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# The knobs `generate` reads, with `generation_config.json`'s names (`entropy_bound` sets `sampler_config`).
SAMPLER_SETTINGS = ("max_denoising_steps", "t_min", "t_max", "entropy_bound", "stability_threshold",
                    "confidence_threshold", "cache_implementation")
# Accepted by `generate` and without effect: refused, so that a setting never silently does nothing.
IGNORED_SETTINGS = {
    "temperature": "the temperature schedule is t_max (first denoising step) -> t_min (last step)",
    "do_sample": "every step samples; t_min/t_max near 0 (e.g. 1e-4, 2e-4) is the near-greedy setting",
    "top_k": "there is no top-k filter; entropy_bound sets how many sampled tokens each step accepts",
    "top_p": "there is no nucleus filter; entropy_bound sets how many sampled tokens each step accepts",
    "generator": "generate draws from torch's global RNG; seed it with torch.manual_seed",
}

# DiPODConfig's knobs of the mask-token samplers, at their defaults: `generate` has no such knob, so any other value
# is refused (`check_mask_sampler_knobs`: at start-up by the trainer, and again by every call of the sampler).
MASK_SAMPLER_KNOBS = {"remasking": "low_confidence", "decoding_threshold": None, "cfg_scale": 0.0, "kv_cache": None,
                      "top_k": 0, "top_p": 1.0, "min_p": None}


def check_mask_sampler_knobs(**knobs) -> None:
    """Refuse, by name, the `MASK_SAMPLER_KNOBS` set away from their defaults (`top_k` None = 0, `top_p` None = 1,
    `min_p` 0 = None)."""
    normalised = {**knobs, "top_k": knobs.get("top_k") or 0,
                  "top_p": 1.0 if knobs.get("top_p") is None else knobs["top_p"], "min_p": knobs.get("min_p") or None}
    bad = [name for name, default in MASK_SAMPLER_KNOBS.items() if name in knobs and normalised[name] != default]
    if bad:
        raise ValueError(f"{bad}: DiffusionGemma samples with its own generate (entropy-bound sampler), which has no "
                         "such knob; set its own through generation_kwargs (t_min/t_max for the temperature "
                         "schedule, max_denoising_steps, entropy_bound, ...).")


def generation_kwargs(**settings) -> dict:
    """`generate` keyword arguments for `settings` (names in `SAMPLER_SETTINGS`, `None` = the model's default)."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    ignored = sorted(k for k, v in settings.items() if k in IGNORED_SETTINGS and v is not None)
    if ignored:
        raise ValueError("DiffusionGemma's generate accepts and ignores "
                         + "; ".join(f"{k} ({IGNORED_SETTINGS[k]})" for k in ignored) + ".")
    unknown = sorted(k for k in settings if k not in SAMPLER_SETTINGS and k not in IGNORED_SETTINGS)
    if unknown:
        raise ValueError(f"Unknown DiffusionGemma sampler setting(s) {unknown}; the knobs are {SAMPLER_SETTINGS}.")
    kwargs = {k: v for k, v in settings.items() if k in SAMPLER_SETTINGS and v is not None}
    if "entropy_bound" in kwargs:
        kwargs["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=float(kwargs.pop("entropy_bound")))
    for name in ("t_min", "t_max", "confidence_threshold"):
        if name in kwargs:
            kwargs[name] = float(kwargs[name])
    return kwargs


@torch.no_grad()
def canvas_generate(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor | None,
    *,
    gen_length: int,
    eos_token_ids: Sequence[int] | None,
    pad_token_id: int | None,
    stats: dict | None = None,
    **sampler_settings,
) -> torch.Tensor:
    """`gen_length` completion tokens `(B, gen_length)` after each left-padded prompt, by `model.generate`.

    `eos_token_ids`: the tokens that finish a row (`None`: no EOS stop, every canvas is generated); after a row's
    first EOS the completion holds `pad_token_id` (`generate`'s convention; the trainer keeps a completion up to its
    first EOS). Canvases past `gen_length` are cut off. `sampler_settings`: see `SAMPLER_SETTINGS`; unset ones come
    from `model.generation_config`. `stats` receives `generate`'s `tokens_per_forward` `(B,)`.
    """
    if gen_length < 1:
        raise ValueError(f"gen_length must be positive, got {gen_length}.")
    kwargs = generation_kwargs(**sampler_settings)
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids)
    fill = pad_token_id if pad_token_id is not None else (list(eos_token_ids or [0])[0])
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            prompt_ids, attention_mask=prompt_mask, max_new_tokens=gen_length, return_dict_in_generate=True,
            eos_token_id=list(eos_token_ids) if eos_token_ids else None, pad_token_id=pad_token_id,
            **kwargs)
    finally:
        model.train(was_training)
    completion = out.sequences[:, prompt_ids.size(1):][:, :gen_length]
    if completion.size(1) < gen_length:  # every row finished before the last canvas
        completion = nn.functional.pad(completion, (0, gen_length - completion.size(1)), value=fill)
    if stats is not None:
        stats["tokens_per_forward"] = out.tokens_per_forward
    return completion
