"""Drop-in regressions (issue 20): a damaged trainer_state.json is refused by name, model cards cite DiPOD, the
DiPODTrainer docstring example runs as written, evaluate.py refuses what it cannot score, and native families give
PEFT default LoRA targets."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from tiny import build_tiny_model

from dipod_trl import DiPODConfig, DiPODTrainer
from dipod_trl.checkpoints import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"
TITLE = "Diffusion Policy Optimization without Drifting Apart"


def digit_reward(completions, **kwargs):
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def tiny_config(output_dir, **overrides) -> DiPODConfig:
    base = dict(output_dir=str(output_dir), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
                block_length=4, diffusion_steps=4, max_steps=1, learning_rate=1e-3, logging_steps=1, report_to="none",
                use_cpu=True, bf16=False, seed=0, disable_tqdm=True, save_strategy="steps", save_steps=1)
    return DiPODConfig(**{**base, **overrides})


def tiny_trainer(tokenizer, output_dir, **overrides) -> DiPODTrainer:
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"count {i}"}] for i in range(4)]})
    return DiPODTrainer(build_tiny_model(tokenizer), [digit_reward], args=tiny_config(output_dir, **overrides),
                        train_dataset=dataset, processing_class=tokenizer)


@pytest.fixture(scope="module")
def tiny_run(tokenizer, tmp_path_factory):
    """One step of a tiny run, saved: its output folder holds checkpoint-1 and the model card."""
    out = tmp_path_factory.mktemp("tiny-run")
    tiny_trainer(tokenizer, out).train()
    return out


# ------------------------------------------------------------------------------------------------------------------
# A damaged trainer_state.json: the same clear refusal as any damaged checkpoint file
@pytest.mark.parametrize(("damage", "error"), [
    pytest.param(lambda text: text[: len(text) // 2].encode(), "JSONDecodeError", id="truncated"),  # killed mid-save
    pytest.param(lambda text: b"\xff\xfe" + text.encode(), "UnicodeDecodeError", id="not-utf8"),
    pytest.param(lambda text: b"[1, 2]", "TypeError", id="not-a-trainer-state"),
])
@pytest.mark.parametrize("accept_incomplete", [False, True], ids=["strict", "accept-incomplete"])
def test_resume_from_damaged_trainer_state_is_refused_by_name(tiny_run, tokenizer, tmp_path, damage, error,
                                                              accept_incomplete):
    checkpoint = tmp_path / "checkpoint-1"
    shutil.copytree(tiny_run / "checkpoint-1", checkpoint)
    state = checkpoint / "trainer_state.json"
    state.write_bytes(damage(state.read_text(encoding="utf-8")))
    trainer = tiny_trainer(tokenizer, tmp_path / "resumed", max_steps=2,
                           resume_incomplete_checkpoint=accept_incomplete)
    pattern = rf"Cannot resume from {re.escape(str(checkpoint))}: {re.escape(str(state))} is damaged \({error}"
    with pytest.raises(CheckpointError, match=pattern + r".*Resume from an earlier checkpoint"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_resume_from_the_intact_checkpoint_still_works(tiny_run, tokenizer, tmp_path):
    checkpoint = tmp_path / "checkpoint-1"
    shutil.copytree(tiny_run / "checkpoint-1", checkpoint)
    trainer = tiny_trainer(tokenizer, tmp_path / "resumed", max_steps=2, save_strategy="no")
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 2


# ------------------------------------------------------------------------------------------------------------------
# Model cards cite DiPOD, through TRL's `_paper`
def test_model_card_cites_dipod_not_grpo(tiny_run):
    card = (tiny_run / "README.md").read_text(encoding="utf-8")
    assert "This model was trained with DiPOD" in card
    assert "Cite DiPOD as:" in card and TITLE in card and "https://github.com/Astro-Eric/DiPOD-release" in card
    assert "DeepSeekMath" not in card and "2402.03300" not in card  # GRPO's paper, TRL's default for GRPOTrainer


# ------------------------------------------------------------------------------------------------------------------
# The DiPODTrainer docstring example
def docstring_example() -> str:
    match = re.search(r"```python\n(.*?)```", DiPODTrainer.__doc__, re.S)
    assert match, "DiPODTrainer's docstring has no ```python example"
    return textwrap.dedent(match.group(1))


def test_docstring_example_needs_no_remote_code_and_names_real_fields():
    code = docstring_example()
    assert "trust_remote_code" not in code
    fields = {f.name for f in DiPODConfig.__dataclass_fields__.values()}
    calls = [node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call)
             and getattr(node.func, "id", None) == "DiPODConfig"]
    assert calls and all(kw.arg in fields for call in calls for kw in call.keywords)


@pytest.mark.skipif(not (SHARED / "llada-tiny").is_dir(), reason="../shared/models/llada-tiny is not available")
def test_docstring_example_runs(tmp_path, monkeypatch):
    """As written, with the tiny LLaDA checkpoint for the Hub id and CPU-sized lengths (TRL defaults to bf16, which
    needs `use_cpu=True` on a machine without a GPU)."""
    code = docstring_example()
    hub_id = '"GSAI-ML/LLaDA-8B-Instruct"'
    assert hub_id in code and "max_completion_length=256" in code
    code = code.replace(hub_id, repr(str(SHARED / "llada-tiny")))
    code = code.replace("max_completion_length=256", "max_completion_length=32, use_cpu=True, max_steps=2")
    monkeypatch.chdir(tmp_path)  # output_dir="llada-dipod" is relative
    namespace: dict = {}
    exec(compile(code, "DiPODTrainer docstring", "exec"), namespace)  # noqa: S102 (our own docstring)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2 and trainer.family is not None and trainer.family.name == "llada"
    assert not trainer.args.trust_remote_code


# ------------------------------------------------------------------------------------------------------------------
# examples/evaluate.py --generations: refuse what cannot be scored, name the file in every read error
def load_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "examples" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


ITEMS = [
    {"question": "q", "generations": "<answer>18</answer>", "ground_truth": 18.0},
    {"question": "q", "generations": "<answer>7</answer>"},  # no ground_truth at all
    {"question": "q", "generations": "<answer>7</answer>", "ground_truth": None},
]


def test_items_without_ground_truth_are_refused(tmp_path, capsys):
    path = write(tmp_path / "gen.json", {"generations": ITEMS})
    assert load_cli().main(["--generations", str(path), "--task", "gsm8k"]) == 2
    [line] = error_lines(capsys)
    assert str(path) in line and "2 of 3 items have no ground_truth (items 1, 2)" in line and "--skip_missing" in line


def test_skip_missing_skips_counts_and_says_so(tmp_path, capsys):
    path = write(tmp_path / "gen.json", {"generations": ITEMS})
    out = tmp_path / "report.json"
    argv = ["--generations", str(path), "--task", "gsm8k", "--skip_missing", "--output", str(out)]
    assert load_cli().main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["n"] == 1 and summary["skipped_missing_ground_truth"] == 2 and summary["accuracy"] == 1.0
    assert "skipped 2 of 3 items without ground_truth" in captured.err
    assert [v["index"] for v in json.loads(out.read_text(encoding="utf-8"))["items"]] == [0]
    only_missing = write(tmp_path / "none.json", ITEMS[1:])
    assert load_cli().main(["--generations", str(only_missing), "--task", "gsm8k", "--skip_missing"]) == 2
    [line] = error_lines(capsys)
    assert str(only_missing) in line and "none of the 2 items has a ground_truth" in line


def test_countdown_truth_in_the_question_is_not_missing(tmp_path, capsys):
    item = {"question": "Numbers: [1, 2, 3]\nTarget: 6", "generations": "<answer>1 + 2 + 3</answer>"}
    path = write(tmp_path / "countdown.json", [item])
    assert load_cli().main(["--generations", str(path), "--task", "countdown"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0


@pytest.mark.parametrize("data", [{"generations": []}, []])
def test_empty_generations_are_refused(tmp_path, capsys, data):
    path = write(tmp_path / "empty.json", data)
    assert load_cli().main(["--generations", str(path), "--task", "gsm8k"]) == 2
    [line] = error_lines(capsys)
    assert str(path) in line and "empty" in line


def test_read_errors_name_the_file(tmp_path, capsys):
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(json.dumps({"generations": [{"question": "caf\u00e9", "ground_truth": 1}]},
                                  ensure_ascii=False).encode("latin-1"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"generations": [', encoding="utf-8")
    for path, kind in ((latin1, "UnicodeDecodeError"), (broken, "JSONDecodeError"), (tmp_path / "absent.json", "")):
        assert load_cli().main(["--generations", str(path), "--task", "gsm8k"]) == 2
        [line] = error_lines(capsys)
        assert str(path) in line and kind in line, line


# ------------------------------------------------------------------------------------------------------------------
# Native families give PEFT their LoRA preset as default targets
@pytest.mark.parametrize("name", ["llada-tiny", "sdar-tiny"])
def test_get_peft_model_with_default_lora_config(name):
    if not (SHARED / name).is_dir():
        pytest.skip(f"../shared/models/{name} is not available")
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from dipod_trl.families import family_of_model
    from dipod_trl.models import load_diffusion_model

    model = load_diffusion_model(str(SHARED / name))
    family = family_of_model(model)
    peft_model = get_peft_model(model, LoraConfig())
    adapted = {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == set(family.lora_target_modules)
    assert sum(isinstance(m, LoraLayer) for m in peft_model.modules()) == 2 * len(family.lora_target_modules)
    ids = torch.tensor([[2, 3, 4, 5]])
    assert peft_model(input_ids=ids).logits.shape[:2] == (1, 4)


def test_presets_are_registered_without_touching_peft_entries():
    """Every list preset is registered under its family's model_type; PEFT's own entries are left alone."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as targets

    from dipod_trl.families import FAMILIES

    for family in FAMILIES:
        preset = family.native_lora_targets(None)
        if isinstance(preset, str):  # a regex preset (DiffusionGemma) is not registered
            assert targets.get(family.config_class.model_type) != preset
        else:
            assert targets[family.config_class.model_type] == list(preset)
    assert targets["llama"] == ["q_proj", "v_proj"]


