"""The GSM8K script end to end on CPU: single process, DDP and DeepSpeed ZeRO-2 with 2 processes, resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import save_tiny
from transformers import TrainerCallback

from dipod_trl.runner import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes/gsm8k/tiny_cpu.yaml")
DATA = str(ROOT / "recipes/gsm8k/tiny_gsm8k.jsonl")


def _args(tmp_path, model_dir, *extra):
    return ["--config", RECIPE, "--model_name_or_path", str(model_dir), "--dataset_path", DATA,
            "--output_dir", str(tmp_path / "out"), *extra]


def test_gsm8k_script_trains_offline_and_saves(tmp_path, tiny_model_dir):
    trainer = main("gsm8k", _args(tmp_path, tiny_model_dir, "--max_steps", "2"))
    assert trainer.state.global_step == 2
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert any("rewards/gsm8k_correctness_reward/mean" in h for h in trainer.state.log_history)


def test_create_tiny_model_writes_a_loadable_model(tmp_path):
    model_dir = tmp_path / "fresh-tiny"
    with pytest.raises(ValueError, match="examples/tiny.py"):  # the library itself builds no toy models
        main("gsm8k", _args(tmp_path, model_dir, "--max_steps", "1", "--create_tiny_model", "true"))
    trainer = main("gsm8k", _args(tmp_path, model_dir, "--max_steps", "1", "--create_tiny_model", "true"),
                   tiny_model_builder=save_tiny)
    assert (model_dir / "config.json").exists() and trainer.state.global_step == 1


@pytest.mark.distributed
@pytest.mark.parametrize("accelerate_config", ["ddp.yaml", "zero2.yaml"])
def test_two_process_run_gathers_rewards_and_keeps_ranks_identical(tmp_path, tiny_model_dir, accelerate_config):
    if accelerate_config == "zero2.yaml":
        pytest.importorskip("deepspeed")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
           "--config_file", str(ROOT / "recipes/accelerate" / accelerate_config), str(ROOT / "examples/gsm8k.py"),
           *_args(tmp_path, tiny_model_dir, "--max_steps", "2", "--write_rank_checksums", "true")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["global_step"] == 2 for r in ranks)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    # rewards are gathered: each rank holds the rewards of both ranks' 4 completions (one generation round:
    # num_iterations=2 reuses it for the second step)
    seen = ranks[0]["rewards_seen"]["gsm8k_correctness_reward"]
    assert seen == ranks[1]["rewards_seen"]["gsm8k_correctness_reward"] and len(seen) == 2 * 4


class StepRecorder(TrainerCallback):
    def __init__(self):
        self.done = []

    def on_step_end(self, args, state, control, **kwargs):
        self.done.append(state.global_step)


def test_resume_continues_with_same_optimizer_state_and_data_order(tmp_path, tiny_model_dir):
    common = ["--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1"]
    full = main("gsm8k", _args(tmp_path / "a", tiny_model_dir, *common))
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    steps = StepRecorder()
    resumed = main("gsm8k", _args(tmp_path / "b", tiny_model_dir, *common,
                                  "--resume_from_checkpoint", str(checkpoint)), callbacks=[steps])
    assert steps.done == [3], steps.done  # picks up at step N + 1
    a = load_file(str(tmp_path / "a" / "out" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    opt_a = torch.load(tmp_path / "a" / "out" / "checkpoint-3" / "optimizer.pt", weights_only=False)["state"]
    opt_b = torch.load(tmp_path / "b" / "out" / "checkpoint-3" / "optimizer.pt", weights_only=False)["state"]
    assert all(torch.allclose(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"], atol=1e-7) for i in opt_a)
    prompts_a = [h for h in full.state.log_history if "reward" in h][-1]["reward"]
    prompts_b = [h for h in resumed.state.log_history if "reward" in h][-1]["reward"]
    assert prompts_a == prompts_b  # same data and same samples at step 3


def test_sudoku_example_trains_on_generated_puzzles(tmp_path, tiny_model_dir):
    trainer = main("sudoku", ["--config", str(ROOT / "recipes/sudoku/tiny_cpu.yaml"), "--model_name_or_path",
                              str(tiny_model_dir), "--output_dir", str(tmp_path / "out"), "--max_steps", "2"])
    assert trainer.state.global_step == 2
    assert any("rewards/sudoku_cell_reward/mean" in h for h in trainer.state.log_history)
