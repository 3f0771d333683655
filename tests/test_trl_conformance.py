"""TRL's own `GRPOTrainer` tests (TRL's `tests/test_grpo_trainer.py`), ported the way a user ports a script.

`GRPOConfig`/`GRPOTrainer` become `DiPODConfig`/`DiPODTrainer`; the shared tiny LLaDA and Dream checkpoints stand in
for TRL's tiny autoregressive models, a local copy of TRL's `zen` prompts for the Hub dataset, and tiny randomly
initialised sequence classifiers for TRL's tiny reward models. Each test keeps TRL's name and TRL's assertions (the
run trains, every trainable parameter changes, the metrics are logged). The only other change, for CPU time: three
optimizer steps (`max_steps=3`) instead of three epochs, where a test does not depend on the epochs. Tests that
cannot apply to a diffusion LM (vLLM, Liger, tools, environments, vision, continuous batching) are not ported; where DiPOD refuses a setting by name, the port asserts the refusal, and where
an option's meaning is mapped (e.g. `loss_type` under FPO), the port runs it under every estimator it applies to.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict, IterableDatasetDict
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForSequenceClassification,
    Qwen2Config,
    Qwen2ForSequenceClassification,
)

from dipod_trl import DiPODConfig, DiPODTrainer
from dipod_trl.models import load_diffusion_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
LLADA, DREAM = str(SHARED / "llada-tiny"), str(SHARED / "dream-tiny")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/models is not available")]

# TRL's `trl-internal-testing/zen` prompts (the opening words of PEP 20's aphorisms)
ZEN_TRAIN = ["Beautiful is better than", "Explicit is", "Simple is better", "Complex", "Flat is better than",
             "Sparse is better", "Readability", "Special cases aren't special", "Although practicality beats",
             "Errors should never", "Unless explicitly", "In the face of ambiguity, refuse", "There should be one",
             "Although that way may not be", "Now is better than", "Although never is often", "If the implementation"]
ZEN_TEST = ["If the implementation is easy", "Namespaces are one"]


def zen(config: str = "standard_prompt_only", split: str | None = "train", streaming: bool = False):
    """The local `zen` dataset: `standard_prompt_only` or `conversational_prompt_only`, one split or both."""
    def build(prompts):
        rows = prompts if config == "standard_prompt_only" else [[{"role": "user", "content": p}] for p in prompts]
        data = Dataset.from_dict({"prompt": rows})
        return data.to_iterable_dataset() if streaming else data

    if split is None:
        return DatasetDict({"train": build(ZEN_TRAIN), "test": build(ZEN_TEST)})
    return build(ZEN_TRAIN if split == "train" else ZEN_TEST)


def _classifier(path: Path, tokenizer, arch: str) -> str:
    torch.manual_seed(0)
    common = dict(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, intermediate_size=32, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    model_class, config_class = {"qwen2": (Qwen2ForSequenceClassification, Qwen2Config),
                                 "llama": (LlamaForSequenceClassification, LlamaConfig)}[arch]
    model_class(config_class(**common)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> str:
    """Stands in for `trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5` (LLaDA's tokenizer)."""
    return _classifier(tmp_path_factory.mktemp("qwen2-rm"), AutoTokenizer.from_pretrained(LLADA), "qwen2")


@pytest.fixture(scope="module")
def other_reward_model(tmp_path_factory) -> str:
    """Stands in for TRL's tiny Llama / Qwen3 reward models: another architecture and another tokenizer (Dream's)."""
    return _classifier(tmp_path_factory.mktemp("llama-rm"), AutoTokenizer.from_pretrained(DREAM), "llama")


def grpo_args(tmp_path, **overrides) -> DiPODConfig:
    """TRL's test arguments: lr 0.1, batch 3, 3 generations, 8 completion tokens (and 3 steps)."""
    return DiPODConfig(**{"output_dir": str(tmp_path), "learning_rate": 0.1, "per_device_train_batch_size": 3,
                          "num_generations": 3, "max_completion_length": 8, "max_steps": 3, "report_to": "none",
                          "use_cpu": True, **overrides})


def len_reward(completions, **kwargs):
    """Rewards longer completions."""
    return [float(len(completion)) for completion in completions]


def unique_letters_reward(completions, **kwargs):
    """Rewards completions with more unique letters."""
    return [float(len(set(completion))) for completion in completions]


def train_and_check(trainer: DiPODTrainer, frozen: set[str] = frozenset()) -> None:
    """TRL's check: training logs a train loss, and every trainable parameter changes (those in `frozen` do not)."""
    before = {n: p.clone() for n, p in trainer.model.named_parameters() if p.requires_grad or n in frozen}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    for name, param in before.items():
        after = trainer.model.get_parameter(name)
        if name in frozen:
            torch.testing.assert_close(param, after, msg=f"Parameter {name} has changed.")
        elif "base_layer" not in name:
            assert not torch.equal(param, after), f"Parameter {name} has not changed."


# ----------------------------------------------------------------------------------------------- init and training
def test_init_minimal(reward_model, tmp_path, monkeypatch):
    """Only model, reward model and dataset, and the default config with two exceptions: on a machine without a GPU,
    GRPOConfig's bf16 default needs use_cpu (TRL's own trainer stops with the same transformers error), and the
    tiny fixture has 512 positions, which a prompt plus TRL's default 512-token canvas exceeds (refused by name)."""
    monkeypatch.chdir(tmp_path)  # the default output_dir is relative
    with pytest.raises(ValueError, match="exceeds the model's 512 positions. Lower max_completion_length"):
        DiPODTrainer(model=LLADA, reward_funcs=reward_model, train_dataset=zen(), args=DiPODConfig(use_cpu=True))
    DiPODTrainer(model=LLADA, reward_funcs=reward_model, train_dataset=zen(),
                 args=DiPODConfig(use_cpu=True, max_completion_length=256))


@pytest.mark.parametrize("model_id", ["llada-tiny", "dream-tiny", "sdar-tiny", "sdar-moe-tiny", "llada2-tiny"])
def test_train(reward_model, tmp_path, model_id):
    trainer = DiPODTrainer(model=str(SHARED / model_id), reward_funcs=reward_model, args=grpo_args(tmp_path),
                           train_dataset=zen())
    train_and_check(trainer)
    if trainer.aux_loss_enabled:  # MoE models log the load-balancing auxiliary loss (on by default)
        assert any("aux_loss" in h for h in trainer.state.log_history)


@pytest.mark.parametrize("config_name", ["standard_prompt_only", "conversational_prompt_only"])
def test_train_dataset_format(reward_model, tmp_path, config_name):
    trainer = DiPODTrainer(model=DREAM, reward_funcs=reward_model, args=grpo_args(tmp_path),
                           train_dataset=zen(config_name))
    train_and_check(trainer)


def test_trust_remote_code(tmp_path):
    """TRL: a remote-code model needs trust_remote_code. Native families load without remote code whatever its
    value; the original Hub code (native_model_families=False) needs it, as in TRL."""
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_diffusion_model(LLADA, native_model_families=False, trust_remote_code=False)
    trainer = DiPODTrainer(model=LLADA, reward_funcs=len_reward, args=grpo_args(tmp_path, trust_remote_code=True),
                           train_dataset=zen())
    assert type(trainer.model).__name__ == "LLaDAForDiffusionLM"


@pytest.mark.parametrize("estimator", ["one_step", "elbo", "spg"])
@pytest.mark.parametrize("loss_type", ["bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"])
def test_train_loss_types(reward_model, tmp_path, loss_type, estimator):
    kwargs = dict(likelihood_estimator=estimator, loss_type=loss_type, max_completion_length=32,
                  gradient_accumulation_steps=2,
                  importance_sampling_level="sequence" if loss_type == "luspo" and estimator != "spg" else "token")
    if estimator != "one_step" and loss_type in ("cispo", "sapo", "vespo"):  # other objectives than PPO-clip
        with pytest.raises(ValueError, match=f"loss_type='{loss_type}' is not honoured"):
            grpo_args(tmp_path, **kwargs)
        return
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=grpo_args(tmp_path, **kwargs),
                           train_dataset=zen())
    train_and_check(trainer)


