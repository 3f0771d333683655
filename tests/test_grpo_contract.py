"""Every field of the installed TRL's `GRPOConfig` is honoured, mapped or refused by name, per likelihood estimator
(`dipod_trl.grpo_contract`); refusals are real, and the README's table is the contract's own output."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import pytest
from datasets import Dataset
from tiny import build_tiny_model
from trl import GRPOConfig

from dipod_trl import DiPODConfig, DiPODTrainer
from dipod_trl.config import LIKELIHOOD_ESTIMATORS
from dipod_trl.grpo_contract import (
    CONTRACT,
    ESTIMATORS,
    GROUPS,
    REFUSED,
    STATUSES,
    classify,
    contract_table,
    counts,
    grpo_defaults,
    readme_table,
)

ROOT = Path(__file__).resolve().parents[1]
GRPO_FIELDS = [f.name for f in dataclasses.fields(GRPOConfig)]

# A sensible non-default value of every field that some estimator refuses.
NON_DEFAULT = {
    "min_p": 0.1,
    "repetition_penalty": 1.1,
    "cache_implementation": "static",
    "use_vllm": True,
    "vllm_mode": "server",
    "vllm_model_impl": "transformers",
    "vllm_enable_sleep_mode": True,
    "vllm_structured_outputs_regex": r"\d+",
    "vllm_server_base_url": "http://localhost:8000",
    "vllm_server_host": "127.0.0.1",
    "vllm_server_port": 8001,
    "vllm_server_timeout": 60.0,
    "vllm_group_port": 51217,
    "vllm_gpu_memory_utilization": 0.5,
    "vllm_max_model_length": 1024,
    "vllm_tensor_parallel_size": 2,
    "vllm_importance_sampling_correction": False,
    "vllm_importance_sampling_mode": "token_truncate",
    "vllm_importance_sampling_clip_max": 2.0,
    "vllm_importance_sampling_clip_min": 0.5,
    "vllm_importance_sampling_cap": 2.0,
    "use_transformers_continuous_batching": True,
    "use_transformers_paged": True,
    "transformers_continuous_batching_config": {"max_batch_tokens": 256},
    "max_tool_calling_iterations": 3,
    "epsilon": 0.3,
    "epsilon_high": 0.28,
    "delta": 1.5,
    "loss_type": "grpo",
    "importance_sampling_level": "sequence",
    "off_policy_mask_threshold": 0.5,
    "use_bias_correction_kl": False,
    "sapo_temperature_neg": 1.2,
    "sapo_temperature_pos": 0.9,
    "vespo_k_pos": 1.5,
    "vespo_lambda_pos": 2.5,
    "vespo_k_neg": 2.5,
    "vespo_lambda_neg": 1.5,
    "top_entropy_quantile": 0.2,
    "entropy_coef": 0.01,
    "use_adaptive_entropy": True,
    "entropy_coef_min": 0.001,
    "entropy_coef_max": 0.5,
    "entropy_coef_delta": 0.01,
    "entropy_target": 0.5,
    "auto_find_batch_size": True,
}

REFUSED_CASES = [(f, est) for f in GRPO_FIELDS for est in ESTIMATORS
                 if f in CONTRACT and CONTRACT[f][est].status == REFUSED]
ONE_STEP_ONLY = [f for f in GRPO_FIELDS if f in CONTRACT and CONTRACT[f]["elbo"].status == REFUSED
                 and CONTRACT[f]["one_step"].status != REFUSED]


def make_config(tmp_path, **overrides) -> DiPODConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecated fields warn before they are refused
        return DiPODConfig(**{"output_dir": str(tmp_path), "max_completion_length": 16, "use_cpu": True,
                              "report_to": "none", **overrides})


def test_every_grpo_field_is_classified_for_every_estimator():
    """A field a new TRL release adds fails here until `dipod_trl.grpo_contract` classifies it."""
    assert ESTIMATORS == LIKELIHOOD_ESTIMATORS
    unclassified = []
    for name in GRPO_FIELDS:
        for estimator in ESTIMATORS:
            try:
                entry = classify(name, estimator)
            except KeyError:
                unclassified.append((name, estimator))
                continue
            assert entry.status in STATUSES, (name, estimator)
            if entry.status == REFUSED:
                assert entry.how, (name, estimator)  # the reason and the alternative
    assert not unclassified, f"GRPOConfig fields not classified in dipod_trl.grpo_contract: {unclassified}"
    total = counts()
    assert all(sum(c.values()) == len(GRPO_FIELDS) for c in total.values()), total


def test_explicit_entries_name_existing_fields():
    stale = [name for _, group in GROUPS for name in group if name not in GRPO_FIELDS]
    assert not stale, f"classified but not a GRPOConfig field of the installed TRL: {stale}"


def test_every_refused_field_has_a_test_value():
    defaults = grpo_defaults()
    missing = sorted({f for f, _ in REFUSED_CASES} - set(NON_DEFAULT))
    assert not missing, f"add a non-default value to NON_DEFAULT for {missing}"
    assert all(NON_DEFAULT[f] != defaults[f] for f in NON_DEFAULT)


@pytest.mark.parametrize(("field", "estimator"), REFUSED_CASES)
def test_refused_field_set_is_refused_by_name(tmp_path, field, estimator):
    with pytest.raises(ValueError, match=re.escape(field)):
        make_config(tmp_path, likelihood_estimator=estimator, **{field: NON_DEFAULT[field]})


@pytest.mark.parametrize("field", ONE_STEP_ONLY)
def test_one_step_accepts_the_fields_it_honours(tmp_path, field):
    config = make_config(tmp_path, likelihood_estimator="one_step", **{field: NON_DEFAULT[field]})
    assert getattr(config, field) == NON_DEFAULT[field]


def test_accepted_values_and_partial_fields(tmp_path):
    assert make_config(tmp_path, router_aux_loss_coef=0.0).router_aux_loss_coef == 0.0  # disables it: honoured
    for estimator in ("elbo", "spg"):  # the clip range is FPO's (sequence ratio); SPG accepts it left at default
        make_config(tmp_path, likelihood_estimator=estimator)
    make_config(tmp_path, epsilon=0.3, epsilon_high=0.28, delta=1.5)
    assert make_config(tmp_path, generation_kwargs={}).generation_kwargs == {}
    diffusion_gemma = {"t_min": 0.1}  # a setting of DiffusionGemma's own sampler
    assert make_config(tmp_path, generation_kwargs=diffusion_gemma).generation_kwargs == diffusion_gemma
    with pytest.raises(ValueError, match=r"generation_kwargs key\(s\) \['num_beams', 'suppress_tokens'\]"):
        make_config(tmp_path, generation_kwargs={"num_beams": 2, "t_min": 0.1, "suppress_tokens": [3]})


@pytest.mark.parametrize("estimator", ["elbo", "spg"])
def test_loss_options_under_the_elbo_estimators(tmp_path, estimator):
    """loss_type aggregates the sequence losses (TRL's aggregations accepted, the other objectives refused by name);
    importance_sampling_level and off_policy_mask_threshold need FPO's ratio; use_bias_correction_kl is read."""
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
        assert make_config(tmp_path, likelihood_estimator=estimator, loss_type=loss_type).loss_type == loss_type
    assert make_config(tmp_path, likelihood_estimator=estimator).loss_type is None  # sequence_aggregation decides
    for loss_type in ("cispo", "sapo", "vespo"):
        with pytest.raises(ValueError, match=f"loss_type='{loss_type}' is not honoured"):
            make_config(tmp_path, likelihood_estimator=estimator, loss_type=loss_type)
    with pytest.raises(ValueError, match="both set how the sequence losses are aggregated"):
        make_config(tmp_path, likelihood_estimator=estimator, loss_type="dr_grpo", sequence_aggregation="length")
    assert not make_config(tmp_path, likelihood_estimator=estimator, use_bias_correction_kl=False).use_bias_correction_kl
    ratio_knobs = {"importance_sampling_level": "sequence", "off_policy_mask_threshold": 0.5}
    for name, value in ratio_knobs.items():
        if estimator == "elbo":
            assert getattr(make_config(tmp_path, **{name: value}), name) == value
        else:
            with pytest.raises(ValueError, match=name):
                make_config(tmp_path, likelihood_estimator="spg", **{name: value})


def test_one_step_loss_type_defaults_to_trls(tmp_path):
    assert make_config(tmp_path, likelihood_estimator="one_step").loss_type == GRPOConfig.loss_type == "dapo"
    assert make_config(tmp_path, likelihood_estimator="one_step", loss_type="sapo").loss_type == "sapo"
    # one_step's loss_type is TRL's token loss; sequence_aggregation still weights its DiPOD term
    config = make_config(tmp_path, likelihood_estimator="one_step", loss_type="bnpo", sequence_aggregation="length")
    assert (config.loss_type, config.sequence_aggregation) == ("bnpo", "length")


def test_every_refusal_of_a_config_is_reported_at_once(tmp_path):
    with pytest.raises(ValueError, match="2 settings are refused") as error:
        make_config(tmp_path, loss_type="sapo", repetition_penalty=1.1)
    message = str(error.value)
    assert "loss_type='sapo'" in message and "repetition_penalty=1.1" in message and "one_step" in message


def test_readme_table_is_the_contract_table():
    table = readme_table((ROOT / "README.md").read_text(encoding="utf-8"))
    assert table is not None, "README.md lost its generated GRPOConfig table"
    assert table == contract_table(), ("README.md's GRPOConfig table is stale: run python -c \"from "
                                       "dipod_trl.grpo_contract import update_readme; update_readme('README.md')\"")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.index("## GRPOConfig, field by field") < readme.index("## Supported models")


def digit_reward(completions, **kwargs):
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def test_one_step_honours_top_entropy_quantile(tmp_path, tokenizer):
    """Not refused under one_step: TRL's entropy mask over the one-step forward's entropies changes the loss."""
    args = make_config(tmp_path, likelihood_estimator="one_step", top_entropy_quantile=0.2,
                       per_device_train_batch_size=8, num_generations=4, max_completion_length=8, block_length=4,
                       diffusion_steps=4, max_steps=1, bf16=False, seed=0, save_strategy="no", disable_tqdm=True)
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"count {i}"}] for i in range(8)]})
    trainer = DiPODTrainer(build_tiny_model(tokenizer), [digit_reward], args=args, train_dataset=dataset,
                           processing_class=tokenizer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    losses = {}
    for quantile in (0.2, 1.0, 0.2):
        trainer.top_entropy_quantile = quantile
        losses.setdefault(quantile, []).append(trainer.compute_loss(trainer.model, inputs).item())
    assert losses[0.2][0] == pytest.approx(losses[0.2][1])  # deterministic: the masks come from the rollout's seeds
    assert losses[0.2][0] != pytest.approx(losses[1.0][0])
    assert trainer._metrics["train"]["entropy"] and all(e > 0 for e in trainer._metrics["train"]["entropy"])
