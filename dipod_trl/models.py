"""Model adapters: the few facts about a mask-predictor that sampling and likelihood estimation need.

A masked diffusion LM is any bidirectional model that maps token ids (some of them the mask token) to per-position
logits over the vocabulary: LLaDA and Dream (loaded natively, see `dipod_trl.families`), any Hugging Face masked LM
(ModernBERT, BERT) or a decoder run with bidirectional attention.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import logging

from .block_attention import positions_of as positions_from_mask
from .families import family_of, family_of_model, unwrap
from .router_aux import recording

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class DiffusionLM:
    """How to call a mask-predictor: its mask token, logit alignment, padding convention and fast paths.

    `attend_to_padding=True` passes no padding mask, so rows attend to pad tokens (LLaDA's own convention).
    Otherwise padded batches get the 2-D attention mask and, with `positions_from_mask`, position ids that count from
    each row's first real token (Dream's convention), which makes a left-padded row's logits equal its unpadded ones.
    `sparse_logits`: the forward takes a boolean `(B, L)` `logits_to_keep` and runs the lm-head on those positions
    only (transformers' decoder classes). `kv_cache`: the forward takes a KV cache under bidirectional attention
    (the native LLaDA/Dream classes), which the sampler's prefix cache uses. `block_size`: set for block-diffusion
    models (block-causal attention, `dipod_trl.block_attention`): the trained block size, which the sampler and the
    likelihood read; `None` for full attention. `attention` and `noise` are the family's facts
    (`"full"`/`"block_causal"`/`"encoder_decoder"`, `"mask"`/`"uniform"`): encoder-decoder, uniform-noise models
    (DiffusionGemma) sample with their own `generate` (`dipod_trl.canvas_sampler`) and score with
    `dipod_trl.uniform_likelihood`; their `block_size` is the canvas length and `mask_token_id` is unused.
    """

    mask_token_id: int
    shifted_logits: bool = False
    attend_to_padding: bool = False
    positions_from_mask: bool = False
    sparse_logits: bool = False
    kv_cache: bool = False
    block_size: int | None = None
    attention: str = "full"
    noise: str = "mask"

    def call_kwargs(self, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None = None
                    ) -> dict[str, torch.Tensor]:
        """`attention_mask` / `position_ids` for a forward over the whole `(B, L)` canvas, per the conventions.

        A 4-D mask (block-diffusion layouts) goes to the model as given, with the caller's `position_ids`.
        """
        if attention_mask is not None and attention_mask.dim() == 4:
            return {"attention_mask": attention_mask, "position_ids": position_ids}
        if self.attend_to_padding or attention_mask is None or bool(attention_mask.all()):
            return {}
        kwargs = {"attention_mask": attention_mask}
        if self.positions_from_mask:
            kwargs["position_ids"] = positions_from_mask(attention_mask)
        return kwargs

    def logits(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               position_ids: torch.Tensor | None = None, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-position logits `(B, L, V)` where row `i` predicts token `i` (shift undone for Dream-style models)."""
        with recording(model, _real_tokens(attention_mask, token_mask), input_ids):
            out = model(input_ids=input_ids, **self.call_kwargs(attention_mask, position_ids))
        logits = out.logits if hasattr(out, "logits") else out[0]
        if self.shifted_logits:  # logits[i] predicts token i+1: position i is predicted by logits[i-1]
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    def scored_logits(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, keep: torch.Tensor,
        position_ids: torch.Tensor | None = None, token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits `(N, V)` of the `N` positions where `keep (B, L)` is True, in row-major order.

        With `sparse_logits` the lm-head (and everything after it) runs on those positions only. `token_mask`: the
        real tokens of a 4-D-masked forward, for the MoE aux loss (`dipod_trl.router_aux`).
        """
        if not self.sparse_logits or (self.shifted_logits and bool(keep[:, 0].any())):
            return self.logits(model, input_ids, attention_mask, position_ids, token_mask)[keep]
        raw_keep = torch.cat([keep[:, 1:], keep[:, :1] & False], dim=1) if self.shifted_logits else keep
        with recording(model, _real_tokens(attention_mask, token_mask), input_ids):
            out = model(input_ids=input_ids, logits_to_keep=raw_keep, **self.call_kwargs(attention_mask, position_ids))
        return out.logits


def _real_tokens(attention_mask: torch.Tensor | None, token_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The real tokens of a forward, over which the MoE aux loss is taken: `token_mask` for 4-D-masked calls,
    else the 2-D padding mask (also when it is not passed to the model, LLaDA's convention), else every position."""
    if token_mask is not None:
        return token_mask
    return attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None


def resolve_mask_token_id(model: nn.Module, tokenizer=None, mask_token_id: int | None = None) -> int:
    """The mask token id: explicit value, else the tokenizer's, else the model config's; a clear error otherwise."""
    if mask_token_id is not None:
        return int(mask_token_id)
    if tokenizer is not None and getattr(tokenizer, "mask_token_id", None) is not None:
        return int(tokenizer.mask_token_id)
    config = getattr(unwrap(model), "config", None)
    for name in ("mask_token_id", "mask_id"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise ValueError(
        "Could not find a mask token: the tokenizer has no `mask_token` and the model config no `mask_token_id`. "
        "Pass `mask_token_id=` in DiPODConfig (LLaDA: 126336), or add one with "
        "`tokenizer.add_special_tokens({'mask_token': '<|mask|>'})` and resize the model's embeddings."
    )


def detect_shifted_logits(model: nn.Module) -> bool:
    """True for Dream-style models whose logits at position i predict token i + 1 (by model_type, any case)."""
    family = family_of_model(model)
    return bool(family and family.shifted_logits)


def accepts_attention_mask(model: nn.Module) -> bool:
    """Whether the model's forward takes an `attention_mask` argument (LLaDA's remote code, for one, ignores it)."""
    try:
        params = inspect.signature(unwrap(model).forward).parameters
    except (TypeError, ValueError):
        return True
    return "attention_mask" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@torch.no_grad()
def is_bidirectional(model: nn.Module, vocab_size: int | None = None, length: int = 6) -> bool:
    """Probe: does the prediction at position 0 depend on the last token? False means causal attention."""
    base = unwrap(model)
    vocab_size = vocab_size or base.get_input_embeddings().num_embeddings
    device = next(base.parameters()).device
    was_training = base.training
    base.eval()
    try:
        with gathered_parameters(base):
            return _depends_on_last_token(base, vocab_size, length, device)
    finally:
        base.train(was_training)


def _depends_on_last_token(base: nn.Module, vocab_size: int, length: int, device) -> bool:
    ids = torch.arange(length, device=device).unsqueeze(0) % vocab_size
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % vocab_size
    out_a = base(input_ids=ids)
    out_b = base(input_ids=other)
    logits_a = out_a.logits if hasattr(out_a, "logits") else out_a[0]
    logits_b = out_b.logits if hasattr(out_b, "logits") else out_b[0]
    return not torch.allclose(logits_a[0, 0].float(), logits_b[0, 0].float(), atol=0.0, rtol=0.0)


def gathered_parameters(model: nn.Module):
    """Context in which a DeepSpeed ZeRO-3 model's sharded parameters are whole (a no-op otherwise)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


def diffusion_adapter(
    model: nn.Module,
    tokenizer=None,
    mask_token_id: int | None = None,
    shifted_logits: bool | None = None,
    check_bidirectional: bool = True,
    attend_to_padding: bool | None = None,
) -> DiffusionLM:
    """Build the adapter for `model`, refusing models that cannot act as mask-predictors.

    `shifted_logits` and `attend_to_padding` default to the model family's conventions (`None`).
    """
    family = family_of_model(model)
    native = family is not None and isinstance(unwrap(model), family.model_class)
    if native and family.noise != "mask":  # no mask token, no mask-predictor probes: the family says what it is
        mask_id = mask_token_id if mask_token_id is not None else getattr(tokenizer, "mask_token_id", None)
        return DiffusionLM(-1 if mask_id is None else int(mask_id), attend_to_padding=False, positions_from_mask=True,
                           block_size=family.block_size_of(unwrap(model).config), attention=family.attention,
                           noise=family.noise)
    mask_id = resolve_mask_token_id(model, tokenizer, mask_token_id)
    vocab = unwrap(model).get_input_embeddings().num_embeddings
    if not 0 <= mask_id < vocab:
        raise ValueError(f"mask_token_id {mask_id} is outside the model's vocabulary of {vocab} embeddings.")
    block_size = family.block_size_of(unwrap(model).config) if native else None
    if check_bidirectional and not is_bidirectional(model, vocab, length=block_size or 6):
        raise ValueError(
            "This model attends causally: its prediction at position 0 does not change when a later token changes. "
            "Masked diffusion needs bidirectional attention. Use a mask-predictor (LLaDA, Dream, a masked LM such as "
            "ModernBERT), or load a decoder with bidirectional attention (e.g. Gemma3 with "
            "`use_bidirectional_attention=True`). Set check_bidirectional=False only if you know better."
        )
    shifted = detect_shifted_logits(model) if shifted_logits is None else bool(shifted_logits)
    if attend_to_padding is None:
        attend_to_padding = family.attend_to_padding if family else not accepts_attention_mask(model)
    return DiffusionLM(mask_id, shifted, bool(attend_to_padding), positions_from_mask=family is not None,
                       sparse_logits=supports_sparse_logits(model, vocab), kv_cache=native and block_size is None,
                       block_size=block_size, attention=family.attention if native else "full")


@torch.no_grad()
def supports_sparse_logits(model: nn.Module, vocab_size: int) -> bool:
    """Probe: does the forward take a boolean `(B, L)` `logits_to_keep` and return just those rows, exactly?"""
    base = unwrap(model)
    try:
        if "logits_to_keep" not in inspect.signature(base.forward).parameters:
            return False
    except (TypeError, ValueError):
        return False
    device = next(base.parameters()).device
    ids = torch.arange(6, device=device).unsqueeze(0) % vocab_size
    keep = torch.tensor([[False, True, False, True, False, False]], device=device)
    was_training = base.training
    base.eval()
    try:
        with gathered_parameters(base):
            full = base(input_ids=ids).logits
            sparse = base(input_ids=ids, logits_to_keep=keep).logits
    except Exception:  # an older signature: no boolean masks
        return False
    finally:
        base.train(was_training)
    return sparse.shape == (2, full.size(-1)) and torch.allclose(sparse, full[keep], atol=1e-5)


def check_model_path(name_or_path: str) -> None:
    """Refuse a path that cannot be a Hub id (`./x`, `/x`, `~/x`, `a/b/c`) and does not exist, naming it."""
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1  # Hub ids: org/name
    if looks_local and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise FileNotFoundError(f"Model directory {name_or_path!r} does not exist; check the path.")


def model_config_dict(name_or_path: str, revision: str | None = None) -> dict:
    """The model's `config.json`, with an error that says whether the local path or the Hub id is the problem."""
    from transformers import PretrainedConfig

    check_model_path(name_or_path)
    try:
        return PretrainedConfig.get_config_dict(name_or_path, revision=revision)[0]
    except OSError as err:
        where = ("the directory has no config.json" if os.path.isdir(name_or_path) else
                 "it is neither a local directory nor a Hub model id that can be reached")
        raise OSError(f"Cannot load model {name_or_path!r}: {where} ({' '.join(str(err).split())[:200]}).") from err


def load_diffusion_model(
    name_or_path: str, trust_remote_code: bool = False, native_model_families: bool = True, **kwargs
) -> nn.Module:
    """Load a mask-predictor: LLaDA/Dream natively, a masked LM, a bidirectional decoder, or (opt-in) remote code.

    LLaDA and Dream checkpoints load into transformers' own classes (`dipod_trl.families`) whatever
    `trust_remote_code` says. Their Hub code runs only with `native_model_families=False` and
    `trust_remote_code=True`; pin it with `revision=`. `kwargs` go to `from_pretrained`.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    config_dict = model_config_dict(name_or_path, kwargs.get("revision"))
    family = family_of(config_dict)
    if family is not None and native_model_families:
        return family.model_class.from_pretrained(name_or_path, **kwargs)
    auto_map = config_dict.get("auto_map") or {}
    if auto_map and not trust_remote_code:
        raise ValueError(
            f"{name_or_path} ships its own modelling code ({', '.join(auto_map)}). Pass trust_remote_code=True "
            "(--trust_remote_code in the scripts) if you trust it, and pin it with a revision."
        )
    if auto_map and kwargs.get("revision") in (None, "main"):
        logger.warning("Running the Hub modelling code of %s unpinned: pass revision=<commit> (--model_revision) so "
                       "a later push cannot change what runs.", name_or_path)
    errors = []
    for auto in (AutoModelForMaskedLM, AutoModelForCausalLM, AutoModel):
        if auto_map and auto.__name__ not in auto_map:
            continue
        try:
            if auto_map:  # the Hub class itself: the Auto classes would resolve a registered family natively
                from transformers.dynamic_module_utils import get_class_from_dynamic_module

                remote = get_class_from_dynamic_module(auto_map[auto.__name__], name_or_path,
                                                       revision=kwargs.get("revision"))
                return remote.from_pretrained(name_or_path, trust_remote_code=True, **kwargs)
            return auto.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
        except (ValueError, KeyError) as err:  # this auto class does not know the architecture
            errors.append(f"{auto.__name__}: {err}")
        except Exception as err:  # remote code that no longer runs under this transformers
            if not auto_map:
                raise
            errors.append(f"{auto.__name__}: {type(err).__name__}: {err}")
    hint = ""
    if family is not None:
        hint = f"\n{family.name} loads natively without its Hub code: leave native_model_families=True (the default)."
    raise ValueError(f"Could not load {name_or_path} as a mask-predictor:\n" + "\n".join(errors) + hint)


def training_load_kwargs(model_init_kwargs: dict | None, trainer_kwargs: dict) -> dict:
    """`from_pretrained` kwargs of a model the trainer loads by name: `model_init_kwargs` (dtype names allowed) and
    the trainer's `quantization_config` (consumed: TRL would warn that it is ignored for a model instance)."""
    load_kwargs = dict(model_init_kwargs or {})
    if isinstance(load_kwargs.get("dtype"), str) and load_kwargs["dtype"] != "auto":
        load_kwargs["dtype"] = getattr(torch, load_kwargs["dtype"])
    if trainer_kwargs.get("quantization_config") is not None:
        load_kwargs["quantization_config"] = trainer_kwargs.pop("quantization_config")
    return load_kwargs


def prepare_for_training(model: nn.Module, trainer_kwargs: dict):
    """Set a model up for TRL's `GRPOTrainer`; returns its native family (None for other models).

    Models without a generation config get one (GRPOTrainer writes to it). For a native family: the tokenizer as
    the default `processing_class` (text RL; `AutoProcessor` may need vision packages), the family's frozen
    parameters in a full fine-tune, and its LoRA names and preset in `peft_config`.
    """
    from transformers import AutoTokenizer, GenerationConfig, PretrainedConfig

    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig(eos_token_id=model.config.eos_token_id,
                                                   pad_token_id=model.config.pad_token_id)
    family = family_of_model(model) if isinstance(getattr(model, "config", None), PretrainedConfig) else None
    if family is None or not isinstance(model, family.model_class):
        return None
    if trainer_kwargs.get("processing_class") is None:
        trainer_kwargs["processing_class"] = AutoTokenizer.from_pretrained(model.config._name_or_path)
    peft_config = trainer_kwargs.get("peft_config")
    if peft_config is None:  # full fine-tune: what the family's reference recipe keeps frozen
        family.freeze_parameters(model)
        return family
    peft_config.target_modules = family.native_lora_targets(peft_config.target_modules)
    if peft_config.task_type == "CAUSAL_LM" and not hasattr(model, "prepare_inputs_for_generation"):
        # TRL's ModelConfig asks for PEFT's causal-LM wrapper, which hooks the autoregressive `generate`; a model
        # with its own generate (DiffusionGemma) has no such hook and gets the plain PeftModel.
        peft_config.task_type = None
    return family