@pytest.mark.parametrize("num_generations_eval", [None, 1])
def test_train_with_eval(reward_model, tmp_path, num_generations_eval):
    """TRL's test_train_with_eval and test_train_with_num_generations_eval."""
    dataset = zen(split=None)
    args = grpo_args(tmp_path, per_device_eval_batch_size=3, eval_strategy="steps", eval_steps=2,
                     num_generations_eval=num_generations_eval)
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=dataset["train"],
                           eval_dataset=dataset["test"])
    trainer.train()
    assert any("eval_loss" in h for h in trainer.state.log_history)


def test_train_with_iterable_dataset(reward_model, tmp_path):
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=grpo_args(tmp_path, max_steps=4),
                           train_dataset=zen(streaming=True))
    assert trainer.args.accelerator_config.dispatch_batches is False
    train_and_check(trainer)


EVAL_TYPES = ["dataset", "iterable_dataset", "dataset_dict", "iterable_dataset_dict", "dict_of_dataset",
              "dict_of_iterable_dataset"]


def _eval_dataset(kind: str):
    split = zen(split="test", streaming="iterable" in kind)
    if kind in ("dataset", "iterable_dataset"):
        return split
    if kind in ("dataset_dict", "iterable_dataset_dict"):
        return (IterableDatasetDict if "iterable" in kind else DatasetDict)({"data1": split, "data2": split})
    return {"data1": split, "data2": split}


