"""SDAR-MoE (JetLM/SDAR-30B-A3B-Chat): transformers' Qwen3-MoE with block-causal attention.

SDAR-MoE's Hub code is Qwen3-MoE's computation (SDAR's attention; every layer a softmax top-k router over experts,
renormalised, no shared expert) under Qwen3-MoE's per-expert parameter names. transformers 5 stores the experts
fused (`mlp.experts.gate_up_proj`, `down_proj`); Qwen3-MoE's own conversions fuse them on load and split them back
on save. The Hub config has no `block_size`: the model card and `generate.py` use blocks of 4.
"""

from __future__ import annotations

from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from .base import BlockCausalMixin, BlockDiffusionConfigMixin, ModelFamily


class SDARMoeConfig(BlockDiffusionConfigMixin, Qwen3MoeConfig):
    """`Qwen3MoeConfig` that reads and writes SDAR-MoE's `config.json` (model_type `"sdar_moe"`)."""

    model_type = "sdar_moe"
    original_architecture = "SDARMoeForCausalLM"
    default_block_size = 4  # the model card's and generate.py's; the Hub config has none


class SDARMoeForDiffusionLM(BlockCausalMixin, Qwen3MoeForCausalLM):
    """SDAR-MoE as `Qwen3MoeForCausalLM` with block-causal attention."""

    config_class = SDARMoeConfig


def _conversions() -> list:
    """Qwen3-MoE's: per-expert `mlp.experts.{e}.*_proj` <-> fused `mlp.experts.gate_up_proj` / `down_proj`."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    return get_checkpoint_conversion_mapping("qwen3_moe")


SDAR_MOE = ModelFamily(
    name="sdar_moe",
    model_types=("sdar_moe",),
    original_architectures=("SDARMoeForCausalLM",),
    config_class=SDARMoeConfig,
    model_class=SDARMoeForDiffusionLM,
    hub_ids=("JetLM/SDAR-30B-A3B-Chat",),
    conversions=_conversions,
    # Attention and dense MLPs (`mlp_only_layers`, none in the release): the routed experts are fused 3-D parameters,
    # not Linears, and the router is not a `*_proj`, so both stay frozen.
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    attention="block_causal",
    default_block_size=SDARMoeConfig.default_block_size,
)
