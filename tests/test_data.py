"""Tests for the task loaders and offline generators (dipod_trl.tasks.*) and dipod_trl.data's file reading."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import pytest

from dipod_trl import data
from dipod_trl.tasks.countdown import countdown_score, countdown_solutions, generate_countdown, load_countdown
from dipod_trl.tasks.gsm8k import load_gsm8k
from dipod_trl.tasks.math500 import load_math500
from dipod_trl.tasks.sudoku import (
    all_sudoku_4x4,
    count_sudoku_solutions,
    generate_sudoku_4x4,
    is_valid_sudoku_solution,
    load_sudoku,
    sudoku_cell_score,
)

SHARED = Path(os.environ.get("DIPOD_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def assert_prompt(row: dict, *needles: str) -> None:
    (message,) = row["prompt"]
    assert message["role"] == "user" and "<reasoning>" in message["content"] and "<answer>" in message["content"]
    for needle in needles:
        assert needle in message["content"]


# ----------------------------------------------------------------------------- Sudoku


def test_all_sudoku_grids():
    grids = all_sudoku_4x4()
    assert len(grids) == len(set(grids)) == 288
    assert all(is_valid_sudoku_solution(g) for g in grids)
    assert count_sudoku_solutions("0" * 16) == 288


def test_generate_sudoku_valid_unique_and_seeded():
    ds = generate_sudoku_4x4(60, seed=3, min_givens=4, max_givens=9)
    assert ds.column_names == ["prompt", "puzzle", "solution"]
    for row in ds:
        puzzle, solution = row["puzzle"], row["solution"]
        assert is_valid_sudoku_solution(solution, puzzle)
        assert count_sudoku_solutions(puzzle) == 1
        assert 4 <= 16 - puzzle.count("0") <= 16 and "0" in puzzle
        assert_prompt(row, puzzle)
        assert sudoku_cell_score(f"<answer>{solution}</answer>", puzzle, solution) == 1.0
    assert generate_sudoku_4x4(60, seed=3, min_givens=4, max_givens=9).to_list() == ds.to_list()
    assert generate_sudoku_4x4(60, seed=4, min_givens=4, max_givens=9)["puzzle"] != ds["puzzle"]
    assert sum(16 - p.count("0") <= 9 for p in ds["puzzle"]) > 40  # the removal mostly reaches its target
    with pytest.raises(ValueError, match="min_givens"):
        generate_sudoku_4x4(1, min_givens=2)


def test_load_sudoku_csv_and_default(tmp_path):
    csv_file = tmp_path / "s.csv"
    csv_file.write_text("Puzzle,Solution\n4320004330100004,4321124334122134\n", encoding="utf-8")
    ds = load_sudoku(csv_file)
    assert ds[0]["puzzle"] == "4320004330100004" and ds[0]["solution"] == "4321124334122134"
    assert_prompt(ds[0], "Solve the following Sudoku puzzle: 4320004330100004")
    assert len(load_sudoku(num_samples=5, seed=1)) == 5
    bad = tmp_path / "bad.csv"
    bad.write_text("Puzzle,Solution\n123,4321124334122134\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 0 is not a 4x4 sudoku"):
        load_sudoku(bad)


# ----------------------------------------------------------------------------- Countdown


def test_generate_countdown_reachable_and_seeded():
    ds = generate_countdown(40, seed=7)
    assert ds.column_names == ["prompt", "numbers", "target"]
    for row in ds:
        assert len(row["numbers"]) == 3 and all(1 <= n <= 100 for n in row["numbers"]) and 1 <= row["target"] <= 100
        witness = countdown_solutions(row["numbers"])[Fraction(row["target"])]
        assert countdown_score(f"<answer>{witness}</answer>", row["numbers"], row["target"]) == 1.0
        assert_prompt(row, f"Numbers: {row['numbers']}\nTarget: {row['target']}")
    assert generate_countdown(40, seed=7).to_list() == ds.to_list()
    assert generate_countdown(40, seed=8)["numbers"] != ds["numbers"]


def test_countdown_solutions_small():
    values = countdown_solutions([2, 3])
    assert set(values) == {5, -1, 1, 6, Fraction(2, 3), Fraction(3, 2)}


def test_load_countdown_formats(tmp_path):
    d1_style = write_jsonl(tmp_path / "a.jsonl", [{"input": "30,100,93", "output": "23"}])
    hub_style = write_jsonl(
        tmp_path / "b.jsonl", [{"nums": [1, 2, 3], "target": 6}, {"nums": [1, 2, 3, 4], "target": 10}]
    )
    assert load_countdown(d1_style).to_list()[0] | {"prompt": None} == {
        "prompt": None,
        "numbers": [30, 100, 93],
        "target": 23,
    }
    assert len(load_countdown(hub_style)) == 1
    assert len(load_countdown(hub_style, num_count=None)) == 2
    with pytest.raises(ValueError, match="nums / numbers"):
        load_countdown(write_jsonl(tmp_path / "c.jsonl", [{"target": 3}]))


# ----------------------------------------------------------------------------- GSM8K / MATH / errors


def test_load_gsm8k_local(tmp_path):
    path = write_jsonl(
        tmp_path / "g.jsonl",
        [{"question": "1+1?", "answer": "1+1=2\n#### 2"}, {"question": "Big?", "answer": "#### 1,200"}],
    )
    ds = load_gsm8k("test", path)
    assert ds.column_names == ["prompt", "question", "answer"]
    assert ds["answer"] == ["2", "1200"]
    assert_prompt(ds[0], "1+1?", "\\boxed{}")
    with pytest.raises(ValueError, match="no answer / ground_truth column"):
        load_gsm8k("test", write_jsonl(tmp_path / "h.jsonl", [{"question": "q"}]))


def test_load_math500_local(tmp_path):
    rows = [{"problem": "p1", "answer": "\\frac{1}{4}"}, {"question": "p2", "solution": "so \\boxed{\\sqrt{2}}."}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    ds = load_math500(path)
    assert ds.column_names == ["prompt", "problem", "answer"]
    assert ds["answer"] == ["\\frac{1}{4}", "\\sqrt{2}"]


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_gsm8k("test", tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read"):
        load_gsm8k("test", broken)
    weird = tmp_path / "data.txt"
    weird.write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_math500(weird)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="no rows"):
        load_countdown(empty)


def test_default_sources_are_hub_ids(monkeypatch):
    calls = []

    def fake_hub(hub_id, config, split):
        calls.append((hub_id, config, split))
        return [{"question": "q", "answer": "#### 3", "problem": "p", "nums": [1, 2], "target": 3}]

    monkeypatch.setattr(data, "hub_records", fake_hub)
    assert load_gsm8k("test")["answer"] == ["3"]
    assert load_math500()["answer"] == ["#### 3"]
    assert load_countdown(num_count=2)["numbers"] == [[1, 2]]
    assert calls == [
        ("openai/gsm8k", "main", "test"),
        ("HuggingFaceH4/MATH-500", None, "test"),
        ("Jiayi-Pan/Countdown-Tasks-3to4", None, "train"),
    ]


# ----------------------------------------------------------------------------- shared data (skipped when absent)


@pytest.mark.skipif(not (SHARED / "gsm8k" / "test.jsonl").is_file(), reason="shared data not available")
def test_shared_files_load():
    gsm = load_gsm8k("test", SHARED / "gsm8k" / "test.jsonl")
    assert len(gsm) == 1319 and gsm[0]["answer"] == "18"
    cd = load_countdown(SHARED / "countdown" / "countdown_cd3_test.jsonl")
    assert len(cd) == 256 and all(Fraction(t) in countdown_solutions(n) for n, t in zip(cd["numbers"], cd["target"]))
    sudoku = load_sudoku(SHARED / "sudoku" / "test_sudoku_split_new.csv")
    assert len(sudoku) == 256 and all(count_sudoku_solutions(p) == 1 for p in sudoku["puzzle"])