@pytest.mark.parametrize("eval_dataset_type", [*EVAL_TYPES, "none"])
def test_init_with_eval_dataset(reward_model, tmp_path, eval_dataset_type):
    eval_dataset = None if eval_dataset_type == "none" else _eval_dataset(eval_dataset_type)
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=grpo_args(tmp_path), train_dataset=zen(),
                           eval_dataset=eval_dataset)
    if eval_dataset is None:
        assert trainer.eval_dataset is None
    elif isinstance(trainer.eval_dataset, dict):
        assert set(trainer.eval_dataset) == {"data1", "data2"}
    else:
        assert trainer.eval_dataset is eval_dataset


@pytest.mark.parametrize("eval_dataset_type", EVAL_TYPES)
def test_evaluate_with_eval_dataset(reward_model, tmp_path, eval_dataset_type):
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=grpo_args(tmp_path), train_dataset=zen())
    metrics = trainer.evaluate(eval_dataset=_eval_dataset(eval_dataset_type))
    if eval_dataset_type in ("dataset", "iterable_dataset"):
        assert metrics["eval_loss"] is not None
    else:
        assert metrics["eval_data1_loss"] is not None and metrics["eval_data2_loss"] is not None


def test_iterable_dataset_requires_dispatch_batches_false(reward_model, tmp_path):
    args = grpo_args(tmp_path, max_steps=2, accelerator_config={"dispatch_batches": True})
    with pytest.raises(ValueError, match="Iterable datasets require `dispatch_batches=False`"):
        DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen(streaming=True))


def test_iterable_dataset_forces_num_workers_zero(reward_model, tmp_path):
    args = grpo_args(tmp_path, max_steps=2, dataloader_num_workers=2)
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen(streaming=True))
    assert trainer.args.dataloader_num_workers == 0


def test_train_eval_on_start(reward_model, tmp_path):
    dataset = zen(split=None)
    args = grpo_args(tmp_path, loss_type="grpo", per_device_eval_batch_size=3, eval_strategy="steps", eval_steps=2,
                     eval_on_start=True)
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=dataset["train"],
                           eval_dataset=dataset["test"])
    trainer.train()
    assert trainer.state.log_history[0]["step"] == 0 and "eval_loss" in trainer.state.log_history[0]


@pytest.mark.parametrize("estimator", ["elbo", "one_step", "spg"])
def test_train_multiple_iterations(reward_model, tmp_path, estimator):
    args = grpo_args(tmp_path, num_iterations=2, likelihood_estimator=estimator)
    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen()))


# -------------------------------------------------------------------------------------------------------------- PEFT
def _base_names(model) -> set[str]:
    return {f"base_model.model.{n}" for n, _ in model.named_parameters()}


