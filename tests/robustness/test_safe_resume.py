"""Resume only from complete, readable checkpoints; `latest` finds the newest one; a run killed with SIGKILL and
resumed continues exactly like an uninterrupted one (single process and 2-process DDP)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dipod_trl.checkpoints import (
    CheckpointError,
    check_checkpoint,
    checkpoint_problems,
    newest_complete_checkpoint,
    resolve_resume,
)

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes/gsm8k/tiny_cpu.yaml")
DATA = str(ROOT / "recipes/gsm8k/tiny_gsm8k.jsonl")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _fake_checkpoint(path: Path, world_size: int = 1) -> Path:
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(4)}, str(path / "model.safetensors"))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    torch.save({"state": {}}, path / "optimizer.pt")
    torch.save({"last_epoch": 1}, path / "scheduler.pt")
    for name in ["rng_state.pth"] if world_size == 1 else [f"rng_state_{i}.pth" for i in range(world_size)]:
        torch.save({"cpu": torch.random.get_rng_state()}, path / name)
    return path


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_incomplete_checkpoint_is_refused_unless_accepted(tmp_path, missing):
    ckpt = _fake_checkpoint(tmp_path / "checkpoint-1")
    (ckpt / missing).unlink()
    with pytest.raises(CheckpointError, match=f"{missing} missing.*resume_incomplete_checkpoint=True"):
        check_checkpoint(str(ckpt))
    check_checkpoint(str(ckpt), allow_incomplete=True)  # accepted knowingly (with a warning)


def test_every_process_needs_its_rng_state(tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "checkpoint-1", world_size=2)
    assert checkpoint_problems(str(ckpt), world_size=2) == []
    (ckpt / "rng_state_1.pth").unlink()
    assert checkpoint_problems(str(ckpt), world_size=2) == ["rng_state_1.pth is missing"]


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"])
def test_damaged_file_is_named_even_when_incomplete_is_accepted(tmp_path, name):
    ckpt = _fake_checkpoint(tmp_path / "checkpoint-1")
    _truncate(ckpt / name)
    with pytest.raises(CheckpointError, match=f"{name} is damaged"):
        check_checkpoint(str(ckpt), allow_incomplete=True)


def test_latest_picks_the_newest_complete_checkpoint(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoint-2")
    _fake_checkpoint(tmp_path / "checkpoint-10")
    _truncate(_fake_checkpoint(tmp_path / "checkpoint-12") / "optimizer.pt")  # killed mid-save
    (_fake_checkpoint(tmp_path / "checkpoint-11") / "scheduler.pt").unlink()
    for spelling in ("latest", "true", True):
        assert resolve_resume(spelling, str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resolve_resume("false", str(tmp_path)) is None and resolve_resume(None, str(tmp_path)) is None


def test_latest_without_checkpoints_starts_fresh_but_true_and_bad_paths_fail(tmp_path):
    assert resolve_resume("latest", str(tmp_path / "nothing-yet")) is None
    with pytest.raises(CheckpointError, match="no complete checkpoint-N"):
        resolve_resume(True, str(tmp_path))
    with pytest.raises(CheckpointError, match="is not a directory"):
        resolve_resume(str(tmp_path / "checkpoint-7"), str(tmp_path))


def _script(out: Path, model_dir, *extra, steps: int = 5) -> list[str]:
    return [sys.executable, str(ROOT / "examples/gsm8k.py"), "--config", RECIPE, "--model_name_or_path",
            str(model_dir), "--dataset_path", DATA, "--output_dir", str(out), "--save_strategy", "steps",
            "--save_steps", "1", "--max_steps", str(steps), *extra]


def _history(out: Path) -> dict[int, dict]:
    last = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
    state = json.loads((out / f"checkpoint-{last}" / "trainer_state.json").read_text())
    return {h["step"]: h for h in state["log_history"] if "loss" in h}


def _same_run(a: Path, b: Path, steps) -> None:
    ha, hb = _history(a), _history(b)
    for step in steps:
        assert ha[step].keys() == hb[step].keys(), set(ha[step]) ^ set(hb[step])
        for key in {"loss", "reward", "grad_norm", "dipod/elbo"} & ha[step].keys():
            assert ha[step][key] == pytest.approx(hb[step][key], rel=1e-5, abs=1e-7), (step, key)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


@pytest.mark.slow
def test_kill_9_then_resume_latest_matches_an_uninterrupted_run(tmp_path, tiny_model_dir):
    steps = 8  # room to kill the run after checkpoint 2, even on a fast machine
    subprocess.run(_script(tmp_path / "full", tiny_model_dir, steps=steps), env=ENV, check=True, capture_output=True,
                   cwd=ROOT)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_script(out, tiny_model_dir, steps=steps), env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ((out / "checkpoint-2").is_dir() and not checkpoint_problems(str(out / "checkpoint-2"))):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = int(Path(newest_complete_checkpoint(str(out))).name.split("-")[1])
    assert 2 <= last < steps, last  # killed mid-run
    if last + 1 < steps and not (out / f"checkpoint-{last + 1}").exists():
        # a newer, half-written checkpoint (as a kill during a save leaves it) must be passed over
        _truncate(_fake_checkpoint(out / f"checkpoint-{last + 1}") / "optimizer.pt")
    resumed = subprocess.run(_script(out, tiny_model_dir, "--resume_from_checkpoint", "latest", steps=steps),
                             env=ENV, capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_run(tmp_path / "full", out, steps=range(last + 1, steps + 1))


@pytest.mark.distributed
def test_two_process_ddp_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--config_file",
              str(ROOT / "recipes/accelerate/ddp.yaml")]
    full = subprocess.run(launch + _script(tmp_path / "full", tiny_model_dir)[1:], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    out = tmp_path / "resumed"
    out.mkdir()
    os.symlink(tmp_path / "full" / "checkpoint-3", out / "checkpoint-3")
    resumed = subprocess.run(launch + _script(out, tiny_model_dir, "--resume_from_checkpoint", "latest")[1:],
                             env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "full" / "checkpoint-3" / "rng_state_1.pth").exists()
    _same_run(tmp_path / "full", out, steps=[4, 5])


def test_a_mid_cycle_checkpoint_needs_its_saved_rollouts(tmp_path, tokenizer, tiny_model):
    """With num_iterations=2, checkpoint-1 sits between a generation and its reuse: its rollouts are required."""
    from datasets import Dataset

    from dipod_trl import DiPODConfig, DiPODTrainer

    config = DiPODConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                         max_completion_length=8, block_length=4, diffusion_steps=4, max_steps=1, num_iterations=2,
                         report_to="none", use_cpu=True, save_strategy="steps", save_steps=1, bf16=False)
    data = Dataset.from_dict({"prompt": [f"q{i}:" for i in range(8)]})

    def trainer():
        return DiPODTrainer(tiny_model, [lambda completions, **kw: [0.0] * len(completions)], config, data,
                            processing_class=tokenizer)

    trainer().train()
    saved = torch.load(tmp_path / "checkpoint-1" / "rollouts_0.pt", weights_only=True)
    assert saved["step"] == 1 and saved["buffer"][0]["completion_ids"].shape[0] == 4
    (tmp_path / "checkpoint-1" / "rollouts_0.pt").unlink()
    config.max_steps = 2
    with pytest.raises(CheckpointError, match="rollouts_0.pt missing"):
        trainer().train(resume_from_checkpoint="latest")
