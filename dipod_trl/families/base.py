"""What a native model family is: a transformers config + class pair, plus the facts dipod_trl needs about it.

A family maps a diffusion LM published with its own Hub modelling code (LLaDA, Dream) onto one of transformers'
classes with bidirectional attention. Weights are renamed by transformers' conversion mapping while loading and
renamed back by `save_pretrained`; the config classes read the Hub `config.json` field names and write them back.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..block_attention import ATTENTION_PATTERNS, additive, block_causal_mask, positions_of


@dataclass(frozen=True)
class ModelFamily:
    """A diffusion-LM family loaded natively. Instances live in one module per family (`llada.py`, `dream.py`)."""

    name: str
    model_types: tuple[str, ...]  # config `model_type` values, compared case-insensitively
    original_architectures: tuple[str, ...]  # `architectures` of the Hub checkpoints (fallback detection)
    config_class: type
    model_class: type
    hub_ids: tuple[str, ...]
    # (original module path, native module path) pairs, `{i}` standing for a block index; both directions of the
    # weight renaming (loading and saving) are derived from these.
    renames: tuple[tuple[str, str], ...] = ()
    # Weight transforms beyond `renames` (fusing per-expert weights, splitting fused projections): a function returning
    # transformers `WeightConverter`/`WeightRenaming`s, registered with `renames` for the family's model_type, so
    # `from_pretrained` applies them and `save_pretrained` writes the original layout back.
    conversions: Callable[[], list] | None = None
    # Original module names that users may put in LoRA `target_modules`, and their native names.
    lora_aliases: dict[str, str] = field(default_factory=dict)
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    shifted_logits: bool = False  # logits at i predict token i + 1
    attend_to_padding: bool = False  # default padding convention: True lets rows attend to pad tokens (LLaDA's code)
    # What the sampler and the likelihood read: "full" attention (LLaDA, Dream) or "block_causal" (SDAR, LLaDA2:
    # bidirectional inside blocks of the trained block size, causal across them, with an exact KV cache).
    attention: str = "full"
    default_block_size: int | None = None  # trained block size, where the config does not say (`block_size`)
    noise: str = "mask"  # corruption: "mask" (absorbing mask token)
    register_auto: bool = True  # register config/model with AutoConfig, AutoModel, AutoModelForCausalLM on import
    # Parameters a full fine-tune keeps frozen, as the family's reference recipe does: regexes searched in the
    # parameter names (DiffusionGemma: the MoE router). LoRA freezes every base weight anyway.
    frozen_parameters: tuple[str, ...] = ()

    def __post_init__(self):
        if self.attention not in ATTENTION_PATTERNS:
            raise ValueError(f"attention must be one of {ATTENTION_PATTERNS}, got {self.attention!r}.")
        if self.attention == "block_causal" and not self.default_block_size:
            raise ValueError(f"Block-causal family {self.name!r} needs a default_block_size.")

    def block_size_of(self, config) -> int | None:
        """The trained block size of a block-causal model (the config's `block_size`, else the family's); None for
        full attention."""
        if self.attention != "block_causal":
            return None
        return int(getattr(config, "block_size", None) or self.default_block_size)

    def freeze_parameters(self, model: nn.Module) -> list[str]:
        """Set `requires_grad=False` on the family's `frozen_parameters` of `model`; returns their names."""
        names = [name for name, _ in model.named_parameters()
                 if any(re.search(pattern, name) for pattern in self.frozen_parameters)]
        for name in names:
            model.get_parameter(name).requires_grad_(False)
        return names

    def matches(self, config_dict: dict) -> bool:
        model_type = str(config_dict.get("model_type") or "").lower()
        architectures = config_dict.get("architectures") or ()
        return model_type in self.model_types or any(a in self.original_architectures for a in architectures)

    def key_mapping(self, reverse: bool = False) -> dict[str, str]:
        """`{regex: replacement}` renaming parameter names original -> native (or back), for `from_pretrained`."""
        pairs = [(n, o) if reverse else (o, n) for o, n in self.renames]
        return {_path_regex(src): dst.replace("{i}", r"\1") + "." for src, dst in pairs}

    def to_native_keys(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename parameters from the original checkpoint's names to the native class's names."""
        return _rename_keys(state_dict, self.key_mapping())

    def to_original_keys(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename parameters (or LoRA adapter weights) from native names back to the original checkpoint's names."""
        return _rename_keys(state_dict, self.key_mapping(reverse=True))

    def native_lora_targets(self, target_modules):
        """LoRA targets with original module names (e.g. LLaDA's `attn_out`) translated; `None` gives the preset."""
        if target_modules is None:
            return list(self.lora_target_modules)
        if isinstance(target_modules, str):  # a regex or "all-linear": PEFT's own semantics
            return target_modules
        return [self.lora_aliases.get(name, name) for name in target_modules]

    def original_lora_targets(self, target_modules):
        """PEFT `target_modules` for the original modelling code: a full-match regex over original module paths."""
        if isinstance(target_modules, str) or not self.renames:
            return target_modules
        targets = set(target_modules)
        paths = sorted(_path_regex(o)[:-2] for o, n in self.renames if "{i}" in n and n.rsplit(".", 1)[-1] in targets)
        return "|".join(f"(.*\\.)?{p}" for p in paths)

    def __repr__(self) -> str:
        return f"ModelFamily({self.name!r})"


def _path_regex(path: str) -> str:
    """Regex for a module path followed by a dot; `{i}` matches a block index (one group)."""
    return re.escape(path).replace(re.escape("{i}"), r"(\d+)") + r"\."


def _rename_keys(state_dict: dict, mapping: dict[str, str]) -> dict:
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in mapping.items():
            key, n = re.subn(pattern, replacement, key, count=1)
            if n:
                break
        out[key] = value
    return out


class OriginalFormatConfigMixin:
    """Config mixin: read the Hub field names (`attribute_map`) and write them back (`to_dict`)."""

    original_architecture: str = ""
    #: original fields written as copies of other original fields (LLaDA's `vocab_size` = `embedding_size`)
    copied_original_fields: dict[str, str] = {}
    #: native-only fields that the original `config.json` does not have
    native_only_fields: tuple[str, ...] = ("is_causal",)
    #: the family's mask token, for configs that omit `mask_token_id`
    default_mask_token_id: int | None = None

    def __post_init__(self, **kwargs):
        # The dataclass __init__ leaves the Hub's field names in kwargs: move them onto the native fields before the
        # native config derives anything from them (head_dim from hidden_size, ...).
        for original, native in self.attribute_map.items():
            if original in kwargs:
                setattr(self, native, kwargs.pop(original))
        kwargs.setdefault("auto_map", {})  # TRL and transformers read it; a model built from scratch has no Hub code
        kwargs.setdefault("mask_token_id", self.default_mask_token_id)
        self.is_causal = False  # masked diffusion: full attention
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict:
        out = super().to_dict()
        for original, native in self.attribute_map.items():
            if native in out:
                out[original] = out.pop(native)
        for copy, source in self.copied_original_fields.items():
            out[copy] = out[source]
        rope = out.get("rope_parameters") or {}
        if "rope_theta" in rope:
            out["rope_theta"] = rope["rope_theta"]
        for key in self.native_only_fields:
            out.pop(key, None)
        out["architectures"] = [self.original_architecture]
        if not out.get("auto_map"):
            out.pop("auto_map", None)
        return out


class BlockDiffusionConfigMixin(OriginalFormatConfigMixin):
    """Config mixin of block-diffusion families: `block_size` (written back where the Hub config has one, or when
    changed), the Hub's flat RoPE fields, and unset token ids left out as the Hub configs do."""

    default_block_size: int = 0
    hub_has_block_size: bool = False
    native_only_fields = ("is_causal", "layer_types", "rope_parameters")

    def __post_init__(self, **kwargs):
        kwargs.setdefault("block_size", self.default_block_size)
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update(hub_rope_fields(self.rope_parameters))
        if not self.hub_has_block_size and out.get("block_size") == self.default_block_size:
            out.pop("block_size")
        for key in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
            if key in out and out[key] is None:  # unset: the Hub config leaves it out (mask: the tokenizer's)
                out.pop(key)
        return out


def require_values(kwargs: dict, required: dict, family: str, native: str, fill: bool = False) -> None:
    """Refuse config values the native computation does not reproduce (`required`: field -> the value it needs),
    naming the field and the way out; `fill` writes the needed value for fields the config leaves out."""
    for name, needed in required.items():
        value = kwargs.setdefault(name, needed) if fill else kwargs.get(name, needed)
        if value != needed:
            raise ValueError(
                f"This {family} config sets {name}={value!r}; the native ({native}) path reproduces {family} only "
                f"with {name}={needed!r}. Load it with its own code instead: trust_remote_code=True and "
                "native_model_families=False (needs a transformers version that code supports)."
            )


def hub_rope_fields(rope_parameters: dict | None) -> dict:
    """transformers' `rope_parameters` as the Hub's flat fields: `rope_theta`, `rope_scaling` (None for plain RoPE)
    and, where set, `partial_rotary_factor`."""
    rope = dict(rope_parameters or {})
    out = {"rope_theta": rope.pop("rope_theta", None)}
    if "partial_rotary_factor" in rope:
        out["partial_rotary_factor"] = rope.pop("partial_rotary_factor")
    out["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    return out


class BidirectionalMixin:
    """Model mixin: full attention everywhere, and `save_pretrained` that keeps the Hub's modelling-code pointers."""

    def __init__(self, config):
        super().__init__(config)
        self.config.is_causal = False
        for module in self.modules():  # attention modules hard-code is_causal=True, read by SDPA/flash attention
            if hasattr(module, "is_causal"):
                module.is_causal = False

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            link_remote_code(self.config, save_directory)


class BlockCausalMixin(BidirectionalMixin):
    """Model mixin for block-diffusion LMs: block-causal attention unless the caller passes its own 4-D mask.

    Given no mask or a 2-D padding mask, the forward builds the block-causal mask of `config.block_size` from the
    position ids (default: counted from each row's first real token, the models' own convention), so a plain
    `model(input_ids, attention_mask)` computes what the original code computes with its block mask. A 4-D mask
    (boolean or additive) is used as given: the sampler's cached calls and the likelihood's one-forward layout.
    """

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        """The base forward with block-causal attention."""
        if attention_mask is None or attention_mask.dim() == 2:
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError("With a filled KV cache, pass the 4-D block mask of the new tokens explicitly.")
            ref = input_ids if input_ids is not None else inputs_embeds[..., 0]
            valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(ref, dtype=torch.bool)
            if position_ids is None:
                position_ids = positions_of(valid)
            attention_mask = block_causal_mask(position_ids, valid, self.config.block_size)
        if attention_mask.dtype == torch.bool:
            attention_mask = additive(attention_mask, self.dtype)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               logits_to_keep=logits_to_keep, **kwargs)


def link_remote_code(config, save_directory: str) -> None:
    """Make the saved `auto_map` loadable by the original modelling code (`trust_remote_code=True`).

    The code files are copied when the source checkpoint is a local folder holding them; otherwise `auto_map` points
    at the source Hub repo (`repo--module.Class`), as transformers does for remote code.
    """
    auto_map = getattr(config, "auto_map", None) or {}
    source = getattr(config, "_name_or_path", "") or ""
    if not auto_map:
        return
    modules = {ref.split("--")[-1].rsplit(".", 1)[0] for ref in auto_map.values()}
    if os.path.isdir(source):
        for name in os.listdir(source):
            if name.endswith(".py") and not os.path.exists(os.path.join(save_directory, name)):
                shutil.copy(os.path.join(source, name), save_directory)
        return
    if not all(os.path.exists(os.path.join(save_directory, f"{m}.py")) for m in modules) and "/" in source:
        import json

        path = os.path.join(save_directory, "config.json")
        with open(path) as f:
            saved = json.load(f)
        saved["auto_map"] = {k: v if "--" in v else f"{source}--{v}" for k, v in auto_map.items()}
        with open(path, "w") as f:
            json.dump(saved, f, indent=2, sort_keys=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The innermost Hugging Face model under PEFT / DDP / DeepSpeed wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model
