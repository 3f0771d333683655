"""Native LLaDA and Dream: exact logits against the original code, conventions, saving in the Hub format, LoRA."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from dipod_trl.families import DREAM, LLADA, family_of
from dipod_trl.families.adapters import adapter_to_original_format, load_adapter
from dipod_trl.models import diffusion_adapter, load_diffusion_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
FAMILIES = {"llada-tiny": LLADA, "dream-tiny": DREAM}
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/models is not available")


def _load(name: str, **kwargs):
    return load_diffusion_model(str(SHARED / name), **kwargs).eval()


def _reference(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(SHARED / name / "reference_logits.safetensors"))


@pytest.mark.parametrize("config, family", [
    ({"model_type": "Dream"}, DREAM), ({"model_type": "dream"}, DREAM), ({"architectures": ["DreamModel"]}, DREAM),
    ({"model_type": "llada"}, LLADA), ({"model_type": "LLaDA"}, LLADA), ({"model_type": "llama"}, None),
])
def test_family_detection_is_case_insensitive_with_architecture_fallback(config, family):
    assert family_of(config) is family


@needs_shared
@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_adapter_reproduces_the_original_codes_logits(name, trust_remote_code):
    """The loader + adapter give the original code's logits (reference file) on every non-padding position."""
    family = FAMILIES[name]
    model = _load(name, trust_remote_code=trust_remote_code)  # the native path either way
    assert isinstance(model, family.model_class)
    ref = _reference(name)
    ids, mask = ref["input_ids"], ref["attention_mask"]
    adapter = diffusion_adapter(model, None)
    assert adapter.mask_token_id == model.config.mask_token_id  # from the config: LLaDA's tokenizer has no mask token
    with torch.no_grad():
        logits = adapter.logits(model, ids, mask)
    expected, real = ref["logits"], mask.bool()
    if family.shifted_logits:  # the reference is Dream's raw output: row i predicts token i + 1
        expected, logits, real = expected[:, :-1], logits[:, 1:], real[:, :-1] & real[:, 1:]
    error = (logits - expected).abs()[real].max().item()
    assert error < 1e-5, error


@needs_shared
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_masked_padding_makes_left_padded_rows_match_unpadded_ones(name):
    model = _load(name)
    adapter = diffusion_adapter(model, None, attend_to_padding=False)
    ids = _reference(name)["input_ids"][1:2, 5:]  # row 1 without its 5 pad tokens
    padded = torch.cat([torch.zeros(1, 7, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 7, dtype=torch.long), torch.ones_like(ids)], 1)
    with torch.no_grad():
        alone = adapter.logits(model, ids, torch.ones_like(ids))
        with_pad = adapter.logits(model, padded, mask)[:, 7:]
    first = 1 if FAMILIES[name].shifted_logits else 0  # a row's first token has no shifted prediction
    assert torch.allclose(alone[:, first:], with_pad[:, first:], atol=1e-5)
    if FAMILIES[name] is LLADA:  # LLaDA's default convention attends to the pads, as its own code does
        default = diffusion_adapter(model, None)
        assert default.attend_to_padding
        with torch.no_grad():
            assert not torch.allclose(default.logits(model, padded, mask)[:, 7:], alone, atol=1e-3)


@needs_shared
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_save_pretrained_writes_the_hub_format_and_reloads(name, tmp_path):
    model = _load(name)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # a "trained" model
    model.save_pretrained(tmp_path)
    saved, original = load_file(str(tmp_path / "model.safetensors")), load_file(str(SHARED / name / "model.safetensors"))
    assert sorted(saved) == sorted(original)
    native = model.state_dict()
    assert torch.equal(FAMILIES[name].to_native_keys(saved)[next(iter(native))], next(iter(native.values())))
    config = json.loads((tmp_path / "config.json").read_text())
    hub = json.loads((SHARED / name / "config.json").read_text())
    changed = {k for k in hub if config.get(k) != hub[k]} - {"transformers_version"}
    assert not changed, {k: (hub[k], config.get(k)) for k in changed}
    for module in {ref.split(".")[0] for ref in hub["auto_map"].values()}:  # the original code can find its files
        assert (tmp_path / f"{module}.py").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # no remote code: the registered native class
    assert type(reloaded) is type(model)
    ids = _reference(name)["input_ids"]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


@needs_shared
def test_unsupported_llada_options_are_refused_with_the_fix(tmp_path):
    config = json.loads((SHARED / "llada-tiny" / "config.json").read_text())
    config["alibi"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="alibi=True.*native_model_families=False"):
        load_diffusion_model(str(tmp_path))


