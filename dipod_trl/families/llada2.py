"""LLaDA2.0 / LLaDA2.1 (inclusionAI/LLaDA2.*-mini, -flash): transformers' GLM-4-MoE with block-causal attention.

LLaDA2's Hub code (Bailing-MoE) computes what `Glm4MoeForCausalLM` computes: qk-norm, partial rotate-half RoPE on
the first `partial_rotary_factor` of each head, dense MLPs in the first `first_k_dense_replace` layers, then a
sigmoid router with expert bias and group-limited top-k, renormalised weights times `routed_scaling_factor`, plus
the shared expert. Only the layout differs, converted on load and back on save: `word_embeddings`, `attention.*`
names, `expert_bias`, per-expert weights (fused in transformers 5) and the fused `attention.query_key_value`
(rows: the query heads, then the key heads, then the value heads), split into `q_proj`/`k_proj`/`v_proj`.
"""

from __future__ import annotations

import torch
from transformers import Glm4MoeConfig, Glm4MoeForCausalLM
from transformers.core_model_loading import Split

from .base import BlockCausalMixin, BlockDiffusionConfigMixin, ModelFamily, require_values

# Options that the GLM-4-MoE computation does not reproduce: (field, value the native path needs). Written to the
# saved config, so the Hub code builds the same model (its class defaults `use_bias` to True).
_REQUIRED = {"use_qkv_bias": False, "use_bias": False, "score_function": "sigmoid", "use_rmsnorm": True,
             "norm_head": False}


class LLaDA2Config(BlockDiffusionConfigMixin, Glm4MoeConfig):
    """`Glm4MoeConfig` that reads and writes LLaDA2's `config.json` (model_type `"llada2_moe"`)."""

    model_type = "llada2_moe"
    original_architecture = "LLaDA2MoeModelLM"
    # The first two are LLaDA2's names; the rest are GLM-4-MoE's own aliases, read by its modules.
    attribute_map = {"num_experts": "n_routed_experts", "num_shared_experts": "n_shared_experts",
                     **Glm4MoeConfig.attribute_map}
    default_block_size = 32  # LLaDA2's generate(); the Hub config has none
    native_only_fields = ("is_causal", "rope_parameters", "attention_bias", "num_mtp_layers",
                          "num_nextn_predict_layers", "num_local_experts", "hub_norm_topk_prob")
    # LLaDA2's class defaults where GLM-4-MoE's differ, for configs that leave a field out (the released ones omit
    # `use_qk_norm`).
    use_qk_norm: bool = True
    n_routed_experts: int = 16
    n_shared_experts: int = 0
    num_experts_per_tok: int = 2
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    first_k_dense_replace: int = 0
    attention_dropout: float | int = 0.1
    max_position_embeddings: int = 16384
    pad_token_id: int | None = 126081

    def __post_init__(self, **kwargs):
        require_values(kwargs, _REQUIRED, "LLaDA2", "GLM-4-MoE", fill=True)
        for name in ("num_experts", "num_shared_experts"):
            if name in kwargs and kwargs[name] is None:
                raise ValueError(f"This LLaDA2 config sets {name}=None; the native path needs a number (0 for no "
                                 "shared expert). Load it with its own code instead.")
        if kwargs.get("head_dim", 0) is None:  # LLaDA2: hidden_size // num_attention_heads
            kwargs.pop("head_dim")
        # LLaDA2 renormalises the top-k weights whatever `norm_topk_prob` says (for top-k > 1); keep it for saving.
        self.hub_norm_topk_prob = self.norm_topk_prob
        self.norm_topk_prob = self.num_experts_per_tok > 1
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["norm_topk_prob"] = self.hub_norm_topk_prob
        return out


class LLaDA2ForDiffusionLM(BlockCausalMixin, Glm4MoeForCausalLM):
    """LLaDA2 as `Glm4MoeForCausalLM` with block-causal attention; `save_pretrained` writes LLaDA2's layout."""

    config_class = LLaDA2Config
    _keys_to_ignore_on_load_unexpected = None  # GLM's MTP layers (46, 92): real decoder layers here


class _SplitByFullShape(Split):
    """transformers' `Split` (one piece per target, sized like the target parameter), reading a parameter's whole
    shape: under DeepSpeed ZeRO-3 (`zero3_init_flag`) parameters are partitioned placeholders of shape `[0]` while
    loading, their real shape in `ds_shape`."""

    @torch.no_grad()
    def convert(self, input_dict, source_patterns, target_patterns, full_layer_name, model, **kwargs):
        if len(input_dict) > 1:
            raise ValueError("Undefined Operation encountered")
        tensors = next(iter(input_dict.values()))
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        params = [model.get_parameter(full_layer_name.replace(target_patterns[0], t)) for t in target_patterns]
        sizes = [getattr(p, "ds_shape", p.shape)[self.dim] for p in params]
        chunks = torch.split(tensor, sizes, dim=self.dim)
        return {target: chunk.contiguous() for target, chunk in zip(target_patterns, chunks)}


def _conversions() -> list:
    """LLaDA2's checkpoint layout <-> GLM-4-MoE's parameters (renames, the q/k/v split, the experts' fusion)."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming

    return [
        WeightRenaming(r"^model\.word_embeddings\.", "model.embed_tokens."),
        WeightRenaming(r"\.attention\.dense\.", ".self_attn.o_proj."),
        WeightRenaming(r"\.attention\.query_layernorm\.", ".self_attn.q_norm."),
        WeightRenaming(r"\.attention\.key_layernorm\.", ".self_attn.k_norm."),
        WeightRenaming(r"\.mlp\.gate\.expert_bias", ".mlp.gate.e_score_correction_bias"),
        # Split sizes the pieces by the target parameters: H * head_dim, then KV * head_dim twice.
        WeightConverter("attention.query_key_value", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                        operations=[_SplitByFullShape(dim=0)]),
        *get_checkpoint_conversion_mapping("glm4_moe"),
    ]


LLADA2 = ModelFamily(
    name="llada2",
    model_types=("llada2_moe",),
    original_architectures=("LLaDA2MoeModelLM",),
    config_class=LLaDA2Config,
    model_class=LLaDA2ForDiffusionLM,
    hub_ids=("inclusionAI/LLaDA2.0-mini", "inclusionAI/LLaDA2.0-flash", "inclusionAI/LLaDA2.1-mini",
             "inclusionAI/LLaDA2.1-flash"),
    conversions=_conversions,
    # Attention, the dense MLPs of the first layers and the shared experts (`mlp.shared_experts.*_proj`); the routed
    # experts are fused 3-D parameters and the router (`mlp.gate`) is not a `*_proj`, so both stay frozen.
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    # `query_key_value` has no single native module (LoRA on q_proj, k_proj and v_proj adapts it).
    lora_aliases={"dense": "o_proj"},
    attention="block_causal",
    default_block_size=LLaDA2Config.default_block_size,
)
