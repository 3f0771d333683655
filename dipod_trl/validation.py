"""Start-up and per-batch checks that turn silent garbage into errors naming the fix.

Each check is a plain function so it can be tested without a Trainer; `DiPODTrainer` calls them once at start-up
(dataset, tokens, lengths, reward outputs) and on every batch where only then the data is known (streaming prompts,
prompt lengths).
"""

from __future__ import annotations

import functools
import logging
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------------
# Prompts and datasets
def prompt_text(prompt, where: str) -> str:
    """The text of a standard (`str`) or conversational (list of `{"role", "content"}`) prompt."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and all(isinstance(m, dict) for m in prompt):
        return " ".join(str(m.get("content") or "") for m in prompt)
    raise TypeError(
        f"{where}: the prompt is a {type(prompt).__name__} ({str(prompt)[:40]!r}); a prompt must be a string or a list "
        'of chat messages ({"role": ..., "content": ...}). Convert the column, e.g. dataset.map(lambda r: '
        '{"prompt": str(r["prompt"])}).'
    )


def check_dataset(dataset, name: str = "training dataset") -> None:
    """Refuse a map-style dataset that is empty, has no `prompt` column, or a blank or non-text prompt (row named)."""
    if dataset is None:
        return
    if isinstance(dataset, dict):
        for split, data in dataset.items():
            check_dataset(data, f"{name} ({split})")
        return
    if not hasattr(dataset, "__len__"):
        return  # streaming: `BlankPromptFilter` skips and counts blank prompts as they arrive
    if len(dataset) == 0:
        raise ValueError(f"The {name} has 0 rows; check the split and any filtering before training.")
    columns = getattr(dataset, "column_names", None)
    if columns is not None and "prompt" not in columns:
        raise ValueError(f"The {name} needs a 'prompt' column; it has {columns}. Rename the column holding the prompts.")
    prompts = dataset["prompt"] if columns is not None else (row["prompt"] for row in dataset)
    for i, prompt in enumerate(prompts):
        if not prompt_text(prompt, f"Row {i} of the {name}").strip():
            raise ValueError(f"Row {i} of the {name} has an empty prompt; drop or fix it before training "
                             "(e.g. dataset.filter(...)).")


class BlankPromptFilter:
    """`IterableDataset.filter` predicate that drops blank prompts, counting and logging them."""

    def __init__(self):
        self.skipped = 0

    def __call__(self, row: dict) -> bool:
        if prompt_text(row.get("prompt"), "A streamed row").strip():
            return True
        self.skipped += 1
        logger.warning("Skipped a streamed row with a blank prompt (%d so far).", self.skipped)
        return False


# ------------------------------------------------------------------------------------------------------------------
# Tokens and lengths
def check_special_tokens(mask_token_id: int, pad_token_id: int | None, eos_token_ids: Sequence[int]) -> None:
    if pad_token_id is None:
        raise ValueError(
            "The tokenizer has neither a pad token nor an EOS token. Set one, e.g. "
            "tokenizer.add_special_tokens({'pad_token': '<pad>'}) (and resize the model's embeddings), or pass a "
            "tokenizer that has them as processing_class."
        )
    if mask_token_id == pad_token_id:
        raise ValueError(
            f"mask_token_id ({mask_token_id}) equals the pad token id: padding would read as masked positions. Set "
            "mask_token_id to the model's mask token, or give the tokenizer a distinct pad token."
        )
    if mask_token_id in set(eos_token_ids):
        raise ValueError(
            f"mask_token_id ({mask_token_id}) is an end-of-sequence token: completions would end at every masked "
            "position. Set mask_token_id to the model's mask token."
        )


def max_positions(model) -> int | None:
    """The longest sequence the model can position (None when it has no such limit, e.g. rotary without a cap)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_length(prompt_length: int, completion_length: int, limit: int | None, where: str) -> None:
    if limit is not None and prompt_length + completion_length > limit:
        raise ValueError(
            f"{where}: a prompt of {prompt_length} tokens plus max_completion_length={completion_length} exceeds the "
            f"model's {limit} positions. Lower max_completion_length, or shorten/filter the prompts to at most "
            f"{limit - completion_length} tokens."
        )


