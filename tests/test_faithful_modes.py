"""The release-faithful likelihood modes inside the trainer: per-iteration masks keep the coupling, SPG skips the
old forward it never reads, EOS conventions and length weighting reach the loss. Loss calls only (no training)."""

import torch
from test_trainer import digit_reward, make_config, make_dataset

from dipod_trl import DiPODTrainer, losses
from dipod_trl.estimators import iteration_seeds
from dipod_trl.likelihood import elbo_per_token, eos_convention


def _trainer(tmp_path, tokenizer, model, **overrides):
    trainer = DiPODTrainer(model, [digit_reward], args=make_config(tmp_path, **overrides),
                           train_dataset=make_dataset(), processing_class=tokenizer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def _generation_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


def test_per_iteration_masks_old_estimates_for_every_iteration_ratio_one_each(tmp_path, tokenizer, tiny_model):
    trainer = _trainer(tmp_path, tokenizer, tiny_model, num_iterations=3, mask_redraw="per_iteration",
                       elbo_masking="antithetic", score_eos=False, after_eos="visible", beta=0.0)
    inputs = _generation_batch(trainer)
    old = inputs["old_per_token_logps"]
    assert old.shape[1] == 3 and not torch.equal(old[:, 0], old[:, 1])  # (B, iterations, C), masks redrawn
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    c = inputs["completion_ids"].size(1)
    view_ids, view_attn, scored = eos_convention(ids, attn, c, trainer.eos_token_ids, trainer.dllm.mask_token_id,
                                                 score_eos=False, after_eos="visible")
    for it in range(3):  # at the old parameters, iteration it's estimate is exactly its stored old estimate
        trainer._step = it * trainer.args.steps_per_generation
        assert trainer._iteration() == it
        with torch.no_grad():
            new = elbo_per_token(trainer.model, trainer.dllm, view_ids, view_attn, c,
                                 iteration_seeds(inputs["mask_seeds"], it), 4, masking="antithetic", scored=scored)
        assert torch.allclose(new, old[:, it], atol=1e-5)
        loss = trainer.compute_loss(trainer.model, inputs)
        expected = losses.aggregate(-inputs["advantages"], scored.sum(-1) > 0)  # ratio 1: FPO loss = -A
        assert torch.allclose(loss - 0.05 * losses.aggregate(-losses.sequence_elbo(new, scored, "sequence"),
                                                             scored.sum(-1) > 0), expected, atol=1e-4)


def test_spg_faithful_mode_has_no_old_forward_and_weights_by_length(tmp_path, tokenizer, tiny_model):
    calls = []
    forward = tiny_model.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    trainer = _trainer(tmp_path, tokenizer, tiny_model, likelihood_estimator="spg", num_iterations=2,
                       elbo_masking="block_random", mask_redraw="per_iteration", sequence_aggregation="length",
                       normalization="token", after_eos="masked", elbo_samples=2)
    assert trainer._old_logps_requested()  # TRL would compute an old estimate for this batch layout ...
    tiny_model.forward = counting
    inputs = _generation_batch(trainer)
    assert "old_per_token_logps" not in inputs  # ... which SPG never reads: skipped
    generation_calls = len(calls)
    loss = trainer.compute_loss(trainer.model, inputs)
    assert torch.isfinite(loss) and len(calls) > generation_calls
    valid = inputs["completion_mask"].sum(-1) > 0
    lengths = inputs["completion_mask"].sum(-1)
    per_seq = torch.tensor([1.0, 3.0] * (len(lengths) // 2))
    weighted = losses.aggregate(per_seq, valid, lengths)
    assert torch.isclose(weighted, (per_seq * lengths).sum() / lengths.sum())


def test_one_step_faithful_mode_runs_with_per_iteration_old_and_ref(tmp_path, tokenizer, tiny_model_dir):
    trainer = DiPODTrainer(tiny_model_dir, [digit_reward], train_dataset=make_dataset(),
                           args=make_config(tmp_path, likelihood_estimator="one_step", num_iterations=2, beta=0.04,
                                            mask_redraw="per_iteration", loss_type="bnpo", score_eos=False,
                                            after_eos="masked"))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = _generation_batch(trainer)
    assert inputs["old_per_token_logps"].dim() == 3 and inputs["ref_per_token_logps"].dim() == 3
    for it in range(2):
        trainer._step = it
        loss = trainer.compute_loss(trainer.model, inputs)
        assert torch.isfinite(loss)
    clip = [v for v in trainer._metrics["train"]["clip_ratio/region_mean"]]
    assert clip and all(v == 0 for v in clip)  # at the old parameters no token is clipped in either iteration
