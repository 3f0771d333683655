"""A NaN/inf update is skipped (weights and optimizer state untouched), counted, logged as it is, and a streak stops
training before any corrupted checkpoint is written."""

import math

import pytest
import torch
from datasets import Dataset

from dipod_trl import DiPODConfig, DiPODTrainer
from dipod_trl.guard import NonFiniteGuard, NonFiniteTrainingError


def _config(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
                max_completion_length=8, block_length=4, diffusion_steps=4, max_steps=3, learning_rate=1e-2,
                logging_steps=1, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0,
                bf16=False, max_grad_norm=1.0)
    base.update(overrides)
    return DiPODConfig(**base)


def _dataset(n=12):
    return Dataset.from_dict({"prompt": [f"q{i}:" for i in range(n)]})


def _varied_reward(prompts, completions, **kwargs):
    return [float(i % 3) for i in range(len(completions))]


def _poison(model, steps: set[int], trainer_ref: list):
    """NaN logits in the gradient-carrying forwards of the given optimizer steps (1-based)."""
    def hook(module, args, output):
        if torch.is_grad_enabled() and trainer_ref and trainer_ref[0].state.global_step + 1 in steps:
            output.logits = output.logits * float("nan")
        return output
    return model.register_forward_hook(hook)


def test_guard_counts_resets_and_stops_after_a_streak():
    guard = NonFiniteGuard(max_consecutive=2)
    guard.observe_loss(torch.tensor(float("nan")))
    assert guard.should_skip(float("nan"), step=0, learning_rate=1e-3)
    assert not guard.should_skip(torch.tensor(3.0), step=1, learning_rate=1e-3)  # a finite update resets the streak
    assert guard.should_skip(float("inf"), step=2, learning_rate=1e-3) and guard.skipped == 2
    with pytest.raises(NonFiniteTrainingError, match="2 consecutive.*max_consecutive_nonfinite"):
        guard.should_skip(float("nan"), step=3, learning_rate=1e-3)
    assert not NonFiniteGuard(1).should_skip(None, 0, None)  # no gradient norm (nothing to judge)


def test_nan_update_is_skipped_counted_and_logged_as_nan(tmp_path, tokenizer, tiny_model):
    ref: list = []
    handle = _poison(tiny_model, {1}, ref)
    trainer = DiPODTrainer(tiny_model, [_varied_reward], _config(tmp_path, max_steps=2), _dataset(),
                           processing_class=tokenizer)
    ref.append(trainer)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    original_step = trainer.create_optimizer().step
    snapshots = []

    def step(*args, **kwargs):  # weights right after each optimizer step
        out = original_step(*args, **kwargs)
        snapshots.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        return out

    trainer.optimizer.step = step
    trainer.train()
    handle.remove()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert math.isnan(logs[0]["loss"]) and math.isnan(logs[0]["grad_norm"])  # shown as it is, not 0.0
    assert math.isfinite(logs[1]["loss"]) and logs[-1]["guard/skipped_updates"] == 1.0
    assert all(torch.equal(snapshots[0][n], initial[n]) for n in initial)  # step 1 skipped: weights untouched
    assert any(not torch.equal(snapshots[1][n], initial[n]) for n in initial)  # step 2 trained
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(int(s["step"]) == 1 for s in state.values())  # the optimizer stepped once, not twice


def test_a_streak_stops_training_and_keeps_the_last_good_checkpoint_latest(tmp_path, tokenizer, tiny_model):
    ref: list = []
    _poison(tiny_model, {2, 3, 4}, ref)
    config = _config(tmp_path, max_steps=4, max_consecutive_nonfinite=2, save_strategy="steps", save_steps=1)
    trainer = DiPODTrainer(tiny_model, [_varied_reward], config, _dataset(), processing_class=tokenizer)
    ref.append(trainer)
    with pytest.raises(NonFiniteTrainingError, match="consecutive"):
        trainer.train()
    saved = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    assert saved == ["checkpoint-1", "checkpoint-2"]  # step 3 raised before its update and its save
    assert trainer.guard.skipped == 2


def _huge_rewards(prompts, completions, **kwargs):
    return [3e38 if i % 2 else -3e38 for i in range(len(completions))]


@pytest.mark.parametrize(("reward", "overrides"), [
    (_varied_reward, dict(learning_rate=1e10)),  # step 1 blows the weights up; every later forward is NaN
    (_huge_rewards, dict(scale_rewards="none", learning_rate=1e-3)),  # advantages near float32's max
    (_varied_reward, dict(likelihood_estimator="spg", learning_rate=1e6)),
])
def test_the_reported_causes_are_skipped_and_never_reach_the_weights(tmp_path, tokenizer, tiny_model, reward,
                                                                     overrides):
    config = _config(tmp_path, max_steps=3, max_consecutive_nonfinite=5, **overrides)
    trainer = DiPODTrainer(tiny_model, [reward], config, _dataset(), processing_class=tokenizer)
    trainer.train()
    assert trainer.guard.skipped >= 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


DEEPSPEED_SCRIPT = '''
import json, sys, torch
from datasets import Dataset
from transformers import AutoTokenizer
from dipod_trl import DiPODConfig, DiPODTrainer

def varied(prompts, completions, **kwargs):
    return [float(i % 3) for i in range(len(completions))]

config = DiPODConfig(output_dir=sys.argv[2], per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
                     block_length=4, diffusion_steps=4, max_steps=3, logging_steps=1, report_to="none", use_cpu=True,
                     save_strategy="no", disable_tqdm=True, bf16=False, learning_rate=1e10)
trainer = DiPODTrainer(sys.argv[1], [varied], config, Dataset.from_dict({"prompt": [f"q{i}:" for i in range(16)]}),
                       processing_class=AutoTokenizer.from_pretrained(sys.argv[1]))
trainer.train()
params = trainer.accelerator.unwrap_model(trainer.model).parameters()
print("RESULT " + json.dumps({"skipped": trainer.guard.skipped, "finite": all(torch.isfinite(p).all().item() for p in params)}) + chr(10), end="", flush=True)  # one write
'''


@pytest.mark.distributed
def test_deepspeed_zero2_skips_and_counts_non_finite_updates(tmp_path, tiny_model_dir):
    """Under DeepSpeed the step happens inside backward; its overflow check skips, the guard counts on every rank."""
    import json
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("deepspeed")
    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "run.py"
    script.write_text(DEEPSPEED_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--config_file",
         str(root / "recipes/accelerate/zero2.yaml"), str(script), str(tiny_model_dir), str(tmp_path / "out")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the two ranks print concurrently, so their lines may interleave: read every `RESULT {...}` wherever it is
    results = [json.loads(m) for m in re.findall(r"\{\"skipped\"[^}]*\}", proc.stdout)]
    assert len(results) == 2 and all(r == {"skipped": 2, "finite": True} for r in results), results
