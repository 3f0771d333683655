"""Dream (Dream-org/Dream-v0-*-7B, Dream-Coder, apple/DiffuCoder-7B-*): Qwen2 with bidirectional attention.

Dream's Hub code is Qwen2 with full attention; its parameter names are Qwen2's, so no renaming is needed. Its logits
keep the autoregressive shift (position i predicts token i + 1), and its own generation code masks padding with a
4-D mask and counts positions from the first real token, which the adapter reproduces.
"""

from __future__ import annotations

from transformers import Qwen2Config, Qwen2ForCausalLM

from .base import BidirectionalMixin, ModelFamily, OriginalFormatConfigMixin


class DreamConfig(OriginalFormatConfigMixin, Qwen2Config):
    """`Qwen2Config` under Dream's model_type (`"Dream"`), written back in Dream's format."""

    model_type = "Dream"
    original_architecture = "DreamModel"
    native_only_fields = ("is_causal", "layer_types")
    default_mask_token_id = 151666  # <|mask|> of the Qwen2.5-based Dream vocabulary


class DreamForDiffusionLM(BidirectionalMixin, Qwen2ForCausalLM):
    """Dream as `Qwen2ForCausalLM` with full attention."""

    config_class = DreamConfig


DREAM = ModelFamily(
    name="dream",
    model_types=("dream",),
    original_architectures=("DreamModel",),
    config_class=DreamConfig,
    model_class=DreamForDiffusionLM,
    hub_ids=("Dream-org/Dream-v0-Base-7B", "Dream-org/Dream-v0-Instruct-7B", "Dream-org/Dream-Coder-v0-Instruct-7B",
             "apple/DiffuCoder-7B-Base", "apple/DiffuCoder-7B-Instruct", "apple/DiffuCoder-7B-cpGRPO"),
    shifted_logits=True,
    attend_to_padding=False,
)