# ------------------------------------------------------------------------------------------------------------------
# Reward functions
def check_reward_output(name: str, output, expected: int) -> None:
    """Refuse a reward function's output that is not one real number (or None) per completion."""
    if isinstance(output, (torch.Tensor, np.ndarray)):
        if output.ndim != 1 or not (output.dtype.is_floating_point if isinstance(output, torch.Tensor)
                                    else np.issubdtype(output.dtype, np.number)):
            raise TypeError(f"Reward function '{name}' returned a {output.dtype} tensor of shape {tuple(output.shape)}; "
                            "return a list of floats (or None to skip), one per completion.")
        return
    if isinstance(output, (str, bytes, dict)) or not isinstance(output, Sequence):
        raise TypeError(
            f"Reward function '{name}' returned {type(output).__name__} {str(output)[:40]!r}; it must return a list "
            f"of {expected} floats (or None to skip a completion), one per completion."
        )
    for value in output:
        if value is not None and not isinstance(value, numbers.Real):
            raise TypeError(
                f"Reward function '{name}' returned a list containing {type(value).__name__} {str(value)[:40]!r}; "
                "each reward must be a float, or None to skip the completion."
            )


def checked_reward(func: Callable, name: str) -> Callable:
    """`func` with its output checked by `check_reward_output` (async stays async, so TRL still gathers it)."""
    from trl.trainer.utils import is_async_callable

    if is_async_callable(func):
        async def checked(*args, **kwargs):
            output = await func(*args, **kwargs)
            check_reward_output(name, output, len(kwargs.get("prompts", ())))
            return output
    else:
        def checked(*args, **kwargs):
            output = func(*args, **kwargs)
            check_reward_output(name, output, len(kwargs.get("prompts", ())))
            return output
    functools.update_wrapper(checked, func, assigned=("__module__", "__name__", "__qualname__", "__doc__"),
                             updated=())
    checked.__name__ = name
    return checked


def check_noise_settings(args, adapter, fill_token_id: int | None, eos_token_ids: Sequence[int]) -> dict | None:
    """Refuse knobs that the model's noise or sampler does not read, naming them; the likelihood's options for
    uniform noise.

    Uniform-noise models (DiffusionGemma) have no mask token and no unmasking order: no `one_step`, no mask schemes
    but plain corruption draws, and the attention mask must stop at the first EOS (`after_eos="hidden"`). Mask-noise
    models must leave the uniform-noise knobs at their defaults. Encoder-decoder models sample with their own
    `generate`: `generation_kwargs` are its knobs, and the mask-token samplers' knobs are refused; the other samplers
    take no `generation_kwargs`. All of it at start-up, not at the first rollout.
    """
    if adapter.attention == "encoder_decoder":  # sampled by the model's own generate (canvas_sampler)
        from .canvas_sampler import MASK_SAMPLER_KNOBS, check_mask_sampler_knobs, generation_kwargs

        check_mask_sampler_knobs(**{name: getattr(args, name) for name in MASK_SAMPLER_KNOBS})
        generation_kwargs(**(args.generation_kwargs or {}))  # refuses unknown and ignored keys by name
    elif args.generation_kwargs:
        raise ValueError(f"generation_kwargs {sorted(args.generation_kwargs)}: this model's diffusion sampler takes "
                         "none (they are DiffusionGemma's); use the named DiPODConfig knobs (diffusion_steps, "
                         "temperature, top_k, top_p, remasking, ...).")
    if adapter.noise == "mask":
        bad = [name for name, default in (("uniform_likelihood", "training"), ("self_conditioning", "none"))
               if getattr(args, name) != default]
        if bad:
            raise ValueError(f"{bad}: these knobs are for uniform-noise models (DiffusionGemma); this model "
                             "corrupts with a mask token. Leave them unset.")
        if args.generation_kwargs:
            raise ValueError(f"generation_kwargs {sorted(args.generation_kwargs)}: this model's diffusion sampler "
                             "takes no extra keys; use the named DiPODConfig knobs (temperature, top_k, top_p, "
                             "remasking, decoding_threshold, ...).")
        return None
    bad = [name for name, ok in (("likelihood_estimator", args.likelihood_estimator != "one_step"),
                                 ("elbo_masking", args.elbo_masking == "uniform"),
                                 ("after_eos", args.after_eos == "hidden"),
                                 ("entropy_coef", args.entropy_coef == 0.0),
                                 ("use_adaptive_entropy", not args.use_adaptive_entropy)) if not ok]
    if bad:
        raise ValueError(f"{bad}: a uniform-noise model (DiffusionGemma) has no mask token; use "
                         "likelihood_estimator 'elbo' or 'spg', elbo_masking 'uniform', after_eos 'hidden', and no "
                         "entropy bonus (its estimates score no masked positions' entropies).")
    return dict(estimator=args.uniform_likelihood, self_conditioning=args.self_conditioning,
                fill_token_id=fill_token_id, eos_token_ids=list(eos_token_ids))
