import importlib.util
import json
from pathlib import Path

import torch
from conftest import BagOfTokensLM, ContextFreeLM
from demo import digit_credit, main, reversal_examples

from dipod_trl.models import DiffusionLM
from dipod_trl.sft import masked_diffusion_sft, sft_loss

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_task_and_reward():
    pairs = reversal_examples(50, seed=0)
    assert pairs == reversal_examples(50, seed=0) and len({p for p, _ in pairs}) == 50
    assert all(p[:-1][::-1] == a and p.endswith(">") for p, a in pairs)
    noisy = reversal_examples(2000, seed=0, noise=0.3)
    wrong = sum(x != y for p, a in noisy for x, y in zip(p[:-1][::-1], a)) / (6 * 2000)
    assert abs(wrong - 0.3) < 0.02
    assert digit_credit("209183", "209183") == 1.0
    assert digit_credit(" 209180 ", "209183") == 5 / 6
    assert digit_credit("2091833", "209183") == 6 / 7  # an extra character costs credit
    assert digit_credit("", "209183") == 0.0


def test_sft_fits_its_data_and_ignores_padding():
    model = BagOfTokensLM(12, seed=0)
    ids = torch.tensor([[1, 5, 3, 7, 9, 2, 4, 4]]).repeat(16, 1)
    attn = torch.ones_like(ids)
    adapter = DiffusionLM(0)
    seeds = torch.arange(16)
    padded = attn.clone()
    padded[:, -1] = 0
    changed = ids.clone()
    changed[:, -1] = 11  # a padding position's target never enters the loss (the model ignores its inputs)
    context_free = ContextFreeLM(8, 12)
    assert sft_loss(context_free, adapter, ids, padded, 5, seeds) == sft_loss(context_free, adapter, changed, padded,
                                                                              5, seeds)
    losses = masked_diffusion_sft(model, adapter, ids, attn, 5, steps=60, batch_size=8, learning_rate=1e-2)
    assert sum(losses[-10:]) < 0.3 * sum(losses[:10]), losses


def test_demo_smoke_writes_report_plots_and_is_deterministic(tmp_path):
    threads = ["--threads", str(torch.get_num_threads())]
    results = main(["--smoke", "--output_dir", str(tmp_path / "a"), "--no_progress", *threads])
    report = (tmp_path / "a" / "report.md").read_text()
    for name in ("reward.png", "drift_gap.png"):
        assert (tmp_path / "a" / name).read_bytes()[:8] == PNG_MAGIC
    assert "| FPO |" in report and "| FPO+DiPOD |" in report and "drift gap" in report
    for method in ("FPO", "FPO+DiPOD"):
        assert [d["step"] for d in results[method]["drift"]] == [0, 1, 2]
        assert results[method]["reward"] and 0.0 <= results[method]["eval"]["reward"] <= 1.0
    again = main(["--smoke", "--output_dir", str(tmp_path / "b"), "--no_progress", *threads])
    assert again["summary"] == results["summary"]
    assert json.loads((tmp_path / "b" / "results.json").read_text())["summary"] == results["summary"]


def test_drift_study_runs_and_writes_its_table(tmp_path, capsys):
    path = Path(__file__).parents[1] / "examples" / "drift_study.py"
    spec = importlib.util.spec_from_file_location("drift_study", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    threads = ["--threads", str(torch.get_num_threads())]
    summaries = study.main(["--seeds", "2", "--smoke", "--both", "--output_dir", str(tmp_path), "--no_progress",
                            *threads])
    assert set(summaries) == {"default", "stress"} and all(len(v) == 2 for v in summaries.values())
    text = (tmp_path / "drift_study.md").read_text()
    assert "| default (2 seeds) |" in text and "| stress (2 seeds) |" in text and text.count("| FPO+DiPOD |") == 2
    assert "±" in capsys.readouterr().out
