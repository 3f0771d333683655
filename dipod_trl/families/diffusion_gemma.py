"""DiffusionGemma (google/diffusiongemma-26B-A4B-it): transformers' own `DiffusionGemmaForBlockDiffusion`, unchanged.

An encoder-decoder block-diffusion LM with uniform-state noise: a causal encoder reads the prompt and the clean
canvases before the current one into a KV cache; a bidirectional decoder denoises one canvas of `canvas_length`
tokens (the config's field, 256 in the release) that cross-attends to that cache. There is no mask token: training
replaces tokens by uniform draws over the whole vocabulary. The checkpoint is native to transformers (no remote
code, no renaming); the config is transformers' `DiffusionGemmaConfig`, which `AutoModelForCausalLM` refuses, so
the family registers no Auto classes (`register_auto=False`).

Sampling: `dipod_trl.canvas_sampler` (the model's own `generate`); likelihoods: `dipod_trl.uniform_likelihood`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

from .base import ModelFamily

# TRL's `examples/scripts/sft_diffusion_gemma.py` (the reference LoRA fine-tune of the release): the attention and
# dense-MLP linears of the encoder's and decoder's text layers. The MoE experts (fused 3-D parameters), the router
# (`router.proj`), the decoder's self-conditioning block (`self_conditioning.{gate,up,down}_proj`) and the vision
# tower (`Gemma4ClippableLinear` wrappers named `self_attn.q_proj`, `mlp.gate_proj`, ...) stay frozen.
TEXT_LAYERS = r"model\.(encoder\.language_model|decoder)\.layers\.\d+"
LORA_TARGET_REGEX = TEXT_LAYERS + r"\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
_SUBMODULE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
              "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


@dataclass(frozen=True, repr=False)
class DiffusionGemmaFamily(ModelFamily):
    """`ModelFamily` whose block size is the config's `canvas_length` and whose LoRA names stay in the text layers."""

    def block_size_of(self, config) -> int | None:
        """The canvas length (`config.canvas_length`, else the family's default)."""
        return int(getattr(config, "canvas_length", None) or self.default_block_size)

    def native_lora_targets(self, target_modules):
        """A full-match regex for PEFT. Module names (`q_proj`, `up_proj`, ...) are scoped to the encoder's and
        decoder's text layers, so that they never reach the vision tower or the self-conditioning block (which reuse
        those names); `None` gives the preset (= TRL's recipe, `LORA_TARGET_REGEX`); a string goes to PEFT as is."""
        if target_modules is None:
            target_modules = self.lora_target_modules
        if isinstance(target_modules, str):
            return target_modules
        names = [self.lora_aliases.get(name, name) for name in target_modules]
        paths = sorted({re.escape(f"{_SUBMODULE[n]}.{n}" if n in _SUBMODULE else n) for n in names})
        return TEXT_LAYERS + r"\.(" + "|".join(paths) + ")"


DIFFUSION_GEMMA = DiffusionGemmaFamily(
    name="diffusion_gemma",
    model_types=("diffusion_gemma",),
    original_architectures=("DiffusionGemmaForBlockDiffusion",),
    config_class=DiffusionGemmaConfig,
    model_class=DiffusionGemmaForBlockDiffusion,
    hub_ids=("google/diffusiongemma-26B-A4B-it",),
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    attention="encoder_decoder",
    default_block_size=DiffusionGemmaConfig.canvas_length,  # 256, the config's default
    noise="uniform",
    register_auto=False,
    # TRL's recipe: "Drop `--use_peft` for full fine-tuning, which keeps the MoE router frozen like the reference
    # recipe" (`router.proj`, `router.scale`, `router.per_expert_scale` of every encoder/decoder text layer).
    frozen_parameters=(r"\.router\.",),
)
