"""The performance benchmark runs, and the release's sampler and ours agree token for token at temperature 0."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_release_generate_and_ours_give_identical_greedy_tokens():
    from bench_performance import generation_callables

    class Settings:
        hidden, layers, batch, prompt, gen, block = 64, 2, 2, 12, 16, 8

    fns = generation_callables(512, Settings)
    assert torch.equal(fns["release"](), fns["ours"]())


@pytest.mark.slow
def test_quick_benchmark_writes_its_tables(tmp_path):
    from bench_performance import main

    results = main(["--quick", "--only", "a", "--output_dir", str(tmp_path)])
    vocab, release_s, ours_s, speedup, release_mib, ours_mib, ratio, identical = results["a"]["rows"][0]
    assert identical == "yes" and speedup > 0 and release_mib > 0 and ours_mib > 0
    assert (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_block_benchmark_keeps_tokens_and_values_identical(tmp_path):
    """`make bench` part 2: the cached block sampler gives the uncached tokens; one forward gives the loop's values."""
    from bench_blocks import main

    results = main(["--quick", "--no_memory", "--output_dir", str(tmp_path)])
    assert all(row[-1] == "yes" and row[5] > 0 for row in results["a"]["rows"])
    assert all(row[-1] < 1e-4 and row[5] > 0 for row in results["b"]["rows"])
    assert (tmp_path / "results.json").exists() and (tmp_path / "blocks.png").exists()