@needs_shared
def test_remote_code_is_opt_in_and_fails_clearly_where_it_cannot_load():
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_diffusion_model(str(SHARED / "llada-tiny"), native_model_families=False)
    # Opted in: LLaDA's 4.x code does not load under transformers 5, and the error says how to load it natively.
    # In a subprocess: running Hub code re-registers the "llada" config class in transformers' global Auto mappings.
    code = ("from dipod_trl.models import load_diffusion_model as load\n"
            f"load({str(SHARED / 'llada-tiny')!r}, native_model_families=False, trust_remote_code=True)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "loads natively without its Hub code" in proc.stderr, proc.stderr[-2000:]


@needs_shared
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gradient_checkpointing_gives_the_same_gradients(name):
    ids = _reference(name)["input_ids"]
    grads = []
    for checkpointing in (False, True):
        model = _load(name).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(ids).logits.logsumexp(-1).mean().backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def _lora_modules(peft_model) -> set[str]:
    return {name.removeprefix("base_model.model.") for name, m in peft_model.named_modules() if hasattr(m, "lora_A")}


@needs_shared
@pytest.mark.parametrize("targets, expected", [
    (None, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),  # the family preset
    (["attn_out", "ff_out"], {"o_proj", "down_proj"}),  # LLaDA's own names; `ff_out` no longer hits the head
    ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
])
def test_lora_targets_preset_aliases_and_all_linear(targets, expected):
    from peft import LoraConfig, get_peft_model

    model = _load("llada-tiny")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=LLADA.native_lora_targets(targets)))
    modules = _lora_modules(peft_model)
    assert {m.rsplit(".", 1)[-1] for m in modules} == expected
    assert len(modules) == 2 * len(expected) and "lm_head" not in modules


@needs_shared
def test_lora_adapter_is_saved_under_llada_names_and_loads_back(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = _load("llada-tiny")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "o_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    peft_model.save_pretrained(tmp_path)
    adapter_to_original_format(LLADA, str(tmp_path))

    original_modules = {k.rsplit(".", 1)[0] for k in load_file(str(SHARED / "llada-tiny" / "model.safetensors"))}
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    wrapped = {re.sub(r"^base_model\.model\.|\.lora_[AB]\.weight$", "", k) for k in saved}
    assert wrapped <= original_modules and len(wrapped) == 6
    assert {m.rsplit(".", 1)[-1] for m in wrapped} == {"q_proj", "attn_out", "ff_out"}
    targets = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    selected = {m for m in original_modules if re.fullmatch(targets, m)}
    assert selected == wrapped and "model.transformer.ff_out" not in selected  # the original head is left alone

    ids = _reference("llada-tiny")["input_ids"]
    reloaded = load_adapter(_load("llada-tiny"), str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, peft_model.eval()(ids).logits, atol=1e-6)


PAPER_RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*/*.yaml")
                       if "LLaDA" in p.read_text() and "accelerate" not in p.parts)


@needs_shared
@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_paper_recipes_load_natively_and_adapt_what_the_paper_adapted(recipe, tmp_path):
    """The release named 7 LoRA targets; against LLaDA's Hub code only 4 of the names exist. The recipes keep those."""
    from trl import ModelConfig, TrlParser

    from dipod_trl.config import DiPODConfig
    from dipod_trl.runner import ScriptArguments

    _, args, model_args = TrlParser((ScriptArguments, DiPODConfig, ModelConfig)).parse_args_and_config(
        args=["--config", str(recipe), "--output_dir", str(tmp_path), "--bf16", "false", "--use_cpu", "true"])
    assert not args.trust_remote_code and model_args.model_name_or_path == "GSAI-ML/LLaDA-8B-Instruct"
    hub_modules = {k.rsplit(".", 1)[0] for k in load_file(str(SHARED / "llada-tiny" / "model.safetensors"))}
    release = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]
    matched_by_release = {m.rsplit(".", 1)[-1] for m in hub_modules if m.rsplit(".", 1)[-1] in release}
    assert matched_by_release == set(model_args.lora_target_modules) == {"q_proj", "k_proj", "v_proj", "up_proj"}


@needs_shared
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_configs_as_the_7b_checkpoints_write_them_load_the_same(name, tmp_path):
    """Fields the tiny configs do not show: 4.x-style RoPE fields, torch_dtype, sliding-window settings, no mask id."""
    import shutil

    for file in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SHARED / name / file, tmp_path)
    config = json.loads((SHARED / name / "config.json").read_text())
    config.pop("mask_token_id")
    config["torch_dtype"] = config.pop("dtype")
    if FAMILIES[name] is DREAM:  # Dream-v0-Instruct-7B: rope_theta + rope_scaling, an unused sliding window
        config.pop("rope_parameters")
        config.update(rope_scaling=None, sliding_window=131072, use_sliding_window=False, max_window_layers=28)
    else:
        config["use_cache"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = _load(str(tmp_path))
    assert model.config.mask_token_id == (126336 if FAMILIES[name] is LLADA else 151666)  # the family's default
    assert model.config.rope_parameters["rope_theta"] == config["rope_theta"]
    ids = _reference(name)["input_ids"][:1]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, _load(name)(ids).logits)
