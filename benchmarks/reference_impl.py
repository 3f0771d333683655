"""Benchmark baseline: re-implementations of the DiPOD paper release's rollout sampler and FPO sequence ELBO.

This module is NOT used by the `dipod_trl` library. It exists so that benchmarks can time "the paper's code"
against ours on the same model and the same inputs, without installing the release's trainer (which needs TRL
0.16.0.dev0, accelerate, DeepSpeed, wandb, ...).

Source: the paper release (`Astro-Eric/DiPOD-release`, commit 0028cb0, "Initial release"). Its FPO and FPO+DiPOD
language runs use `language/d1/diffu-grpo/diffu_grpo_trainer.py` (`DiffuGRPOTrainer` with `fpo: True`, set in
`language/d1/diffu-grpo/slurm_scripts/train.yaml:L16`). The functions below follow that file's `generate`,
`add_gumbel_noise`, `get_num_transfer_tokens` and `_get_sequence_elbo`, rewritten here as free functions over a
model whose `model(input_ids).logits` is `(B, L, V)` with row `i` predicting token `i` (LLaDA-style, unshifted).

The only intended deviation everywhere: an optional `generator: torch.Generator | None` is used where the release
draws from torch's global RNG. With `generator=None` the same global-RNG calls are made in the same order.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

LLADA_MASK_ID = 126336  # the release's default `mask_id` (LLaDA's mask token)

RELEASE_TRAINER = "language/d1/diffu-grpo/diffu_grpo_trainer.py"


def _model_dtype(model: nn.Module) -> torch.dtype:
    """`model.dtype` as the release reads it; the first parameter's dtype for modules without that attribute."""
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next(model.parameters()).dtype