def test_train_peft_config(reward_model, tmp_path):
    from peft import LoraConfig

    model = load_diffusion_model(LLADA)
    base = _base_names(model)
    trainer = DiPODTrainer(model=model, reward_funcs=reward_model, args=grpo_args(tmp_path), train_dataset=zen(),
                           peft_config=LoraConfig())
    train_and_check(trainer, frozen=base)


def test_train_peft_model(reward_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = load_diffusion_model(DREAM)
    base = _base_names(model)
    model = get_peft_model(model, LoraConfig())
    trainer = DiPODTrainer(model=model, reward_funcs=reward_model, args=grpo_args(tmp_path), train_dataset=zen())
    train_and_check(trainer, frozen=base)


def test_train_moe_peft_model(reward_model, tmp_path):
    """TRL targets GPT-OSS's fused experts with `target_parameters`; here SDAR-MoE's (Qwen3-MoE's fused experts)."""
    from peft import LoraConfig, get_peft_model

    model = load_diffusion_model(str(SHARED / "sdar-moe-tiny"))
    base = _base_names(model)
    model = get_peft_model(model, LoraConfig(target_parameters=["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]))
    trainer = DiPODTrainer(model=model, reward_funcs=reward_model, args=grpo_args(tmp_path, beta=0.1),
                           train_dataset=zen())
    # TRL adds a frozen "ref" copy of the adapter where PEFT can hold two `target_parameters` adapters (>= 0.20)
    import peft
    from packaging.version import Version

    assert ("ref" in trainer.model.peft_config) == (Version(peft.__version__) >= Version("0.20.0"))
    train_and_check(trainer, frozen=base)


def test_train_peft_with_gradient_checkpointing(reward_model, tmp_path):
    from peft import LoraConfig

    model = load_diffusion_model(LLADA)
    base = _base_names(model)
    trainer = DiPODTrainer(model=model, reward_funcs=reward_model, args=grpo_args(tmp_path, gradient_checkpointing=True),
                           train_dataset=zen(), peft_config=LoraConfig())
    train_and_check(trainer, frozen=base)


# ----------------------------------------------------------------------------------------------------------- rewards
def test_train_different_reward_model(other_reward_model, tmp_path):
    from transformers import AutoModelForSequenceClassification

    trainer = DiPODTrainer(model=LLADA, reward_funcs=AutoModelForSequenceClassification.from_pretrained(
        other_reward_model), reward_processing_classes=AutoTokenizer.from_pretrained(other_reward_model),
        args=grpo_args(tmp_path), train_dataset=zen("conversational_prompt_only"))
    train_and_check(trainer)


def test_train_reward_func_standard(tmp_path):
    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=len_reward, args=grpo_args(tmp_path), train_dataset=zen()))


def test_train_reward_func_conversational(tmp_path):
    def reward_func(completions, **kwargs):
        return [float(len(completion[0]["content"])) for completion in completions]

    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=reward_func, args=grpo_args(tmp_path),
                                 train_dataset=zen("conversational_prompt_only")))


def test_train_multiple_reward_funcs(tmp_path):
    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=[len_reward, unique_letters_reward],
                                 args=grpo_args(tmp_path), train_dataset=zen()))


def test_train_sync_and_async_reward_funcs(tmp_path):
    def ones(completions, **kwargs):
        return [1 for _ in completions]

    async def async_reward_func(completions, **kwargs):
        return [float(len(set(completion))) for completion in completions]

    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=[len_reward, ones, async_reward_func],
                                 args=grpo_args(tmp_path), train_dataset=zen()))


def test_train_multiple_reward_funcs_with_None_output(tmp_path):  # noqa: N802 (TRL's name)
    def non_applicable(completions, **kwargs):
        return [None] * len(completions)

    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=[len_reward, non_applicable], args=grpo_args(tmp_path),
                                 train_dataset=zen()))


