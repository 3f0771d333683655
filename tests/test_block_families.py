"""Native SDAR, SDAR-MoE and LLaDA2: exact logits against the original code's references, saving in the Hub format,
gradient checkpointing, and the MoE LoRA preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DynamicCache

import dipod_trl  # noqa: F401  (registers the native families)
from dipod_trl.block_attention import block_causal_mask
from dipod_trl.families import LLADA2, SDAR, SDAR_MOE, family_of_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
FIXTURES = {"sdar-tiny": SDAR, "sdar-moe-tiny": SDAR_MOE, "llada2-tiny": LLADA2}
REFERENCE_BLOCK_SIZE = 4  # every reference's block mask uses blocks of 4
TOLERANCE = 1e-5
# Fields transformers 5 writes under another name (`torch_dtype` -> `dtype`) or version.
IGNORED_CONFIG_FIELDS = {"transformers_version", "torch_dtype", "dtype"}


def _path(name: str) -> Path:
    path = SHARED / name
    if not (path / "reference_logits.safetensors").is_file():
        pytest.skip(f"{path} is not available")
    return path


def _load(name: str, **kwargs):
    return AutoModelForCausalLM.from_pretrained(str(_path(name)), dtype=torch.float32, **kwargs).eval()


def _reference(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(_path(name) / "reference_logits.safetensors"))


def _max_error(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    return (a - b).abs()[where].max().item()


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_loads_natively_with_the_reference_logits(name):
    """(a) Real tokens: the 2-D padding mask (block mask built by the model) and the stored 4-D block mask."""
    model = _load(name, block_size=REFERENCE_BLOCK_SIZE)
    family = FIXTURES[name]
    assert isinstance(model, family.model_class) and family_of_model(model) is family
    ref = _reference(name)
    real = ref["attention_mask"].bool()
    with torch.no_grad():
        from_2d = model(ref["input_ids"], attention_mask=ref["attention_mask"], position_ids=ref["position_ids"])
        from_4d = model(ref["input_ids"], attention_mask=ref["block_attention_mask"], position_ids=ref["position_ids"])
    errors = {"2-D": _max_error(from_2d.logits, ref["logits"], real),
              "4-D": _max_error(from_4d.logits, ref["logits"], real)}
    assert max(errors.values()) <= TOLERANCE, f"{name}: max abs error {errors}"


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_training_view_matches(name):
    """(b) `[x_t ; x_0]` with the block-diffusion mask, on non-pad tokens (pad queries see only themselves)."""
    model, ref = _load(name), _reference(name)
    mask = ref["train_attention_mask"]
    mask = mask[:, None] if mask.dim() == 3 else mask
    allowed = mask if mask.dtype == torch.bool else mask == 0
    pad = allowed.sum(-1).squeeze(1) == 1
    assert (ref["train_concat_input_ids"][pad] == ref["input_ids"][1, 0]).all()  # row 1 is left-padded
    with torch.no_grad():
        logits = model(ref["train_concat_input_ids"], attention_mask=mask,
                       position_ids=ref["train_concat_position_ids"]).logits
    error = _max_error(logits, ref["train_logits"], ~pad)
    assert error <= TOLERANCE, f"{name}: training view max abs error {error}"


@pytest.mark.parametrize("name", ["sdar-moe-tiny", "sdar-tiny"])
def test_kv_cached_block_decoding_matches(name):
    """(c) Each row alone: whole prompt blocks once, then per block a denoising call (its KV dropped again) and a
    store call, as SDAR's `generate.py` runs it."""
    model, ref = _load(name), _reference(name)
    block = REFERENCE_BLOCK_SIZE
    prompt = ref["input_ids"].size(1) - 16
    errors = []
    for row in range(ref["input_ids"].size(0)):
        real = ref["attention_mask"][row].bool()
        ids = ref["input_ids"][row][real][None]
        n, start = ids.size(1), (int(real[:prompt].sum()) // block) * block
        cache, logits = DynamicCache(config=model.config), torch.zeros(n, ref["logits"].size(-1))
        with torch.no_grad():
            positions = torch.arange(start)[None]
            model(ids[:, :start], attention_mask=block_causal_mask(positions, torch.ones_like(positions), block),
                  position_ids=positions, cache=cache, use_cache=True)
            for s in range(start, n, block):
                e = min(s + block, n)
                kwargs = dict(attention_mask=torch.ones(1, 1, e - s, e, dtype=torch.bool),
                              position_ids=torch.arange(s, e)[None], cache=cache, use_cache=True)
                logits[s:e] = model(ids[:, s:e], **kwargs).logits[0]
                cache.crop(s - e)  # the denoising call keeps no KV; the store call writes the block's
                model(ids[:, s:e], **kwargs)
        valid = ref["cached_logits_valid"][row][real]
        errors.append(_max_error(logits, ref["cached_logits"][row][real], valid))
        assert valid[start:].all() and not valid[:start].any()
    assert max(errors) <= TOLERANCE, f"{name}: cached max abs error per row {errors}"


def _config_mismatches(saved: dict, original: dict) -> dict:
    keys = (set(saved) | set(original)) - IGNORED_CONFIG_FIELDS
    return {k: (original.get(k, "<absent>"), saved.get(k, "<absent>")) for k in keys if saved.get(k, ...) !=
            original.get(k, ...)}


@pytest.mark.parametrize("name", ["llada2-tiny", "sdar-moe-tiny", "sdar-tiny"])
def test_save_pretrained_writes_the_hub_layout_and_reloads(name, tmp_path):
    model, path = _load(name), _path(name)
    model.save_pretrained(tmp_path)
    saved, original = load_file(str(tmp_path / "model.safetensors")), load_file(str(path / "model.safetensors"))
    assert set(saved) == set(original)
    assert all(torch.equal(saved[k], original[k]) for k in original)
    config = json.loads((tmp_path / "config.json").read_text())
    hub = json.loads((path / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == (hub["model_type"], hub["architectures"])
    assert not _config_mismatches(config, hub), _config_mismatches(config, hub)
    ref = _reference(name)
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert type(reloaded) is type(model)
    with torch.no_grad():
        args = (ref["input_ids"],)
        kwargs = dict(attention_mask=ref["block_attention_mask"], position_ids=ref["position_ids"])
        assert torch.equal(reloaded(*args, **kwargs).logits, model(*args, **kwargs).logits)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_gradient_checkpointing_trains(name):
    model, ref = _load(name), _reference(name)
    model.gradient_checkpointing_enable()
    model.train()
    logits = model(ref["input_ids"], attention_mask=ref["attention_mask"]).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ref["input_ids"].flatten())
    loss.backward()
    assert model.model.embed_tokens.weight.grad is not None and torch.isfinite(loss)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_lora_preset_leaves_routed_experts_and_router_frozen(name):
    from peft import LoraConfig, get_peft_model

    family = FIXTURES[name]
    peft_model = get_peft_model(_load(name), LoraConfig(target_modules=family.native_lora_targets(None)))
    trainable = [k for k, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in k for k in trainable)
    assert not [k for k in trainable if ".mlp.experts." in k or ".mlp.gate." in k]
    assert any(".self_attn.q_proj." in k for k in trainable)
    if name == "llada2-tiny":  # the shared expert and the dense layer 0 are adapted
        assert any(".mlp.shared_experts.gate_proj." in k for k in trainable)
        assert any(".layers.0.mlp.down_proj." in k for k in trainable)
    assert family.native_lora_targets(["dense"]) == (["o_proj"] if family is LLADA2 else ["dense"])


def test_llada2_config_refuses_what_the_native_path_does_not_compute():
    config = json.loads((_path("llada2-tiny") / "config.json").read_text())
    for field, value in {"use_qkv_bias": True, "use_bias": True, "score_function": "softmax", "norm_head": True,
                         "use_rmsnorm": False}.items():
        with pytest.raises(ValueError, match=field):
            LLADA2.config_class(**{**config, field: value})
    config.pop("use_qk_norm")  # the released configs leave it to LLaDA2's class default, True
    native = LLADA2.config_class(**{**config, "norm_topk_prob": False})
    assert native.use_qk_norm and "use_qk_norm" in native.to_dict()
    assert native.norm_topk_prob and native.to_dict()["norm_topk_prob"] is False  # LLaDA2 always renormalises
    assert native.num_local_experts == config["num_experts"] and native.n_shared_experts == 1
    assert native.rope_parameters["partial_rotary_factor"] == 0.5 and native.block_size == 32
