"""Settings and data that used to train silently on garbage, or crash with a message that explains nothing, now fail
at start-up with an error naming the fix (or are skipped and counted)."""

import asyncio

import pytest
from datasets import Dataset, IterableDataset

from dipod_trl import DiPODConfig, DiPODTrainer
from dipod_trl.validation import check_reward_output, checked_reward


def _config(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
                max_completion_length=8, block_length=4, diffusion_steps=4, max_steps=1, logging_steps=1,
                report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, bf16=False)
    base.update(overrides)
    return DiPODConfig(**base)


def _reward(prompts, completions, **kwargs):
    return [0.5] * len(completions)


def _dataset(prompts):
    return Dataset.from_dict({"prompt": prompts})


@pytest.mark.parametrize(("knob", "value", "message"), [
    ("dipod_beta", float("nan"), "dipod_beta must be a finite number"),
    ("learning_rate", float("inf"), "learning_rate must be a finite number"),
    ("temperature", -1.0, "temperature must be >= 0.*greedy"),
    ("epsilon", -0.2, "epsilon must be >= 0"),
    ("dipod_beta", -0.1, "dipod_beta must be >= 0"),
    ("max_consecutive_nonfinite", 0, "max_consecutive_nonfinite must be >= 1"),
])
def test_bad_numeric_knobs_are_refused_by_name(tmp_path, knob, value, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **{knob: value})


@pytest.mark.parametrize("which", ["pad", "eos"])
def test_mask_token_equal_to_pad_or_eos_is_refused(tmp_path, tokenizer, tiny_model, which):
    token = tokenizer.pad_token_id if which == "pad" else tokenizer.eos_token_id
    with pytest.raises(ValueError, match=f"mask_token_id \\({token}\\) (equals the pad|is an end-of-sequence)"):
        DiPODTrainer(tiny_model, [_reward], _config(tmp_path, mask_token_id=token), _dataset(["a", "b"]),
                     processing_class=tokenizer)


def test_prompt_plus_completion_beyond_the_model_positions_is_refused(tmp_path, tokenizer, tiny_model):
    tiny_model.config.max_position_embeddings = 12
    long_prompt = " ".join(["count"] * 10)
    with pytest.raises(ValueError, match="exceeds the model's 12 positions.*at most 4 tokens"):
        DiPODTrainer(tiny_model, [_reward], _config(tmp_path), _dataset(["a", long_prompt]),
                     processing_class=tokenizer)


def test_empty_dataset_and_bad_prompts_are_refused_naming_the_row(tmp_path, tokenizer, tiny_model):
    with pytest.raises(ValueError, match="0 rows"):
        DiPODTrainer(tiny_model, [_reward], _config(tmp_path), _dataset([]).cast_column("prompt", _str_feature()),
                     processing_class=tokenizer)
    with pytest.raises(TypeError, match="Row 0 .*prompt is a int.*must be a string or a list of chat messages"):
        DiPODTrainer(tiny_model, [_reward], _config(tmp_path), Dataset.from_dict({"prompt": [3, 4]}),
                     processing_class=tokenizer)
    with pytest.raises(ValueError, match="Row 1 .*empty prompt"):
        DiPODTrainer(tiny_model, [_reward], _config(tmp_path), _dataset(["a", "   "]), processing_class=tokenizer)


def _str_feature():
    from datasets import Value

    return Value("string")


def test_streaming_blank_prompts_are_skipped_and_counted(tmp_path, tokenizer, tiny_model):
    rows = [{"prompt": p} for p in ["q1:", " \n", "q2:", "", "q3:", "q4:", "q5:", "q6:"]]
    stream = IterableDataset.from_generator(lambda: iter(rows))
    trainer = DiPODTrainer(tiny_model, [_reward], _config(tmp_path, max_steps=1), stream, processing_class=tokenizer)
    trainer.train()
    assert trainer.blank_prompts.skipped == 2
    assert [h["data/skipped_blank_prompts"] for h in trainer.state.log_history if "loss" in h] == [2.0]


def test_a_stream_with_only_blank_prompts_fails_instead_of_training_zero_steps(tmp_path, tokenizer, tiny_model):
    stream = IterableDataset.from_generator(lambda: iter([{"prompt": " "}] * 8))
    trainer = DiPODTrainer(tiny_model, [_reward], _config(tmp_path, max_steps=1), stream, processing_class=tokenizer)
    with pytest.raises(ValueError, match="0 steps.*8 skipped"):
        trainer.train()


@pytest.mark.parametrize(("output", "message"), [
    ("0.5", "returned str '0.5'; it must return a list of 2 floats"),
    (0.5, "returned float '0.5'"),
    (["right", "wrong"], "returned a list containing str 'right'"),
])
def test_reward_functions_returning_the_wrong_type_are_named(output, message):
    with pytest.raises(TypeError, match=f"Reward function 'my_reward' {message}"):
        check_reward_output("my_reward", output, 2)
    check_reward_output("ok", [0.5, None], 2)


def test_checked_reward_keeps_names_and_async_functions():
    async def my_async_reward(prompts, completions, **kwargs):
        return "oops"

    checked = checked_reward(my_async_reward, "my_async_reward")
    assert checked.__name__ == "my_async_reward" and asyncio.iscoroutinefunction(checked)
    with pytest.raises(TypeError, match="'my_async_reward' returned str"):
        asyncio.run(checked(prompts=["p"], completions=["c"]))


def test_a_trainer_names_the_reward_function_that_returned_a_string(tmp_path, tokenizer, tiny_model):
    def says_yes(prompts, completions, **kwargs):
        return ["yes"] * len(completions)

    trainer = DiPODTrainer(tiny_model, [says_yes], _config(tmp_path), _dataset(["q1:", "q2:"]),
                           processing_class=tokenizer)
    with pytest.raises(TypeError, match="Reward function 'says_yes' returned a list containing str 'yes'"):
        trainer.train()


def test_tokenizer_without_pad_and_eos_is_refused(tmp_path, tokenizer, tiny_model):
    bare = tokenizer.__class__.from_pretrained(tokenizer.name_or_path) if tokenizer.name_or_path else None
    bare = bare or __import__("copy").deepcopy(tokenizer)
    bare.pad_token = None
    bare.eos_token = None
    tiny_model.config.eos_token_id = None
    tiny_model.config.pad_token_id = None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        DiPODTrainer(tiny_model, [_reward], _config(tmp_path), _dataset(["q1:"]), processing_class=bare)