def test_train_multiple_reward_funcs_with_weights(tmp_path):
    trainer = DiPODTrainer(model=LLADA, reward_funcs=[len_reward, unique_letters_reward],
                           args=grpo_args(tmp_path, reward_weights=[0.7, 0.3]), train_dataset=zen())
    train_and_check(trainer)
    last = next(h for h in reversed(trainer.state.log_history) if "reward" in h)
    for key in ("rewards/len_reward/mean", "rewards/len_reward/std", "rewards/unique_letters_reward/mean",
                "rewards/unique_letters_reward/std"):
        assert key in last


@pytest.mark.parametrize("multi_objective_aggregation", ["sum_then_normalize", "normalize_then_sum"])
def test_reward_metric_reflects_reward_weights(tmp_path, multi_objective_aggregation):
    def constant_reward_1(completions, **kwargs):
        return [1.0] * len(completions)

    def constant_reward_0(completions, **kwargs):
        return [0.0] * len(completions)

    args = grpo_args(tmp_path, reward_weights=[0.7, 0.3], multi_objective_aggregation=multi_objective_aggregation,
                     max_steps=2)
    trainer = DiPODTrainer(model=LLADA, reward_funcs=[constant_reward_1, constant_reward_0], args=args,
                           train_dataset=zen())
    trainer.train()
    last = next(h for h in reversed(trainer.state.log_history) if "reward" in h)
    assert last["reward"] == pytest.approx(0.7, abs=1e-5)


def test_train_multiple_mixed_reward_funcs(reward_model, tmp_path):
    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=[len_reward, reward_model], args=grpo_args(tmp_path),
                                 train_dataset=zen()))


def test_train_reward_func_additional_column(tmp_path):
    dataset = zen()
    dataset = dataset.add_column("some_values", list(range(len(dataset))))

    def reward_func(completions, some_values, **kwargs):
        return [float(abs(len(c) - v)) for c, v in zip(completions, some_values, strict=True)]

    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=reward_func, args=grpo_args(tmp_path),
                                 train_dataset=dataset))


def test_train_with_reward_func_accessing_trainer_state(tmp_path):
    def reward_func(completions, **kwargs):
        state = kwargs.get("trainer_state")
        assert state is not None and hasattr(state, "global_step")
        return [float(len(set(c))) for c in completions]

    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=reward_func, args=grpo_args(tmp_path),
                                 train_dataset=zen()))


def test_train_reward_func_with_log_extra(tmp_path):
    def reward_func(completions, **kwargs):
        kwargs["log_extra"]("test_column", [c[:5] for c in completions])
        return [float(len(c)) for c in completions]

    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_func, args=grpo_args(tmp_path, log_completions=True),
                           train_dataset=zen())
    trainer.train()
    assert "test_column" in trainer._logs["extra"]


def test_train_reward_func_with_log_metric(tmp_path):
    def reward_func(completions, **kwargs):
        kwargs["log_metric"]("custom_accuracy", 0.75)
        return [float(len(c)) for c in completions]

    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_func, args=grpo_args(tmp_path), train_dataset=zen())
    trainer.train()
    assert "custom_accuracy" in {k for entry in trainer.state.log_history for k in entry}


def test_warning_raised_all_rewards_none(tmp_path, caplog):
    def always_none(completions, **kwargs):
        return [None] * len(completions)

    trainer = DiPODTrainer(model=LLADA, reward_funcs=always_none, args=grpo_args(tmp_path, max_steps=1),
                           train_dataset=zen())
    with caplog.at_level(logging.WARNING, logger="trl.trainer.grpo_trainer"):
        trainer.train()
    assert "All reward functions returned None for the following kwargs:" in caplog.text


def test_mismatched_reward_processing_classes_length(reward_model, other_reward_model, tmp_path):
    with pytest.raises(ValueError, match="must match"):
        DiPODTrainer(model=LLADA, reward_funcs=[reward_model, other_reward_model],
                     reward_processing_classes=AutoTokenizer.from_pretrained(reward_model), args=grpo_args(tmp_path),
                     train_dataset=zen())


def test_correct_reward_processing_classes_list(reward_model, other_reward_model, tmp_path):
    classes = [AutoTokenizer.from_pretrained(reward_model), AutoTokenizer.from_pretrained(other_reward_model)]
    trainer = DiPODTrainer(model=LLADA, reward_funcs=[reward_model, other_reward_model],
                           reward_processing_classes=classes, args=grpo_args(tmp_path), train_dataset=zen())
    assert len(trainer.reward_processing_classes) == 2