# ---------------------------------------------------------------------------------------- all-masked batch, outside
@pytest.mark.parametrize("estimator", ["elbo", "spg", "one_step"])
def test_a_batch_whose_completions_are_all_masked_gives_loss_zero(tmp_path, tokenizer, estimator):
    """Every completion truncated and `mask_truncated_completions=True`: loss 0 and zero gradients, as TRL does
    (the ELBO estimators crashed in backward: nothing required grad)."""
    model = build_tiny_model(tokenizer, "modernbert")
    args = tiny_config(tmp_path, likelihood_estimator=estimator, mask_truncated_completions=True, stop_at_eos=False,
                       max_grad_norm=0.0, weight_decay=0.0, save_strategy="no")
    eos = tokenizer.eos_token_id
    with torch.no_grad():  # the model never proposes EOS: every completion runs to the end of the canvas
        model.get_output_embeddings().bias[eos] = -1e4
    trainer = DiPODTrainer(model, [digit_reward], args=args, train_dataset=Dataset.from_dict(
        {"prompt": [f"q{i}:" for i in range(8)]}), processing_class=tokenizer)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(loss == 0.0 for loss in losses)


def test_per_token_logps_work_outside_a_rollout_with_fresh_seeds(tmp_path, tokenizer):
    """TRL's signature, called by user code outside a rollout: fresh mask seeds from the global RNG (documented)."""
    trainer = tiny_trainer(tokenizer, tmp_path)
    ids = torch.randint(5, 50, (3, 12))
    mask = torch.ones_like(ids)
    torch.manual_seed(0)
    first, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 8)
    torch.manual_seed(0)
    again, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 8)
    assert first.shape == (3, 8) and torch.isfinite(first).all() and (first != 0).any()
    assert torch.equal(first, again)  # the seeds come from torch's RNG, so a seeded call is reproducible


@pytest.mark.parametrize("estimator", ["elbo", "spg", "one_step"])
def test_entropy_bonus_under_the_elbo_estimators_and_the_logged_terms_add_up(tmp_path, tokenizer, estimator):
    """entropy_coef under FPO/SPG: TRL's L = L_policy - coef * H with H the mean entropy at the ELBO's masked
    positions, TRL's metrics logged, and policy_loss - coef * entropy + the DiPOD term = the logged loss (also under
    one_step, where TRL computes the first two and the DiPOD term is added after)."""
    coef = 0.5
    trainer = tiny_trainer(tokenizer, tmp_path, likelihood_estimator=estimator, entropy_coef=coef, max_steps=2,
                           save_strategy="no")
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "entropy" in h]
    assert len(logs) == 2
    for h in logs:
        assert h["entropy"] > 0 and h["entropy_coef"] == coef
        assert h["loss"] == pytest.approx(h["policy_loss"] - coef * h["entropy"] + h["dipod/regularizer"], abs=1e-3)
