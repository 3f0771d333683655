"""examples/control.py on bad input: one ``error:`` line, exit status 2, no traceback (unless debugging)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gymnasium")

from dipod_trl.control import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "control.py"


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("control_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv("DIPOD_DEBUG", raising=False)


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


CASES = {
    "bad int flag": (lambda tmp: ["--n_mc", "eight"], "n_mc"),
    "unknown flag": (lambda tmp: ["--not_a_flag", "1"], "not_a_flag"),
    "bad bool flag": (lambda tmp: ["--normalize_obs", "maybe"], "boolean"),
    "missing config": (lambda tmp: ["--config", str(tmp / "nope.yaml")], "not found"),
    "malformed yaml": (lambda tmp: ["--config", _yaml(tmp, "n_mc: [1, 2\nseed: 0\n")], "not valid YAML"),
    "yaml not a mapping": (lambda tmp: ["--config", _yaml(tmp, "- 1\n- 2\n")], "mapping"),
    "yaml wrong type": (lambda tmp: ["--config", _yaml(tmp, "n_mc: eight\n")], "'n_mc' must be int"),
    "yaml unknown key": (lambda tmp: ["--config", _yaml(tmp, "clip_logratio: 1.0\n")], "logratio_clamp_max"),
    "bad value": (lambda tmp: ["--gamma", "1.5"], "gamma"),
    "unknown env": (lambda tmp: ["--env", "NoSuchEnv-v0"], "NoSuchEnv"),
    "malformed env id": (lambda tmp: ["--env", "not an env"], "Malformed"),
    "discrete env": (lambda tmp: ["--env", "CartPole-v1"], "flow policies need continuous actions"),
    "missing aggregate dir": (lambda tmp: ["--aggregate", str(tmp / "none")], "not a directory"),
    "empty aggregate dir": (lambda tmp: ["--aggregate", str(tmp)], "no finished run"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_error_line_and_exit_2(cli, tmp_path, capsys, case):
    make_argv, needle = CASES[case]
    assert cli.main([*make_argv(tmp_path), "--output_dir", str(tmp_path / "out"), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "out" / "progress.csv").exists()


def test_debug_flag_and_env_var_show_the_traceback(cli, monkeypatch):
    with pytest.raises(ConfigError, match="continuous"):
        cli.main(["--env", "CartPole-v1", "--debug"])
    monkeypatch.setenv("DIPOD_DEBUG", "1")
    with pytest.raises(ConfigError, match="continuous"):
        cli.main(["--env", "CartPole-v1"])


def test_real_process_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "DIPOD_DEBUG": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--env", "CartPole-v1", "--output_dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