def test_single_reward_model_with_single_processing_class(reward_model, tmp_path):
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=grpo_args(tmp_path), train_dataset=zen(),
                           reward_processing_classes=AutoTokenizer.from_pretrained(reward_model))
    assert len(trainer.reward_processing_classes) == 1


@pytest.mark.parametrize("scale_rewards", [False, "group", "batch", True, "none"])
def test_train_scale_rewards(reward_model, tmp_path, scale_rewards):
    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=reward_model,
                                 args=grpo_args(tmp_path, scale_rewards=scale_rewards), train_dataset=zen()))


def test_train_normalize_then_sum_aggregation(tmp_path):
    args = grpo_args(tmp_path, multi_objective_aggregation="normalize_then_sum")
    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=[len_reward, unique_letters_reward], args=args,
                                 train_dataset=zen()))


# ------------------------------------------------------------------------------------------- reference model and KL
def test_train_with_sync_ref_model(reward_model, tmp_path):
    args = grpo_args(tmp_path, beta=0.1, sync_ref_model=True, ref_model_sync_steps=2)
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen())
    assert trainer.ref_model is not None
    before = {n: p.clone() for n, p in trainer.ref_model.named_parameters()}
    train_and_check(trainer)
    for name, param in before.items():
        assert not torch.equal(param, trainer.ref_model.get_parameter(name)), f"Ref Parameter {name} has not changed."


@pytest.mark.parametrize("estimator", ["elbo", "one_step", "spg"])
@pytest.mark.parametrize("options", [{}, {"use_bias_correction_kl": True}], ids=["beta_non_zero", "bias_correction"])
def test_train_beta_non_zero(reward_model, tmp_path, estimator, options):
    """TRL's test_train_beta_non_zero and test_train_with_bias_correction_kl, under every estimator."""
    args = grpo_args(tmp_path, beta=0.1, likelihood_estimator=estimator, **options)
    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen()))


def test_train_with_pad_to_multiple_of(reward_model, tmp_path):
    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=grpo_args(tmp_path, pad_to_multiple_of=8),
                                 train_dataset=zen()))


# ---------------------------------------------------------------------------------------------------- loss options
def test_get_off_policy_mask():
    mask = torch.ones((3, 4))
    advantages = torch.tensor([1.0, -1.0, -1.0]).unsqueeze(-1)
    sampling = torch.zeros((3, 4))
    per_token = torch.zeros((3, 4))
    per_token[0], per_token[1], per_token[2] = -2.0, -0.5, -2.0
    got = DiPODTrainer.get_off_policy_mask(advantages, per_token, sampling, mask, 1.0)
    torch.testing.assert_close(got, torch.tensor([[1.0], [1.0], [0.0]]))


@pytest.mark.parametrize("estimator", ["elbo", "one_step"])
@pytest.mark.parametrize(("options", "refused_by_spg"), [
    ({"off_policy_mask_threshold": 0.5}, "off_policy_mask_threshold"), ({"delta": 2.0}, "delta"),
    ({"num_iterations": 2, "importance_sampling_level": "sequence"}, "importance_sampling_level")],
    ids=["off_policy_mask", "delta_clipping", "sequence_importance_sampling"])
def test_train_loss_options(reward_model, tmp_path, estimator, options, refused_by_spg):
    """TRL's test_train_with_off_policy_mask, test_train_delta_clipping and test_train_sequence_importance_sampling,
    under FPO's sequence ratio and one_step's token ratio (SPG has no ratio and refuses them by name)."""
    args = grpo_args(tmp_path, likelihood_estimator=estimator, **options)
    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen()))
    with pytest.raises(ValueError, match=refused_by_spg):
        grpo_args(tmp_path, likelihood_estimator="spg", **options)


