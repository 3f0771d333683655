"""The trainer, the task scripts, evaluation and resume on the real LLaDA and Dream layouts (../shared tiny models)."""

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
from test_trainer import digit_reward, logged, make_config, make_dataset

from dipod_trl import DiPODTrainer
from dipod_trl.families import DREAM, LLADA
from dipod_trl.runner import main

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"
FAMILIES = {"llada-tiny": LLADA, "dream-tiny": DREAM}
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/models is not available")]


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("estimator", ["elbo", "one_step", "spg"])
def test_every_estimator_trains_with_kl_accumulation_and_checkpointing(tmp_path, name, estimator):
    args = make_config(tmp_path, likelihood_estimator=estimator, num_iterations=2, gradient_accumulation_steps=2,
                       per_device_train_batch_size=4, beta=0.04, gradient_checkpointing=True, trust_remote_code=True)
    trainer = DiPODTrainer(str(SHARED / name), [digit_reward], args=args, train_dataset=make_dataset())
    family = FAMILIES[name]
    assert isinstance(trainer.model, family.model_class)
    assert isinstance(trainer.ref_model, family.model_class)  # no remote code even with trust_remote_code=True
    assert trainer.dllm.shifted_logits == family.shifted_logits
    assert trainer.dllm.attend_to_padding == family.attend_to_padding
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert any(getattr(m, "gradient_checkpointing", False) for m in trainer.model.modules())  # TRL's default, on
    assert logged(trainer, "kl") and all(v == v for v in logged(trainer, "dipod/elbo"))


def _script_args(tmp_path, name, *extra):
    return ["--config", str(ROOT / "recipes/gsm8k/tiny_cpu.yaml"), "--model_name_or_path", str(SHARED / name),
            "--create_tiny_model", "false", "--dataset_path", str(ROOT / "recipes/gsm8k/tiny_gsm8k.jsonl"),
            "--output_dir", str(tmp_path / "out"), *extra]


LORA_RUN = ["--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1", "--use_peft", "true", "--lora_r", "4"]


def lora_run_and_resume(tmp_path, name):
    """A 3-step LoRA run of `name` (saving every step) and the same run resumed from checkpoint-2; checks that the
    resumed adapter (1e-6) and last reward equal the uninterrupted run's. Returns `(trainer, saved adapter, out dir)`."""
    full = main("gsm8k", _script_args(tmp_path / "a", name, *LORA_RUN))
    out = tmp_path / "a" / "out"
    saved = load_file(str(out / "adapter_model.safetensors"))
    resumed = main("gsm8k", _script_args(tmp_path / "b", name, *LORA_RUN, "--resume_from_checkpoint",
                                         str(out / "checkpoint-2")))
    again = load_file(str(tmp_path / "b" / "out" / "adapter_model.safetensors"))
    assert sorted(saved) == sorted(again) and all(torch.allclose(saved[k], again[k], atol=1e-6) for k in saved)
    assert logged(full, "reward")[-1] == logged(resumed, "reward")[-1]
    return full, saved, out


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_lora_run_saves_hub_format_resumes_and_evaluates(tmp_path, name):
    """LoRA with the family preset: checkpoints in the original names, exact resume, evaluate.py on the adapter."""
    _, saved, out = lora_run_and_resume(tmp_path, name)
    hub_modules = {k.rsplit(".", 1)[0] for k in load_file(str(SHARED / name / "model.safetensors"))}
    assert {re.sub(r"^base_model\.model\.|\.lora_[AB]\.weight$", "", k) for k in saved} <= hub_modules
    assert len(saved) == 2 * 2 * 7  # A and B for the 7 linear layers of each of the 2 blocks: the family preset

    evaluate = load_cli().main
    report = tmp_path / "eval.json"
    assert evaluate(["--task", "gsm8k", "--model", str(SHARED / name), "--adapter", str(out), "--limit", "2",
                     "--dataset_path", str(ROOT / "recipes/gsm8k/tiny_gsm8k.jsonl"), "--gen_length", "16",
                     "--block_length", "8", "--output", str(report)]) == 0
    assert len(json.loads(report.read_text())["generations"]) == 2


def test_full_model_checkpoint_in_llada_names_resumes_exactly(tmp_path):
    common = ["--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1"]
    main("gsm8k", _script_args(tmp_path / "a", "llada-tiny", *common))
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    assert "model.transformer.blocks.0.attn_out.weight" in load_file(str(checkpoint / "model.safetensors"))
    main("gsm8k", _script_args(tmp_path / "b", "llada-tiny", *common, "--resume_from_checkpoint", str(checkpoint)))
    a = load_file(str(tmp_path / "a" / "out" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.distributed
@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_process_deepspeed_run_saves_hub_format(tmp_path, name, stage):
    deepspeed_run_saves_hub_format(tmp_path, name, stage)


def deepspeed_run_saves_hub_format(tmp_path, name: str, stage: str) -> tuple[dict, dict]:
    """2 steps of examples/gsm8k.py on 2 processes under DeepSpeed `stage`: both ranks end with the same weights, and
    the saved model is whole, in the Hub names, and trained. Returns `(saved, hub)` state dicts."""
    pytest.importorskip("deepspeed")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--config_file",
           str(ROOT / "recipes/accelerate" / f"{stage}.yaml"), str(ROOT / "examples/gsm8k.py"),
           *_script_args(tmp_path, name, "--max_steps", "2", "--beta", "0.04", "--write_rank_checksums", "true")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "out"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["global_step"] == 2 for r in ranks) and ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    saved, hub = load_file(str(out / "model.safetensors")), load_file(str(SHARED / name / "model.safetensors"))
    assert sorted(saved) == sorted(hub) and all(saved[k].shape == hub[k].shape for k in hub)  # whole, Hub names
    assert any(not torch.equal(saved[k], hub[k]) for k in hub)  # trained
    return saved, hub


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_task_scripts_run_from_the_command_line_without_remote_code(tmp_path, name):
    """The issue's acceptance commands: examples/gsm8k.py and examples/sudoku.py on the Hub layouts, 2 steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    gsm8k = [sys.executable, str(ROOT / "examples/gsm8k.py"), *_script_args(tmp_path / "gsm8k", name, "--max_steps",
                                                                             "2")]
    sudoku = [sys.executable, str(ROOT / "examples/sudoku.py"), "--config", str(ROOT / "recipes/sudoku/tiny_cpu.yaml"),
              "--model_name_or_path", str(SHARED / name), "--create_tiny_model", "false", "--output_dir",
              str(tmp_path / "sudoku"), "--max_steps", "2"]
    for cmd in (gsm8k, sudoku):
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "gsm8k" / "out" / "model.safetensors").exists()
    assert (tmp_path / "sudoku" / "model.safetensors").exists()
