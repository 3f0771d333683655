"""Diffusion-LM families loaded natively into transformers' own classes (no remote code): one module per family.

Importing this package registers each family with transformers' Auto classes and conversion mappings, so that
`AutoModelForCausalLM.from_pretrained("GSAI-ML/LLaDA-8B-Instruct")` builds the native class without remote code,
and its LoRA preset with PEFT's default targets, so that `get_peft_model(model, LoraConfig())` finds its modules.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .base import ModelFamily, unwrap
from .diffusion_gemma import DIFFUSION_GEMMA
from .dream import DREAM, DreamConfig, DreamForDiffusionLM
from .llada import LLADA, LLaDAConfig, LLaDAForDiffusionLM
from .llada2 import LLADA2, LLaDA2Config, LLaDA2ForDiffusionLM
from .sdar import SDAR, SDARConfig, SDARForDiffusionLM
from .sdar_moe import SDAR_MOE, SDARMoeConfig, SDARMoeForDiffusionLM

FAMILIES: tuple[ModelFamily, ...] = (LLADA, DREAM, SDAR, SDAR_MOE, LLADA2, DIFFUSION_GEMMA)


def family_of(config) -> ModelFamily | None:
    """The native family of a config (object or dict), by `model_type` (any case) or original architecture."""
    if config is None:
        return None
    as_dict = config if isinstance(config, dict) else {
        "model_type": getattr(config, "model_type", None), "architectures": getattr(config, "architectures", None)}
    return next((family for family in FAMILIES if family.matches(as_dict)), None)


def family_of_model(model) -> ModelFamily | None:
    return family_of(getattr(unwrap(model), "config", None))


def _register() -> None:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA_TARGETS
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    for family in FAMILIES:
        model_type = family.config_class.model_type
        preset = family.native_lora_targets(None)
        if not isinstance(preset, str):  # PEFT's default targets, so `get_peft_model(model, LoraConfig())` works
            LORA_TARGETS.setdefault(model_type, list(preset))
        if family.register_auto:  # not for transformers' own classes (DiffusionGemma), known to its Auto classes
            AutoConfig.register(model_type, family.config_class, exist_ok=True)
            AutoModelForCausalLM.register(family.config_class, family.model_class, exist_ok=True)
            AutoModel.register(family.config_class, family.model_class, exist_ok=True)
        transforms = [WeightRenaming(source_patterns=s, target_patterns=t) for s, t in family.key_mapping().items()]
        transforms += family.conversions() if family.conversions else []
        if transforms:
            register_checkpoint_conversion_mapping(model_type, transforms, overwrite=True)


_register()

__all__ = ["DREAM", "FAMILIES", "LLADA", "LLADA2", "SDAR", "SDAR_MOE", "DreamConfig", "DreamForDiffusionLM",
           "LLaDA2Config", "LLaDA2ForDiffusionLM", "LLaDAConfig", "LLaDAForDiffusionLM", "ModelFamily", "SDARConfig",
           "SDARForDiffusionLM", "SDARMoeConfig", "SDARMoeForDiffusionLM", "family_of", "family_of_model", "unwrap"]
__all__ += ["DIFFUSION_GEMMA"]