def test_train_with_cast_lm_head_to_fp32(reward_model, tmp_path):
    args = grpo_args(tmp_path, cast_lm_head_to_fp32=True, model_init_kwargs={"dtype": "bfloat16"})
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen())
    assert trainer.model.model.embed_tokens.weight.dtype == torch.bfloat16
    train_and_check(trainer)
    assert trainer.model.lm_head.weight.dtype == torch.float32


@pytest.mark.parametrize("estimator", ["elbo", "one_step", "spg"])
def test_train_with_static_entropy(reward_model, tmp_path, estimator):
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model,
                           args=grpo_args(tmp_path, entropy_coef=0.1, likelihood_estimator=estimator),
                           train_dataset=zen())
    train_and_check(trainer)
    last = trainer.state.log_history[-1]
    assert last["policy_loss"] is not None and last["entropy_coef"] is not None


@pytest.mark.parametrize("estimator", ["elbo", "one_step", "spg"])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_train_with_adaptive_entropy(reward_model, tmp_path, estimator, accumulation):
    """TRL's test_train_with_adaptive_entropy and ..._gradient_accumulation: with the target above any entropy,
    the coefficient rises by delta once per optimizer step."""
    args = grpo_args(tmp_path, entropy_coef=0.01, use_adaptive_entropy=True, entropy_target=15.0,
                     entropy_coef_delta=0.005, gradient_accumulation_steps=accumulation,
                     likelihood_estimator=estimator)
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen())
    train_and_check(trainer)
    last = trainer.state.log_history[-1]
    assert last["policy_loss"] is not None and last["entropy_coef"] is not None
    assert trainer.entropy_coef == pytest.approx(min(0.01 + 0.005 * trainer.state.global_step, 1.0), abs=1e-6)


@pytest.mark.parametrize("estimator", ["elbo", "one_step", "spg"])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "luspo"])
def test_entropy_bonus_scale(reward_model, tmp_path, estimator, loss_type):
    """The bonus is coef * the mean entropy whatever the loss_type normalises: (policy_loss - loss) / entropy is
    entropy_coef (with no DiPOD term, which would add to the loss)."""
    args = grpo_args(tmp_path, loss_type=loss_type, logging_steps=1, entropy_coef=0.5, dipod_beta=0.0,
                     likelihood_estimator=estimator,
                     importance_sampling_level="sequence" if loss_type == "luspo" and estimator != "spg" else "token")
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "policy_loss" in h and "loss" in h and h.get("entropy")]
    ratios = sorted((h["policy_loss"] - h["loss"]) / h["entropy"] for h in logs)
    assert logs and ratios[len(ratios) // 2] == pytest.approx(0.5, rel=0.3)


@pytest.mark.parametrize("estimator", ["elbo", "one_step", "spg"])
def test_entropy_bonus_flows_gradients(reward_model, tmp_path, estimator):
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model,
                           args=grpo_args(tmp_path, entropy_coef=0.1, likelihood_estimator=estimator),
                           train_dataset=zen())
    input_ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]]) + 20
    attention_mask = torch.ones_like(input_ids)
    assert trainer._entropy_bonus_enabled
    _, entropies, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention_mask,
                                                                 logits_to_keep=4, compute_entropy=True)
    assert entropies.requires_grad
    trainer.entropy_coef, trainer.use_adaptive_entropy, trainer._entropy_bonus_enabled = 0.0, False, False
    _, entropies, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention_mask,
                                                                 logits_to_keep=4, compute_entropy=True)
    assert not entropies.requires_grad


def test_train_with_entropy_filter(reward_model, tmp_path):
    """one_step trains with TRL's high-entropy mask; the ELBO estimators refuse it by name (it would change the
    ELBO itself)."""
    args = grpo_args(tmp_path, top_entropy_quantile=0.2, likelihood_estimator="one_step")
    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen()))
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        grpo_args(tmp_path, top_entropy_quantile=0.2)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo"])
def test_warning_raised_sequence_level_with_token_summed_loss(tmp_path, caplog, loss_type):
    args = grpo_args(tmp_path, importance_sampling_level="sequence", loss_type=loss_type,
                     likelihood_estimator="one_step")
    with caplog.at_level(logging.WARNING, logger="trl.trainer.grpo_trainer"):
        DiPODTrainer(model=LLADA, reward_funcs=len_reward, args=args, train_dataset=zen())
    assert ("weights each sequence by its completion length" in caplog.text) == (loss_type != "grpo")


