"""DiffusionGemma end to end (../shared/models/diffusiongemma-tiny, transformers' own `DiffusionGemmaForBlockDiffusion`):
the task script, both estimators through `DiPODTrainer` with KL to the native reference, start-up refusals, LoRA with
the recipe's preset (unmerged evaluation: tied encoder/decoder weights), the recipe's frozen router in full
fine-tunes, exact resume, and a 2-process DeepSpeed ZeRO-3 run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_evaluate import load_cli
from test_families_training import _script_args, lora_run_and_resume
from test_trainer import digit_reward, logged, make_config, make_dataset
from transformers import DiffusionGemmaForBlockDiffusion

from dipod_trl import DiPODConfig, DiPODTrainer, losses
from dipod_trl.runner import main

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"
NAME = "diffusiongemma-tiny"
PATH = SHARED / NAME
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# TRL's `sft_diffusion_gemma.py`: LoRA on the attention and dense-MLP linears of the encoder's and decoder's text layers
RECIPE_REGEX = (r"model\.(encoder\.language_model|decoder)\.layers\.\d+"
                r"\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)")
FROZEN_IN_LORA = ("experts", "router", "self_conditioning", "vision")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/models is not available")]


def _config(tmp_path, **overrides) -> DiPODConfig:
    """`make_config` on one canvas: 16 completion tokens, block_length left to the model (its canvas_length)."""
    return make_config(tmp_path, **{"block_length": None, "max_completion_length": 16, **overrides})


def _is_router(name: str) -> bool:
    return ".router." in name


def test_task_script_runs_from_the_command_line(tmp_path):
    """The issue's acceptance command (the recipe's defaults, model read from ../shared, output in tmp_path)."""
    cmd = [sys.executable, str(ROOT / "examples/gsm8k.py"), "--config", str(ROOT / "recipes/gsm8k/tiny_cpu.yaml"),
           "--model_name_or_path", str(PATH), "--max_steps", "2", "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved, hub = load_file(str(tmp_path / "out" / "model.safetensors")), load_file(str(PATH / "model.safetensors"))
    assert sorted(saved) == sorted(hub) and all(saved[k].shape == hub[k].shape for k in hub)
    assert any(not torch.equal(saved[k], hub[k]) for k in hub)  # trained
    assert all(torch.equal(saved[k], hub[k]) for k in hub if _is_router(k))  # the recipe's frozen router
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["DiffusionGemmaForBlockDiffusion"] and config["model_type"] == "diffusion_gemma"


@pytest.mark.parametrize("estimator, uniform_likelihood, self_conditioning", [
    ("elbo", "training", "none"), ("elbo", "elbo", "none"), ("elbo", "training", "two_pass"),
    ("spg", "training", "none"), ("spg", "elbo", "none")])
def test_estimators_train_with_kl_accumulation_and_coupled_ratio(tmp_path, monkeypatch, estimator, uniform_likelihood,
                                                                 self_conditioning):
    args = _config(tmp_path, likelihood_estimator=estimator, num_iterations=2, gradient_accumulation_steps=2,
                   per_device_train_batch_size=4, beta=0.04, uniform_likelihood=uniform_likelihood,
                   self_conditioning=self_conditioning)
    trainer = DiPODTrainer(str(PATH), [digit_reward], args=args, train_dataset=make_dataset())
    # TRL's reference model (`create_model_from_path`: the config's architecture, looked up in transformers)
    assert type(trainer.model) is DiffusionGemmaForBlockDiffusion
    assert type(trainer.ref_model) is DiffusionGemmaForBlockDiffusion
    assert (trainer.dllm.noise, trainer.dllm.attention, trainer.args.block_length) == ("uniform", "encoder_decoder", 16)
    named = dict(trainer.model.named_parameters())
    router = {n for n in named if _is_router(n)}
    assert router and all(not named[n].requires_grad for n in router)  # full fine-tune: the recipe's frozen router
    before = {n: p.detach().clone() for n, p in named.items()}

    ratios = []  # (micro-step, FPO ratio): steps 0, 1 are the first inner iteration (before any update)
    fpo_policy_loss = losses.fpo_policy_loss

    def recording(*a, **kw):
        loss, ratio = fpo_policy_loss(*a, **kw)
        ratios.append((trainer._step, ratio.detach().clone()))
        return loss, ratio

    monkeypatch.setattr(losses, "fpo_policy_loss", recording)
    trainer.train()

    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and not changed & router
    assert any(".self_attn." in n for n in changed) and any(".experts." in n for n in changed)
    # the decoder's self-conditioning block is read (and trained) only by the two-pass estimate
    assert any("self_conditioning" in n for n in changed) == (self_conditioning == "two_pass")
    elbo, kl = logged(trainer, "dipod/elbo"), logged(trainer, "kl")
    assert elbo and all(torch.isfinite(torch.tensor(elbo))) and all(e < 0 for e in elbo)
    assert kl and all(torch.isfinite(torch.tensor(kl)))
    if estimator == "spg":
        assert not ratios and all(torch.isfinite(torch.tensor(logged(trainer, "spg/eubo"))))
        return
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert len(logged(trainer, key)) == 2, key
    # coupling: at the first inner iteration the old estimate (whole generation batch, before shuffling) and the new
    # one (shuffled micro-batches) draw the same corruption, so the ratio is 1 (bitwise here); after an update not
    assert [step for step, _ in ratios] == [0, 1, 2, 3]
    for step, ratio in ratios[:2]:
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5), (step, ratio)
    assert any(not torch.allclose(ratio, torch.ones_like(ratio), atol=1e-3) for _, ratio in ratios[2:])


@pytest.mark.parametrize("setting, match", [
    ({"likelihood_estimator": "one_step"}, "likelihood_estimator"),
    ({"elbo_masking": "stratified"}, "elbo_masking"),
    ({"entropy_coef": 0.01}, "entropy_coef"),
    ({"use_adaptive_entropy": True}, "use_adaptive_entropy"),
    ({"top_k": 5}, "top_k"),
    ({"min_p": 0.1}, "min_p"),
    ({"decoding_threshold": 0.9}, "decoding_threshold"),
    ({"remasking": "random"}, "remasking"),
    ({"generation_kwargs": {"temperature": 0.5}}, "temperature"),
    ({"generation_kwargs": {"bogus": 1}}, "bogus")])
def test_settings_the_model_does_not_read_are_refused_at_start_up(tmp_path, setting, match):
    with pytest.raises(ValueError, match=match):  # the config or the trainer's constructor, before any rollout
        DiPODTrainer(str(PATH), [digit_reward], args=_config(tmp_path, **setting), train_dataset=make_dataset())


@pytest.mark.parametrize("setting", [{"uniform_likelihood": "elbo"}, {"self_conditioning": "two_pass"}])
def test_uniform_noise_knobs_are_refused_on_a_mask_noise_model(tmp_path, tiny_model_dir, setting):
    args = make_config(tmp_path, **setting)
    with pytest.raises(ValueError, match=f"{next(iter(setting))}.*mask token"):
        DiPODTrainer(tiny_model_dir, [digit_reward], args=args, train_dataset=make_dataset())


def test_drift_diagnostics_are_refused_without_unmasking_orders(tmp_path):
    from dipod_trl.diagnostics import DriftCallback, add_drift_diagnostics

    trainer = DiPODTrainer(str(PATH), [digit_reward], args=_config(tmp_path), train_dataset=make_dataset())
    with pytest.raises(ValueError, match="no unmasking order"):
        add_drift_diagnostics(trainer, probe_every=1)
    assert not any(isinstance(c, DriftCallback) for c in trainer.callback_handler.callbacks)


def test_lora_preset_resumes_exactly_and_evaluates_unmerged(tmp_path):
    """LoRA with the family preset (= TRL's recipe), exact resume, and evaluate.py on the adapter, kept unmerged."""
    from dipod_trl.families.adapters import load_adapter, merged_for_inference
    from dipod_trl.models import load_diffusion_model

    full, saved, out = lora_run_and_resume(tmp_path, NAME)
    modules = {re.sub(r"^base_model\.model\.|\.lora_[AB]\.weight$", "", k) for k in saved}
    recipe = {n for n, _ in DiffusionGemmaForBlockDiffusion.from_pretrained(str(PATH)).named_modules()
              if re.fullmatch(RECIPE_REGEX, n)}
    assert len(recipe) == 26 and modules == recipe and len(saved) == 2 * 26  # A and B per module of the recipe
    assert not [k for k in saved if any(part in k for part in FROZEN_IN_LORA)]
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in saved.items() if "lora_B" in k)  # trained
    assert all(torch.isfinite(torch.tensor(logged(full, "dipod/elbo"))))

    # Encoder and decoder share their tied base weights, with an adapter each: merging would fold both deltas into
    # the shared tensor, so evaluation keeps the adapters unmerged.
    peft_model = load_adapter(load_diffusion_model(str(PATH)), str(out))
    inner = peft_model.get_base_model().model
    encoder, decoder = inner.encoder.language_model.layers[0].self_attn.q_proj, inner.decoder.layers[0].self_attn.q_proj
    assert encoder.get_base_layer().weight is decoder.get_base_layer().weight
    assert all(m.get_delta_weight("default").abs().sum() > 0 for m in (encoder, decoder))
    assert merged_for_inference(peft_model) is peft_model

    report = tmp_path / "eval.json"
    assert load_cli().main(["--task", "gsm8k", "--model", str(PATH), "--adapter", str(out), "--limit", "2",
                            "--dataset_path", str(ROOT / "recipes/gsm8k/tiny_gsm8k.jsonl"), "--gen_length", "16",
                            "--output", str(report)]) == 0
    assert len(json.loads(report.read_text())["generations"]) == 2


