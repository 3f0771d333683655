"""LoRA adapters of native families in the original checkpoint's format, and back.

PEFT saves adapter weights under the native module names (`model.layers.0.self_attn.o_proj`). Tools built on the
original LLaDA code expect `model.transformer.blocks.0.attn_out`; these helpers rewrite a saved adapter folder into
that format and read such a folder back into native names (for resuming and evaluation).
"""

from __future__ import annotations

import json
import os

from safetensors.torch import load_file, save_file

from .base import ModelFamily

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def adapter_to_original_format(family: ModelFamily, directory: str) -> None:
    """Rewrite the adapter PEFT saved in `directory`: original parameter names and a matching `target_modules`."""
    weights, config_path = os.path.join(directory, ADAPTER_WEIGHTS), os.path.join(directory, ADAPTER_CONFIG)
    if not family.renames or not os.path.exists(weights):
        return
    state = load_file(weights)
    save_file(family.to_original_keys(state), weights, metadata={"format": "pt"})
    with open(config_path) as f:
        config = json.load(f)
    config["target_modules"] = family.original_lora_targets(config["target_modules"])
    config.pop("auto_mapping", None)  # names dipod_trl's class; the original code's users load with their own
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def read_adapter_weights(family: ModelFamily, directory: str) -> dict:
    """An adapter's weights under native names, whichever of the two formats `directory` holds."""
    return family.to_native_keys(load_file(os.path.join(directory, ADAPTER_WEIGHTS)))


def load_adapter(model, directory: str, is_trainable: bool = False):
    """`PeftModel.from_pretrained` for a native-family model, accepting adapters saved in the original format."""
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict

    from . import family_of_model

    family = family_of_model(model)
    if family is None or not family.renames:
        return PeftModel.from_pretrained(model, directory, is_trainable=is_trainable)
    config = LoraConfig.from_pretrained(directory)
    config.target_modules = family.native_lora_targets(native_targets_of(family, config.target_modules))
    config.inference_mode = not is_trainable
    peft_model = get_peft_model(model, config)
    result = set_peft_model_state_dict(peft_model, read_adapter_weights(family, directory))
    if result.unexpected_keys:
        raise ValueError(f"Adapter {directory} does not fit this model: unexpected keys {result.unexpected_keys[:4]}")
    return peft_model


def merged_for_inference(peft_model):
    """`peft_model.merge_and_unload()` where merging keeps the model's function; else `peft_model` itself, unmerged.

    Merging writes each adapter's delta into its layer's base weight. Where two adapted layers share one base weight
    (DiffusionGemma: the encoder's text layers are tied to the decoder's, and each side gets its own adapter, as in
    TRL's recipe), both deltas would land in the shared tensor and each side would compute with the other's too.
    """
    from peft.tuners.lora import LoraLayer

    weights = [m.get_base_layer().weight for m in peft_model.modules() if isinstance(m, LoraLayer)]
    if len({id(w) for w in weights}) < len(weights):
        return peft_model
    return peft_model.merge_and_unload()


def native_targets_of(family: ModelFamily, target_modules):
    """Module-name suffixes for the native model from a saved `target_modules` (an original-format regex or a list)."""
    if not isinstance(target_modules, str) or target_modules == "all-linear":
        return target_modules
    natives = {n.rsplit(".", 1)[-1] for o, n in family.renames if "{i}" in n and o.rsplit(".", 1)[-1] in target_modules}
    return sorted(natives) if "transformer" in target_modules else target_modules
