"""The trainer, the task scripts, evaluation and resume on the block-diffusion layouts (SDAR, SDAR-MoE, LLaDA2; the
../shared tiny models), natively, without remote code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_dropin_losses import assert_aux_loss_is_added_and_logged
from test_evaluate import load_cli
from test_families_training import _script_args, deepspeed_run_saves_hub_format, lora_run_and_resume
from test_trainer import digit_reward, logged, make_config, make_dataset
from transformers import AutoTokenizer

from dipod_trl import DiPODConfig, DiPODTrainer
from dipod_trl.families import LLADA2, SDAR, SDAR_MOE
from dipod_trl.models import diffusion_adapter, load_diffusion_model
from dipod_trl.runner import main
from dipod_trl.sampler import block_steps, diffusion_generate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"
FAMILIES = {"sdar-tiny": SDAR, "sdar-moe-tiny": SDAR_MOE, "llada2-tiny": LLADA2}
BLOCK_SIZES = {"sdar-tiny": 4, "sdar-moe-tiny": 4, "llada2-tiny": 32}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/models is not available")]


def _is_routed_expert_or_router(key: str) -> bool:
    return ".mlp.experts." in key or ".mlp.gate." in key


# Every estimator on SDAR; one (elbo) on each MoE layout, whose completions span whole blocks (llada2: one block).
@pytest.mark.parametrize("name, estimator, completion", [
    ("sdar-tiny", "elbo", 8), ("sdar-tiny", "one_step", 8), ("sdar-tiny", "spg", 8),
    ("sdar-moe-tiny", "elbo", 8), ("llada2-tiny", "elbo", 32)])
def test_every_estimator_trains_with_kl_accumulation_and_checkpointing(tmp_path, name, estimator, completion):
    args = make_config(tmp_path, likelihood_estimator=estimator, num_iterations=2, gradient_accumulation_steps=2,
                       per_device_train_batch_size=4, beta=0.04, gradient_checkpointing=True, trust_remote_code=True,
                       block_length=None, max_completion_length=completion)
    trainer = DiPODTrainer(str(SHARED / name), [digit_reward], args=args, train_dataset=make_dataset())
    family = FAMILIES[name]
    assert isinstance(trainer.model, family.model_class)
    assert isinstance(trainer.ref_model, family.model_class)  # no remote code even with trust_remote_code=True
    assert trainer.dllm.block_size == BLOCK_SIZES[name] == trainer.args.block_length
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert any(getattr(m, "gradient_checkpointing", False) for m in trainer.model.modules())
    elbo = logged(trainer, "dipod/elbo")
    assert logged(trainer, "kl") and elbo and all(torch.isfinite(torch.tensor(elbo)))


def test_block_length_other_than_the_trained_block_size_is_refused(tmp_path):
    args = make_config(tmp_path, block_length=8, max_completion_length=16)
    with pytest.raises(ValueError, match="block_length=8"):
        DiPODTrainer(str(SHARED / "sdar-tiny"), [digit_reward], args=args, train_dataset=make_dataset())


def test_completion_may_end_inside_a_block_and_steps_are_read_per_block():
    """Block models take any `max_completion_length`: `diffusion_steps` is split over the blocks it spans."""
    args = DiPODConfig(output_dir="unused", max_completion_length=16, report_to="none", use_cpu=True)
    args.resolve_blocks(32)
    assert (args.block_length, args.diffusion_steps) == (32, 8)  # one (partial) block, 8 steps
    assert [block_steps(s, g, b) for s, g, b in [(4, 16, 32), (8, 6, 4), (64, 16, 4), (1, 16, 4)]] == [4, 4, 4, 1]
    full = DiPODConfig(output_dir="unused", max_completion_length=16, report_to="none", use_cpu=True)
    full.resolve_blocks(None)
    assert (full.block_length, full.diffusion_steps) == (16, 8)  # full attention unchanged

    # A completion shorter than a block (llada2: 16 < 32) is the first tokens of the whole block's completion.
    model = load_diffusion_model(str(SHARED / "llada2-tiny")).eval()
    adapter = diffusion_adapter(model, AutoTokenizer.from_pretrained(str(SHARED / "llada2-tiny")))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 440, (2, 37), generator=g)  # prompt tail 5: the completion shares the prompt's block
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    kw = dict(block_length=32, steps=8, temperature=0.0, pad_token_id=449)
    short = diffusion_generate(model, adapter, ids, mask, gen_length=16, **kw)
    whole = diffusion_generate(model, adapter, ids, mask, gen_length=32, **kw)
    assert short.shape == (2, 16) and not (short == adapter.mask_token_id).any()
    assert torch.equal(short, whole[:, :16])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_task_script_runs_from_the_command_line_without_remote_code(tmp_path, name):
    """The issue's acceptance command, on the recipe's 16 tokens (llada2: shorter than its block of 32)."""
    cmd = [sys.executable, str(ROOT / "examples/gsm8k.py"), "--config", str(ROOT / "recipes/gsm8k/tiny_cpu.yaml"),
           "--model_name_or_path", str(SHARED / name), "--max_steps", "2", "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved, hub = load_file(str(tmp_path / "out" / "model.safetensors")), load_file(str(SHARED / name /
                                                                                         "model.safetensors"))
    assert sorted(saved) == sorted(hub)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == json.loads((SHARED / name / "config.json").read_text())["architectures"]


# Adapted modules per layer: attention (4) and the dense / shared-expert MLP (3); SDAR-MoE has no dense MLP.
LORA_MODULES = {"sdar-tiny": 2 * 7, "sdar-moe-tiny": 2 * 4, "llada2-tiny": 2 * 7}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_lora_run_resumes_exactly_and_evaluates(tmp_path, name):
    """LoRA with the family preset: routed experts and router frozen, exact resume, evaluate.py on the adapter."""
    full, saved, out = lora_run_and_resume(tmp_path, name)
    assert len(saved) == 2 * LORA_MODULES[name]  # A and B per adapted module
    assert not [k for k in saved if _is_routed_expert_or_router(k)]
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in saved.items() if "lora_B" in k)  # trained
    assert all(torch.isfinite(torch.tensor(logged(full, "dipod/elbo"))))  # llada2: 16 tokens, a partial block

    report = tmp_path / "eval.json"
    assert load_cli().main(["--task", "gsm8k", "--model", str(SHARED / name), "--adapter", str(out), "--limit", "2",
                            "--dataset_path", str(ROOT / "recipes/gsm8k/tiny_gsm8k.jsonl"), "--gen_length", "16",
                            "--output", str(report)]) == 0
    assert len(json.loads(report.read_text())["generations"]) == 2


def test_full_model_checkpoint_of_an_moe_in_hub_names_resumes_exactly(tmp_path):
    """LLaDA2: checkpoints hold the Hub layout (fused qkv, per-expert weights), read back by `from_pretrained`."""
    common = ["--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1"]
    main("gsm8k", _script_args(tmp_path / "a", "llada2-tiny", *common))
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    names = set(load_file(str(checkpoint / "model.safetensors")))
    assert names == set(load_file(str(SHARED / "llada2-tiny" / "model.safetensors")))
    assert {"model.layers.0.attention.query_key_value.weight", "model.layers.1.mlp.experts.0.gate_proj.weight",
            "model.layers.1.mlp.gate.expert_bias"} <= names
    main("gsm8k", _script_args(tmp_path / "b", "llada2-tiny", *common, "--resume_from_checkpoint", str(checkpoint)))
    a = load_file(str(tmp_path / "a" / "out" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in load_file(str(checkpoint / "model.safetensors")).items())


@pytest.mark.distributed
@pytest.mark.parametrize("name, stage", [("llada2-tiny", "zero3"), ("sdar-moe-tiny", "zero2")])
def test_two_process_deepspeed_run_saves_hub_format(tmp_path, name, stage):
    saved, hub = deepspeed_run_saves_hub_format(tmp_path, name, stage)
    assert all(torch.allclose(saved[k], hub[k], atol=1e-2) for k in hub)  # 2 small steps from the Hub weights


@pytest.mark.parametrize("estimator", ["elbo", "one_step", "spg"])
def test_moe_router_aux_loss_is_added_and_logged_under_every_estimator(tmp_path, estimator):
    """SDAR-MoE's config has router_aux_loss_coef 0.001, which TRL takes when the field is unset: the load-balancing
    loss is added and logged under every estimator (one_step crashed on `coef * None`; elbo/spg dropped it), it
    moves the loss by coef * aux_loss, and 0.0 turns it off."""
    def run(coef):
        args = make_config(tmp_path / str(coef), likelihood_estimator=estimator, max_steps=1, block_length=None,
                           per_device_train_batch_size=4, router_aux_loss_coef=coef)
        trainer = DiPODTrainer(str(SHARED / "sdar-moe-tiny"), [digit_reward], args=args, train_dataset=make_dataset())
        trainer.train()
        return trainer

    assert_aux_loss_is_added_and_logged(run, config_coef=0.001)
