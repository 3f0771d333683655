"""Tests for generation re-scoring: dipod_trl.evaluation (over any Task) and the examples/evaluate.py CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dipod_trl.evaluation import score_generations
from dipod_trl.tasks.countdown import countdown_truth
from dipod_trl.tasks.sudoku import sudoku_puzzle

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIPOD_SHARED_DATA", ROOT.parent / "shared" / "data"))
GENERATIONS = SHARED / "llada_generations"


def load_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "examples" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def item(question: str, generation: str, truth) -> dict:
    return {"question": question, "generations": generation, "ground_truth": truth}


def test_score_generations_per_task():
    gsm = [item("q", "<answer>\n18\n</answer><|eot_id|>", 18.0), item("q", "\\boxed{17}", 18.0)]
    assert score_generations("gsm8k", gsm)["accuracy"] == 0.5
    math = [item("q", "<answer>\\boxed{\\frac{2}{4}}</answer>", "\\frac{1}{2}")]
    assert score_generations("math500", math)["accuracy"] == 1.0
    countdown = [
        item("Numbers: [49, 55, 53]\nTarget: 51", "<answer>\\boxed{49 + 55 - 53}</answer>", [[49, 55, 53], 51]),
        item("Numbers: [1, 2, 3]\nTarget: 6", "<answer>1 + 2 + 3</answer>", None),  # truth from the question
        item(
            "Numbers: [1, 2, 3]\nTarget: 6", "<answer>__import__('os')</answer>", {"numbers": [1, 2, 3], "target": 6}
        ),
    ]
    report = score_generations("countdown", countdown)
    assert report["correct"] == 2 and [v["correct"] for v in report["items"]] == [True, True, False]
    solution = "4321124334122134"
    sparse = solution[:2] + "0" * 12 + solution[14:]
    sudoku = [
        item("Solve the following Sudoku puzzle: 4320004330100004\n", f"<answer>{solution}</answer>", solution),
        item(f"Solve the following Sudoku puzzle: {sparse}\n", f"<answer>{sparse}</answer>", solution),
    ]
    report = score_generations("sudoku", sudoku)
    assert report["empty_cells"] == 8 + 12 and report["correct_cells"] == 8
    assert report["cell_accuracy"] == report["accuracy"] == 0.4 and report["exact_solve_rate"] == 0.5  # micro average
    with pytest.raises(ValueError, match="unknown task"):
        score_generations("chess", [])


def test_ground_truth_helpers():
    assert countdown_truth({"ground_truth": [[1, 2], 3]}) == ([1, 2], 3)
    assert sudoku_puzzle({"puzzle": "1234341221434320", "question": ""}) == "1234341221434320"
    with pytest.raises(ValueError, match="sudoku item"):
        sudoku_puzzle({"question": "no grid"})


def test_cli_rescoring(tmp_path, capsys):
    cli = load_cli()
    path = tmp_path / "gen.json"
    items = [item("q", "<answer>18</answer>", 18.0), item("q", "<answer>7</answer>", 8.0), item("q", "", 1.0)]
    path.write_text(json.dumps({"generations": items}), encoding="utf-8")
    out = tmp_path / "out" / "verdicts.json"
    assert cli.main(["--generations", str(path), "--task", "gsm8k", "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 3 and summary["correct"] == 1 and summary["accuracy"] == pytest.approx(1 / 3)
    report = json.loads(out.read_text(encoding="utf-8"))
    assert [v["correct"] for v in report["items"]] == [True, False, False] and report["items"][1]["extracted"] == "7"
    bad = tmp_path / "bad.json"
    bad.write_text('{"other": 1}', encoding="utf-8")
    assert cli.main(["--generations", str(bad), "--task", "gsm8k"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["--task", "gsm8k"])


# (task, items, items judged correct) for LLaDA-8B-Instruct, 256 tokens: the README's table (GSM8K 80.0 %, MATH-500
# 34.5 %, Countdown 18.9 %, within the d1 paper's ranges), pinned so refactors of parsing and tasks keep every verdict
EXPECTED = [("gsm8k", 205, 164), ("math500", 84, 29), ("countdown", 37, 7), ("sudoku", 37, 0)]


@pytest.mark.parametrize(("task", "n", "correct"), EXPECTED)
def test_rescoring_shared_generations(task, n, correct, capsys):
    path = GENERATIONS / f"{task}_instruct_256_128_0.json"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    assert load_cli().main(["--generations", str(path), "--task", task]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == n and summary["correct"] == correct and summary["math_verify_timeouts"] == 0, summary
    assert summary["accuracy"] == pytest.approx(correct / n if task != "sudoku" else 20 / 296)
    if task == "sudoku":  # d1's metric: cell accuracy over all blanks (6.8 %), 0 puzzles fully solved
        assert summary["empty_cells"] == 296 and summary["correct_cells"] == 20 and summary["exact_solve_rate"] == 0



def test_generation_mode_writes_generations_and_accuracy(tmp_path, tiny_model_dir):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, str(root / "examples/evaluate.py"), "--task", "gsm8k", "--model", tiny_model_dir,
         "--dataset_path", str(root / "recipes/gsm8k/tiny_gsm8k.jsonl"), "--limit", "3", "--gen_length", "8",
         "--block_length", "4", "--batch_size", "2", "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n"] == 3 and 0.0 <= summary["accuracy"] <= 1.0
    report = json.loads(out.read_text())
    assert len(report["generations"]) == 3 and report["generations"][0]["ground_truth"] == "7"
