"""LLaDA (GSAI-ML/LLaDA-8B-Base, -Instruct, LLaDA-1.5): transformers' Llama with bidirectional attention.

LLaDA's Hub code is an OLMo-style transformer whose "llama" block is exactly Llama's computation (RMSNorm, RoPE with
the rotate-half convention, SwiGLU). Its weights load into `LlamaForCausalLM` under renamed keys and give the same
logits; the config reads LLaDA's field names (`d_model`, `n_layers`, ...) and writes them back when saved.
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

from .base import BidirectionalMixin, ModelFamily, OriginalFormatConfigMixin, require_values

# Options of LLaDA's code that the Llama computation does not reproduce: (field, value the native path needs).
_REQUIRED = {
    "block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "alibi": False, "rope": True,
    "include_bias": False, "include_qkv_bias": False, "scale_logits": False, "input_emb_norm": False,
    "attention_layer_norm": False, "layer_norm_with_affine": True, "bias_for_layer_norm": False,
    "multi_query_attention": None, "block_group_size": 1,
}


class LLaDAConfig(OriginalFormatConfigMixin, LlamaConfig):
    """`LlamaConfig` that reads and writes LLaDA's `config.json` (model_type `"llada"`)."""

    model_type = "llada"
    original_architecture = "LLaDAModelLM"
    attribute_map = {
        "d_model": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads", "mlp_hidden_size": "intermediate_size",
        "max_sequence_length": "max_position_embeddings", "weight_tying": "tie_word_embeddings",
        "embedding_size": "vocab_size",
    }
    default_mask_token_id = 126336  # every released LLaDA uses it; configs may omit it
    copied_original_fields = {"vocab_size": "embedding_size"}
    native_only_fields = ("is_causal", "head_dim", "pretraining_tp", "rope_parameters")

    def __post_init__(self, **kwargs):
        self.use_cache = kwargs.pop("use_cache", False)
        require_values(kwargs, _REQUIRED, "LLaDA", "Llama")
        super().__post_init__(**kwargs)


class LLaDAForDiffusionLM(BidirectionalMixin, LlamaForCausalLM):
    """LLaDA as `LlamaForCausalLM` with full attention; `save_pretrained` writes LLaDA's names and config."""

    config_class = LLaDAConfig


LLADA = ModelFamily(
    name="llada",
    model_types=("llada",),
    original_architectures=("LLaDAModelLM",),
    config_class=LLaDAConfig,
    model_class=LLaDAForDiffusionLM,
    hub_ids=("GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-8B-Instruct", "GSAI-ML/LLaDA-1.5"),
    renames=(
        ("model.transformer.wte", "model.embed_tokens"),
        ("model.transformer.ln_f", "model.norm"),
        ("model.transformer.ff_out", "lm_head"),
        ("model.transformer.blocks.{i}.q_proj", "model.layers.{i}.self_attn.q_proj"),
        ("model.transformer.blocks.{i}.k_proj", "model.layers.{i}.self_attn.k_proj"),
        ("model.transformer.blocks.{i}.v_proj", "model.layers.{i}.self_attn.v_proj"),
        ("model.transformer.blocks.{i}.attn_out", "model.layers.{i}.self_attn.o_proj"),
        ("model.transformer.blocks.{i}.ff_proj", "model.layers.{i}.mlp.gate_proj"),
        ("model.transformer.blocks.{i}.up_proj", "model.layers.{i}.mlp.up_proj"),
        ("model.transformer.blocks.{i}.ff_out", "model.layers.{i}.mlp.down_proj"),
        ("model.transformer.blocks.{i}.attn_norm", "model.layers.{i}.input_layernorm"),
        ("model.transformer.blocks.{i}.ff_norm", "model.layers.{i}.post_attention_layernorm"),
    ),
    lora_aliases={"attn_out": "o_proj", "ff_proj": "gate_proj", "ff_out": "down_proj"},
    shifted_logits=False,
    attend_to_padding=True,  # LLaDA's own forward takes no padding mask; the paper's runs used it that way
)