# -------------------------------------------------------------------------------------------- generation and batching
def test_train_with_mask_truncated_completions_all_masked(reward_model, tmp_path):
    """Every completion truncated (EOS made impossible: TRL relies on a tiny model rarely sampling it) with
    mask_truncated_completions: loss 0 and no parameter changes."""
    args = grpo_args(tmp_path, mask_truncated_completions=True, loss_type="dapo", stop_at_eos=False, max_steps=3)
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen())
    eos = torch.tensor(trainer.eos_token_ids)
    trainer.model.lm_head.register_forward_hook(lambda _m, _i, logits: logits.index_fill(-1, eos, -1e4))
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] == pytest.approx(0.0)
    for name, param in before.items():
        assert torch.equal(param, trainer.model.get_parameter(name)), f"Parameter {name} has changed."


def test_train_with_mask_truncated_completions(reward_model, tmp_path, monkeypatch):
    """TRL mocks model.generate; here the diffusion sampler returns TRL's three kinds of completion: truncated, with
    an EOS, and with the EOS at the very end. dapo normalises by num_items_in_batch, which excludes the truncated."""
    def fake_generate(model, adapter, prompt_ids, prompt_mask, gen_length, **kwargs):
        eos = kwargs["eos_token_ids"][0] if kwargs.get("eos_token_ids") else 2
        rows = [[20 + i for i in range(gen_length)],
                [30, 31, 32] + [eos] * (gen_length - 3),
                [40 + i for i in range(gen_length - 1)] + [eos]]
        return torch.tensor([rows[i % 3] for i in range(prompt_ids.size(0))], device=prompt_ids.device)

    monkeypatch.setattr("dipod_trl.trainer.diffusion_generate", fake_generate)
    args = grpo_args(tmp_path, mask_truncated_completions=True, loss_type="dapo")
    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen()))


def test_train_num_generations_larger_than_batch_size(reward_model, tmp_path):
    args = grpo_args(tmp_path, num_generations=6, gradient_accumulation_steps=2)
    train_and_check(DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen()))


def test_train_with_generation_kwargs(reward_model, tmp_path):
    """TRL passes generation_kwargs to model.generate; the mask-token diffusion sampler reads none, so they are
    refused by name instead of being ignored."""
    with pytest.raises(ValueError, match=r"generation_kwargs key\(s\) \['do_sample', 'length_penalty', 'num_beams'"):
        grpo_args(tmp_path, generation_kwargs={"do_sample": True, "top_k": 50, "num_beams": 2, "length_penalty": -0.1})


def test_prepare_input_called_with_correct_data(reward_model, tmp_path):
    args = grpo_args(tmp_path, per_device_train_batch_size=6, gradient_accumulation_steps=3, steps_per_generation=4,
                     num_generations=4, num_iterations=2, shuffle_dataset=False, num_train_epochs=1, max_steps=-1)
    trainer = DiPODTrainer(model=LLADA, reward_funcs=reward_model, args=args, train_dataset=zen())
    seen = []
    step = trainer.training_step

    def recording(model, inputs, *rest, **kwargs):
        seen.append(inputs)
        return step(model, inputs, *rest, **kwargs)

    trainer.training_step = recording
    trainer.train()
    first = [{"prompt": p} for p in ZEN_TRAIN[:6] for _ in range(4)]
    second = [{"prompt": p} for p in ZEN_TRAIN[6:12] for _ in range(4)]
    assert len(seen) == 16  # 2 generation batches, each used steps_per_generation * num_iterations times
    assert all(seen[i] == first for i in range(8)) and all(seen[i] == second for i in range(8, 16))


def test_train_with_chat_template_kwargs(reward_model, tmp_path):
    args = grpo_args(tmp_path, chat_template_kwargs={"enable_thinking": False})
    train_and_check(DiPODTrainer(model=DREAM, reward_funcs=reward_model, args=args,
                                 train_dataset=zen("conversational_prompt_only")))