def test_adapters_on_untied_weights_are_still_merged(tiny_model):
    from peft import LoraConfig, PeftModel, get_peft_model

    from dipod_trl.families.adapters import merged_for_inference

    peft_model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["Wqkv", "Wo"]))
    assert not isinstance(merged_for_inference(peft_model), PeftModel)


def test_full_fine_tune_resumes_exactly_and_keeps_the_router_frozen(tmp_path):
    common = ["--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1"]
    main("gsm8k", _script_args(tmp_path / "a", NAME, *common))
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    main("gsm8k", _script_args(tmp_path / "b", NAME, *common, "--resume_from_checkpoint", str(checkpoint)))
    a = load_file(str(tmp_path / "a" / "out" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "model.safetensors"))
    hub = load_file(str(PATH / "model.safetensors"))
    assert sorted(a) == sorted(b) == sorted(hub) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in load_file(str(checkpoint / "model.safetensors")).items())
    routers = [k for k in hub if _is_router(k)]
    assert len(routers) == 6 and all(torch.equal(a[k], hub[k]) for k in routers)  # proj, scale, per_expert_scale
    assert any(not torch.equal(a[k], hub[k]) for k in hub if ".self_attn." in k or ".experts." in k)


@pytest.mark.distributed
def test_two_process_deepspeed_zero3_run_saves_whole_weights(tmp_path):
    """ZeRO-3: rollouts run on gathered weights (ds3_gather_for_generation), the likelihood's encoder and decoder
    calls on sharded ones; both ranks end with the same weights, saved whole."""
    pytest.importorskip("deepspeed")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--config_file",
           str(ROOT / "recipes/accelerate/zero3.yaml"), str(ROOT / "examples/gsm8k.py"),
           *_script_args(tmp_path, NAME, "--max_steps", "2", "--beta", "0.04", "--write_rank_checksums", "true")]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "out"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["global_step"] == 2 and r["world_size"] == 2 for r in ranks)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    saved, hub = load_file(str(out / "model.safetensors")), load_file(str(PATH / "model.safetensors"))
    assert sorted(saved) == sorted(hub) and all(saved[k].shape == hub[k].shape for k in hub)  # whole, Hub names
    assert any(not torch.equal(saved[k], hub[k]) for k in hub)  # trained
    assert all(torch.equal(saved[k], hub[k]) for k in hub if _is_router(k))  # frozen
    assert all(torch.allclose(saved[k], hub[k], atol=1e-2) for k in hub)  # 2 small steps from the Hub weights
