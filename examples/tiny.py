"""Tiny random diffusion LMs and a character tokenizer, built locally (no hub) for smoke runs, the demo and tests.

`python examples/tiny.py OUT_DIR [--arch modernbert|gemma3|llada|dream]` writes a model + tokenizer directory that
`from_pretrained`, `DiPODTrainer(model="OUT_DIR", ...)` and the example scripts accept; the example scripts'
`--create_tiny_model true` (the `recipes/*/tiny_cpu.yaml` smoke runs) writes one on first use. Tests and benchmarks
import it with `examples/` on `sys.path`.
"""

from __future__ import annotations

import argparse
import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

TINY_ARCHS = ("modernbert", "gemma3", "llada", "dream")
IN_MEMORY_ARCHS = ("moe",)  # built by build_tiny_model only: their classes are not registered with the Auto classes
SPECIAL_TOKENS = ["<pad>", "<mask>", "<eos>", "<bos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_tokenizer(extra_chars: str = "") -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII, with pad/mask/eos tokens and a minimal chat template."""
    chars = sorted(set(string.printable) - set("\x0b\x0c\r") | set(extra_chars))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        mask_token="<mask>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer, arch: str = "modernbert", hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """A randomly initialised bidirectional mask-predictor sized for CPU tests."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(seed)
    vocab_size = len(tokenizer)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if arch == "modernbert":
        config = ModernBertConfig(
            **common,
            max_position_embeddings=1024,
            mask_token_id=tokenizer.mask_token_id,
            cls_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.eos_token_id,
            global_attn_every_n_layers=1,
            attention_dropout=0.0,
            mlp_dropout=0.0,
            embedding_dropout=0.0,
            attn_implementation="sdpa",
        )
        model = ModernBertForMaskedLM(config)
    elif arch == "gemma3":  # a LLaDA-like decoder: no causal mask
        config = Gemma3TextConfig(
            **common,
            num_key_value_heads=2,
            head_dim=hidden_size // 4,
            max_position_embeddings=1024,
            use_bidirectional_attention=True,
            sliding_window=1024,
            attn_implementation="sdpa",
        )
        config.mask_token_id = tokenizer.mask_token_id
        model = Gemma3ForCausalLM(config)
    elif arch == "llada":  # the native LLaDA class (Llama, bidirectional), LLaDA's config fields
        from dipod_trl.families import LLaDAConfig, LLaDAForDiffusionLM

        config = LLaDAConfig(d_model=hidden_size, n_layers=num_layers, n_heads=4, n_kv_heads=4,
                             mlp_hidden_size=2 * hidden_size, embedding_size=vocab_size, max_sequence_length=1024,
                             mask_token_id=tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                             attn_implementation="sdpa")
        model = LLaDAForDiffusionLM(config)
    elif arch == "dream":  # the native Dream class (Qwen2, bidirectional, shifted logits)
        from dipod_trl.families import DreamConfig, DreamForDiffusionLM

        config = DreamConfig(**common, num_key_value_heads=2, max_position_embeddings=1024,
                             mask_token_id=tokenizer.mask_token_id, attn_implementation="sdpa")
        model = DreamForDiffusionLM(config)
    elif arch == "moe":  # a bidirectional MoE (LLaDA-MoE's shape): Qwen3-MoE with full attention, top-2 of 4 experts
        model = _bidirectional_moe(common, tokenizer.mask_token_id)
    else:
        raise ValueError(f"Unknown tiny architecture {arch!r}; use one of {TINY_ARCHS + IN_MEMORY_ARCHS}.")
    return model


def _bidirectional_moe(common: dict, mask_token_id: int):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from dipod_trl.families.base import BidirectionalMixin

    class BidirectionalQwen3Moe(BidirectionalMixin, Qwen3MoeForCausalLM):
        """Qwen3-MoE with full attention: routers transformers records, so the MoE aux loss applies."""

    hidden = common["hidden_size"]
    config = Qwen3MoeConfig(**common, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=1024,
                            moe_intermediate_size=hidden // 2, num_experts=4, num_experts_per_tok=2,
                            decoder_sparse_step=1, mlp_only_layers=[], attn_implementation="sdpa")
    config.mask_token_id = mask_token_id
    return BidirectionalQwen3Moe(config)


def save_tiny(output_dir: str, arch: str = "modernbert", hidden_size: int = 64, num_layers: int = 2) -> str:
    """Write a tiny model and its tokenizer to `output_dir`; returns the directory."""
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, arch=arch, hidden_size=hidden_size, num_layers=num_layers)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--arch", default="modernbert", choices=TINY_ARCHS)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    args = parser.parse_args(argv)
    print(save_tiny(args.output_dir, args.arch, args.hidden_size, args.num_layers))


if __name__ == "__main__":
    main()
