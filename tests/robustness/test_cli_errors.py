"""The scripts' command lines: bad arguments, files, YAML and settings print one `error:` line and exit 2 without a
traceback; `--debug` brings the traceback back; the headline command says what it needs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dipod_trl.runner import cli

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes/gsm8k/tiny_cpu.yaml")


def _run_cli(monkeypatch, capsys, *argv, task="gsm8k") -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["examples/gsm8k.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli(task, recipes=ROOT / "recipes" / "gsm8k")
    return exit_.value.code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("argv", "message"), [
    (["--config", "missing.yaml"], "missing.yaml"),
    (["--config", RECIPE, "--create_tiny_model", "false", "--model_name_or_path", "./no/such/model",
      "--dataset_path", str(ROOT / "recipes/gsm8k/tiny_gsm8k.jsonl")],
     "Model directory './no/such/model' does not exist"),
    (["--config", RECIPE, "--dipod_beta", "nan"], "dipod_beta must be a finite number"),
    (["--config", RECIPE, "--no_such_option", "1"], "not used by the HfArgumentParser: ['--no_such_option'"),
])
def test_bad_arguments_print_one_error_line_and_exit_2(monkeypatch, capsys, tmp_path, argv, message):
    monkeypatch.chdir(tmp_path)
    code, err = _run_cli(monkeypatch, capsys, *argv)
    assert code == 2 and message in _one_error_line(err)


def test_an_unknown_task_is_named(monkeypatch, capsys):
    code, err = _run_cli(monkeypatch, capsys, "--config", RECIPE, "--task", "no_such_task", task=None)
    assert code == 2 and "no_such_task" in _one_error_line(err)


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("learning_rate: [1, 2\nseed: 3\n", "while parsing"),  # malformed YAML
    ("learning_rate: fast\n", "learning_rate"),  # a value of the wrong type
])
def test_bad_yaml_prints_one_error_line(monkeypatch, capsys, tmp_path, yaml_text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml_text)
    code, err = _run_cli(monkeypatch, capsys, "--config", str(recipe))
    assert code == 2 and message in _one_error_line(err)


def test_debug_keeps_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["examples/gsm8k.py", "--config", str(tmp_path / "missing.yaml"), "--debug"])
    with pytest.raises(FileNotFoundError):
        cli("gsm8k")
    monkeypatch.setenv("DIPOD_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["examples/gsm8k.py", "--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(FileNotFoundError):
        cli("gsm8k")


def test_a_refused_checkpoint_is_one_line_too(monkeypatch, capsys, tmp_path, tiny_model_dir):
    code, err = _run_cli(monkeypatch, capsys, "--config", RECIPE, "--model_name_or_path", str(tiny_model_dir),
                         "--dataset_path", str(ROOT / "recipes/gsm8k/tiny_gsm8k.jsonl"), "--output_dir",
                         str(tmp_path / "out"), "--resume_from_checkpoint", "true")
    assert code == 2 and "no complete checkpoint-N" in _one_error_line(err)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="on a GPU machine the headline command trains")
def test_headline_command_without_arguments_names_the_offline_command():
    proc = subprocess.run([sys.executable, "examples/gsm8k.py"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    line = _one_error_line(proc.stderr)
    assert proc.returncode == 2
    assert "fpo_dipod.yaml" in line and "no CUDA GPU" in line and "--config" in line and "tiny_cpu.yaml" in line


def test_evaluate_names_a_missing_model_directory(tmp_path):
    proc = subprocess.run([sys.executable, "examples/evaluate.py", "--task", "gsm8k", "--model", "./missing_dir"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "'./missing_dir' does not exist" in _one_error_line(proc.stderr)