def release_add_gumbel_noise(
    logits: torch.Tensor, temperature: float, dtype: torch.dtype, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gumbel-max scores `exp(logits) / (-log u) ** temperature`, computed in `dtype`.

    Follows `language/d1/diffu-grpo/diffu_grpo_trainer.py:L225-L236` (`DiffuGRPOTrainer.add_gumbel_noise`).
    At temperature 0 the logits are returned untouched (greedy argmax). `argmax` of the result samples
    `softmax(logits / temperature)`. Note: the release's docstring says float64, but its `generate` passes
    `dtype=model.dtype` (bfloat16 in the paper's runs), so the noise and `exp` run in the model's dtype; we keep that.
    Deviation: `torch.rand(..., generator=generator)` replaces `torch.rand_like` (identical draws when `None`).
    """
    if temperature == 0.0:
        return logits
    logits = logits.to(dtype)
    uniform = torch.rand(logits.shape, generator=generator, dtype=dtype, device=logits.device)
    return logits.exp() / (-torch.log(uniform)) ** temperature


def release_get_num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to unmask at each of `steps` steps, `(B, steps)` int64: an even split, the remainder on the first steps.

    Follows `language/d1/diffu-grpo/diffu_grpo_trainer.py:L373-L391` (`DiffuGRPOTrainer.get_num_transfer_tokens`),
    the same schedule as LLaDA's reference `get_num_transfer_tokens`.
    """
    counts = mask_index.sum(dim=1, keepdim=True)
    per_step = (counts // steps).expand(-1, steps).clone()
    leftover = counts % steps
    if leftover.sum() > 0:
        first_steps = torch.arange(steps, device=mask_index.device).unsqueeze(0) < leftover
        per_step[first_steps] += 1
    return per_step.to(torch.int64)


def release_generate(
    model: nn.Module,
    prompt: torch.Tensor,
    steps: int = 128,
    gen_length: int = 128,
    block_length: int = 128,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: int = LLADA_MASK_ID,
    *,
    fp16: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The release's rollout sampler; returns the FULL canvas `(B, P + gen_length)`: prompt followed by completion.

    Follows `language/d1/diffu-grpo/diffu_grpo_trainer.py:L238-L327` (`DiffuGRPOTrainer.generate`), which the FPO
    trainer calls for rollouts at `L509-L519` of the same file (in batches of `generation_batch_size`, L497-L525),
    then slices the completion off at `prompt_ids.size(1)` (L528-L530). This method is unchanged from upstream d1's
    trainer (`dllm-reasoning/d1`, `diffu-grpo/diffu_grpo_trainer.py:L150-L239`).

    Algorithm kept as in the release:

    * canvas = prompt + `gen_length` mask tokens; `prompt_index = canvas != mask_id` (used only for CFG);
    * `gen_length / block_length` blocks, `max(1, steps // num_blocks)` steps each; the per-step schedule comes from
      `release_get_num_transfer_tokens` on the block's masked positions at the start of the block;
    * every step runs the model on the whole canvas, `model(x).logits`, with NO attention mask (padded prompts
      attend to padding, as in the release); CFG concatenates a prompt-masked copy into the same forward;
    * proposals `argmax(release_add_gumbel_noise(logits, temperature, dtype=model dtype))`, the mask token's own
      logit included (nothing stops the argmax from proposing `mask_id`);
    * `low_confidence`: confidence = softmax (in the model dtype) probability of the proposal; `random`: uniform;
    * confidence is set to -inf past the current block and on unmasked positions (positions of earlier blocks that
      are still masked stay eligible), then a per-row Python loop of `torch.topk(confidence[j], k)` picks the
      positions to reveal;
    * `torch.cuda.empty_cache()` at the start of every step (CUDA only), as the release does.

    Precision/grad context kept as in the release: on CUDA the step runs inside
    `autocast(enabled=True)` wrapping `autocast(enabled=fp16)`, so with `fp16=False` (the paper's configs:
    `bf16: true`) there is no autocast and the model runs in its own dtype. The release does NOT wrap generation in
    `torch.no_grad()` (it runs from `Trainer.training_step` via `_prepare_inputs`, with the model in train mode), so
    this function does not either: callers choose the grad mode and `model.train()/eval()` to reproduce or not.

    Deviations: `generator` (see module docstring); the canvas is built on `prompt.device` instead of `model.device`;
    `torch.autocast("cuda", ...)` replaces the deprecated `torch.cuda.amp.autocast` and is skipped off-CUDA.
    """
    batch, prompt_len = prompt.shape
    dtype = _model_dtype(model)
    x = torch.full((batch, prompt_len + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :prompt_len] = prompt.clone()
    prompt_index = x != mask_id

    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    steps_per_block = max(1, steps // num_blocks)

    on_cuda = x.is_cuda
    outer = torch.autocast("cuda", enabled=True) if on_cuda else contextlib.nullcontext()
    with outer:
        for block in range(num_blocks):
            block_start = prompt_len + block * block_length
            block_end = block_start + block_length
            schedule = release_get_num_transfer_tokens(x[:, block_start:block_end] == mask_id, steps_per_block)

            for step in range(steps_per_block):
                if on_cuda:
                    torch.cuda.empty_cache()
                mask_index = x == mask_id
                inner = torch.autocast("cuda", enabled=fp16) if on_cuda else contextlib.nullcontext()
                with inner:
                    if cfg_scale > 0.0:
                        unconditional = x.clone()
                        unconditional[prompt_index] = mask_id
                        both = model(torch.cat([x, unconditional], dim=0)).logits
                        cond, uncond = torch.chunk(both, 2, dim=0)
                        logits = uncond + (cfg_scale + 1) * (cond - uncond)
                    else:
                        logits = model(x).logits

                    proposal = torch.argmax(release_add_gumbel_noise(logits, temperature, dtype, generator), dim=-1)

                    if remasking == "low_confidence":
                        probs = F.softmax(logits.to(dtype), dim=-1)
                        proposal_p = torch.gather(probs, dim=-1, index=proposal.unsqueeze(-1)).squeeze(-1)
                    elif remasking == "random":
                        proposal_p = torch.rand(proposal.shape, generator=generator, device=proposal.device)
                    else:
                        raise NotImplementedError(remasking)

                    proposal_p[:, block_end:] = -float("inf")
                    proposal = torch.where(mask_index, proposal, x)
                    confidence = torch.where(mask_index, proposal_p, -float("inf"))

                    reveal = torch.zeros_like(proposal, dtype=torch.bool)
                    for row in range(confidence.shape[0]):
                        k = schedule[row, step].item()
                        if k > 0:
                            _, chosen = torch.topk(confidence[row], k=k)
                            reveal[row, chosen] = True
                    x[reveal] = proposal[reveal]
                    del proposal, confidence, reveal
    return x


def release_completion_mask(completion_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """`(B, C)` int mask of the completion tokens strictly BEFORE the first EOS (the EOS itself is excluded).

    Follows `language/d1/diffu-grpo/diffu_grpo_trainer.py:L532-L537`. Rows without EOS keep all `C` tokens.
    """
    is_eos = completion_ids == eos_token_id
    has_eos = is_eos.any(dim=1)
    first_eos = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long, device=completion_ids.device)
    first_eos[has_eos] = is_eos.int().argmax(dim=1)[has_eos]
    positions = torch.arange(is_eos.size(1), device=completion_ids.device).expand(is_eos.size(0), -1)
    return (positions < first_eos.unsqueeze(1)).int()


def release_sequence_elbo(
    model: nn.Module,
    input_ids: torch.Tensor,
    prompt_length: int,
    num_samples: int = 4,
    mask_id: int = LLADA_MASK_ID,
    *,
    completion_mask: torch.Tensor | None = None,
    eos_token_id: int | None = None,
    stored_randomness: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    randomness_out: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The FPO trainer's per-sequence Monte-Carlo ELBO `(B,)` float32, differentiable (the policy-ratio term).

    Follows `language/d1/diffu-grpo/diffu_grpo_trainer.py:L85-L134` (`DiffuGRPOTrainer._get_sequence_elbo`), used
    with `num_samples=self.elbo_num_samples` (constructor default 4, L53; the train script does not override it)
    for the old/reference ELBOs under `no_grad` at rollout time (L546-L560) and for the current ELBO in
    `compute_loss` (L141-L160, ratio `exp(current - old)`, plus `-dipod_beta * current.mean()` for DiPOD).

    For each of the `num_samples` Monte-Carlo samples, in a sequential Python loop (one forward of `B` rows per
    sample; all `num_samples` autograd graphs stay alive until backward):

    * `L` = `completion_mask.sum(1)`: the completion tokens before the first EOS (EOS and what follows are never
      masked nor scored, but stay visible in the input); the prompt is never masked;
    * `t ~ U(0, 1)` per row (`torch.rand(B)`), `k = floor(t * L)` tokens to mask (so `k` in `{0..L-1}`; `k = 0`
      gives a zero sample), positions = first `k` of `torch.randperm(L)` per row (a per-row Python loop), placed at
      `prompt_length + position`;
    * one full-canvas forward `model(masked).logits` (no attention mask), `F.log_softmax` over the FULL vocabulary
      (in the logits' dtype), gathered at the original tokens, summed over the masked positions;
    * weighted by `L / max(k, 1)`.

    The estimate is the mean over samples, cast to float32.

    Arguments: `input_ids` is `(B, P + C)` with `P = prompt_length`. `completion_mask` `(B, C)` is the release's
    (EOS excluded); if omitted it is derived with `release_completion_mask` from `eos_token_id`, or all ones when
    that is `None` too. `stored_randomness` replays `(mask_rates, masking_matrix)` pairs (as the release does for the
    current/reference ELBOs); otherwise fresh ones are drawn and appended to `randomness_out` if given (the release
    returns them as its second output).

    Deviation: `generator` (see module docstring). `torch.cuda.empty_cache()` at the end is kept (CUDA only).
    """
    batch_size, seq_len = input_ids.shape
    if completion_mask is None:
        completion_ids = input_ids[:, prompt_length:]
        if eos_token_id is None:
            completion_mask = torch.ones_like(completion_ids, dtype=torch.int)
        else:
            completion_mask = release_completion_mask(completion_ids, eos_token_id)
    if completion_mask.shape[1] != seq_len - prompt_length:
        raise ValueError(f"completion_mask has {completion_mask.shape[1]} columns, expected {seq_len - prompt_length}")
    completion_len = completion_mask.sum(dim=1).long()
    device = input_ids.device

    samples = []
    for i in range(num_samples):
        masked_inputs = input_ids.clone()
        if stored_randomness is None:
            mask_rates = torch.rand(batch_size, generator=generator, device=device)
            num_to_mask = (mask_rates * completion_len.float()).long()
            masking_matrix = torch.zeros_like(masked_inputs, dtype=torch.bool)
            for row in range(batch_size):
                order = torch.randperm(completion_len[row].item(), generator=generator, device=device)
                masking_matrix[row, prompt_length + order[: num_to_mask[row]]] = True
            if randomness_out is not None:
                randomness_out.append((mask_rates, masking_matrix))
        else:
            mask_rates, masking_matrix = stored_randomness[i]
            num_to_mask = (mask_rates * completion_len.float()).long()

        masked_inputs[masking_matrix] = mask_id
        logits = model(masked_inputs).logits
        log_probs = F.log_softmax(logits, dim=-1)
        del logits
        token_log_probs = torch.gather(log_probs, 2, input_ids.unsqueeze(-1)).squeeze(-1)
        summed = (token_log_probs * masking_matrix).sum(dim=1)
        weight = completion_len.float() / torch.clamp(num_to_mask.float(), min=1.0)
        samples.append(weight * summed)
        del masked_inputs, log_probs, token_log_probs, summed

    elbos = torch.stack(samples, dim=1).mean(dim=1)
    del samples
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return elbos.to(torch.float32)
