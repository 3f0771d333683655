import pytest
import torch
from datasets import Dataset
from tiny import build_tiny_model, build_tiny_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

from dipod_trl import DiPODConfig, DiPODTrainer, losses
from dipod_trl.likelihood import elbo_per_token


def digit_reward(prompts, completions, **kwargs):
    """Fraction of digit characters: a reward the tiny model can learn."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def make_config(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        block_length=4,
        diffusion_steps=4,
        max_steps=2,
        learning_rate=3e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        bf16=False,  # exact float32 on CPU; TRL defaults to bf16 autocast
    )
    base.update(overrides)
    return DiPODConfig(**base)


def make_dataset(n=16, conversational=True):
    if conversational:
        return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"count {i}"}] for i in range(n)]})
    return Dataset.from_dict({"prompt": [f"q{i}:" for i in range(n)]})


def logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


@pytest.mark.parametrize("estimator", ["elbo", "one_step", "spg"])
def test_each_estimator_trains_and_logs(tmp_path, tokenizer, tiny_model, estimator):
    args = make_config(tmp_path, likelihood_estimator=estimator, num_iterations=2)
    trainer = DiPODTrainer(tiny_model, [digit_reward], args=args, train_dataset=make_dataset(),
                           processing_class=tokenizer)
    before = [p.detach().clone() for p in tiny_model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, tiny_model.parameters()))
    for key in ("dipod/elbo", "dipod/regularizer", "dipod/policy_loss", "reward", "completions/mean_length",
                "rewards/skipped", "clip_ratio/region_mean" if estimator != "spg" else "spg/eubo"):
        values = logged(trainer, key)
        assert values and all(v == v for v in values), key  # present and not NaN
    assert all(e < 0 for e in logged(trainer, "dipod/elbo"))
    for reg, elbo in zip(logged(trainer, "dipod/regularizer"), logged(trainer, "dipod/elbo")):
        assert reg == pytest.approx(-0.05 * elbo, rel=1e-4)


def _first_micro_batch(trainer):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


def test_dipod_term_is_beta_times_minus_elbo_and_beta_zero_is_plain_fpo(tmp_path, tokenizer, tiny_model):
    args = make_config(tmp_path, num_iterations=2)
    trainer = DiPODTrainer(tiny_model, [digit_reward], args=args, train_dataset=make_dataset(),
                           processing_class=tokenizer)
    inputs = _first_micro_batch(trainer)
    trainer.args.dipod_beta = 0.05
    with_term = trainer.compute_loss(trainer.model, inputs)
    trainer.args.dipod_beta = 0.0
    plain = trainer.compute_loss(trainer.model, inputs)

    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    c = inputs["completion_ids"].size(1)
    per_token = elbo_per_token(trainer.model, trainer.dllm, ids, attn, c, inputs["mask_seeds"], args.elbo_samples)
    elbo = losses.sequence_elbo(per_token, inputs["completion_mask"], "sequence")
    valid = inputs["completion_mask"].sum(-1) > 0
    assert torch.allclose(with_term - plain, 0.05 * losses.aggregate(-elbo, valid), atol=1e-5)
    old = losses.sequence_elbo(inputs["old_per_token_logps"], inputs["completion_mask"], "sequence")
    fpo, ratio = losses.fpo_policy_loss(elbo, old, inputs["advantages"], args.epsilon, args.epsilon)
    assert torch.allclose(plain, losses.aggregate(fpo, valid), atol=1e-5)
    # coupling: at the first inner iteration the old ELBO (whole generation batch, before shuffling) and the new
    # one (shuffled micro-batch) see the same masks, so the ratio is 1 up to float round-off
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5), ratio


def test_lora_trains_adapters_only_and_uses_adapter_free_reference(tmp_path, tokenizer, tiny_model):
    from peft import LoraConfig

    args = make_config(tmp_path, beta=0.04)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["Wqkv", "Wo"], lora_dropout=0.0)
    trainer = DiPODTrainer(tiny_model, [digit_reward], args=args, train_dataset=make_dataset(),
                           processing_class=tokenizer, peft_config=peft_config)
    named = dict(trainer.model.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed), changed
    assert logged(trainer, "kl")


def test_drop_in_for_a_grpo_script_with_model_path_and_reference_model(tmp_path, tiny_model_dir):
    # the shape of a GRPOTrainer script: model id string, reward list, config, dataset; plain-text prompts
    args = make_config(tmp_path, beta=0.04, likelihood_estimator="elbo", max_steps=1)
    trainer = DiPODTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], args=args,
                           train_dataset=make_dataset(conversational=False))
    assert trainer.ref_model is not None
    trainer.train()
    assert logged(trainer, "kl") and logged(trainer, "dipod/elbo")


@pytest.mark.slow
def test_toy_reward_rises(tmp_path, tokenizer):
    model = build_tiny_model(tokenizer, "modernbert", hidden_size=32)
    args = make_config(tmp_path, max_steps=30, block_length=8, temperature=1.0)
    trainer = DiPODTrainer(model, [digit_reward], args=args, train_dataset=make_dataset(64, conversational=False),
                           processing_class=tokenizer)
    trainer.train()
    rewards = logged(trainer, "reward")
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print("toy reward curve:", [round(r, 3) for r in rewards])
    assert last > first + 0.15, (first, last)


def test_refuses_model_without_mask_token(tmp_path, tiny_model):
    tok = build_tiny_tokenizer()
    tok.mask_token = None
    tiny_model.config.mask_token_id = None
    with pytest.raises(ValueError, match="mask token"):
        DiPODTrainer(tiny_model, [digit_reward], args=make_config(tmp_path), train_dataset=make_dataset(),
                     processing_class=tok)


def test_refuses_causal_model(tmp_path, tokenizer):
    causal = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="attends causally"):
        DiPODTrainer(causal, [digit_reward], args=make_config(tmp_path), train_dataset=make_dataset(),
                     processing_class=tokenizer)


def test_refuses_empty_prompt(tmp_path, tokenizer, tiny_model):
    data = Dataset.from_dict({"prompt": ["fine", "  ", "also fine", "x"]})
    with pytest.raises(ValueError, match="Row 1 .* empty prompt"):
        DiPODTrainer(tiny_model, [digit_reward], args=make_config(tmp_path), train_dataset=data,
                     processing_class=tokenizer)


def test_unscorable_completions_are_counted_and_infinite_rewards_refused(tmp_path, tokenizer, tiny_model):
    def sometimes_none(prompts, completions, **kwargs):
        return [None if i % 2 else float("nan") if i % 3 == 0 else 1.0 for i in range(len(prompts))]

    args = make_config(tmp_path, max_steps=1)
    trainer = DiPODTrainer(tiny_model, [sometimes_none], args=args, train_dataset=make_dataset(),
                           processing_class=tokenizer)
    trainer.train()
    expected = sum(1 for i in range(8) if i % 2 or i % 3 == 0)
    assert trainer.num_skipped_rewards == expected
    assert logged(trainer, "rewards/skipped") == [float(expected)]

    def infinite(prompts, completions, **kwargs):
        return [float("inf")] * len(prompts)

    trainer = DiPODTrainer(tiny_model, [infinite], args=args, train_dataset=make_dataset(), processing_class=tokenizer)
    with pytest.raises(ValueError, match="inf"):
        trainer.train()


def test_config_validates_diffusion_fields(tmp_path):
    with pytest.raises(ValueError, match="multiple of block_length"):
        make_config(tmp_path, max_completion_length=10, block_length=4)
    with pytest.raises(ValueError, match="likelihood_estimator"):
        make_config(tmp_path, likelihood_estimator="exact")
    assert make_config(tmp_path, diffusion_steps=None).diffusion_steps == 4
