"""SDAR / TraDo (JetLM/SDAR-*-Chat, Gen-Verse/TraDo-*): transformers' Qwen3 with block-causal attention.

SDAR's Hub code is Qwen3's computation (qk-norm before full-head rotate-half RoPE, SwiGLU, untied head) under Qwen3's
parameter names, with the attention left to the caller's mask; its own generation and training build the
block-diffusion masks of `block_size` (4). No renaming is needed: the config reads SDAR's fields and writes them back.
"""

from __future__ import annotations

from transformers import Qwen3Config, Qwen3ForCausalLM

from .base import BlockCausalMixin, BlockDiffusionConfigMixin, ModelFamily


class SDARConfig(BlockDiffusionConfigMixin, Qwen3Config):
    """`Qwen3Config` that reads and writes SDAR's `config.json` (model_type `"sdar"`, with `block_size`)."""

    model_type = "sdar"
    original_architecture = "SDARForCausalLM"
    default_block_size = 4
    hub_has_block_size = True

    def __post_init__(self, **kwargs):
        # The Hub config names flex_attention, which SDAR's own code ignores outside training; keep it for saving
        # and let transformers pick the attention (SDPA by default, or `attn_implementation=` at load time).
        self.hub_attn_implementation = kwargs.pop("attn_implementation", None)
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict:
        out = super().to_dict()
        hub = out.pop("hub_attn_implementation", None)
        if hub is not None:
            out["attn_implementation"] = hub
        return out


class SDARForDiffusionLM(BlockCausalMixin, Qwen3ForCausalLM):
    """SDAR as `Qwen3ForCausalLM` with block-causal attention."""

    config_class = SDARConfig


SDAR = ModelFamily(
    name="sdar",
    model_types=("sdar",),
    original_architectures=("SDARForCausalLM",),
    config_class=SDARConfig,
    model_class=SDARForDiffusionLM,
    hub_ids=("JetLM/SDAR-1.7B-Chat", "JetLM/SDAR-4B-Chat", "JetLM/SDAR-8B-Chat", "Gen-Verse/TraDo-4B-Instruct",
             "Gen-Verse/TraDo-8B-Instruct", "Gen-Verse/TraDo-8B-Thinking"),
    attention="block_causal",
    default_block_size=SDARConfig.default_block_size,
)
