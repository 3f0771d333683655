"""TRL's loss options under the ELBO estimators (FPO, SPG): `loss_type`, `importance_sampling_level`,
`off_policy_mask_threshold`, `use_bias_correction_kl` and the adaptive entropy controller, on the tiny local model;
and the MoE aux loss on a tiny bidirectional (full-attention) MoE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_trainer import _first_micro_batch, digit_reward, logged, make_config, make_dataset
from tiny import build_tiny_model

from dipod_trl import DiPODTrainer, losses
from dipod_trl.likelihood import elbo_per_token
from dipod_trl.models import diffusion_adapter
from dipod_trl.router_aux import router_aux_losses


def _trainer(model, tokenizer, tmp_path, **overrides) -> DiPODTrainer:
    args = make_config(tmp_path, **{"dipod_beta": 0.0, **overrides})
    return DiPODTrainer(model, [digit_reward], args=args, train_dataset=make_dataset(), processing_class=tokenizer)


def _elbo(trainer, inputs, normalization: str = "sequence") -> torch.Tensor:
    """The batch's per-sequence ELBO with the trainer's masks (coupled with the loss's own estimate)."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    per_token = elbo_per_token(trainer.model, trainer.dllm, ids, attn, inputs["completion_ids"].size(1),
                               inputs["mask_seeds"], trainer.args.elbo_samples)
    return losses.sequence_elbo(per_token, inputs["completion_mask"], normalization)


@pytest.mark.parametrize("loss_type", losses.LOSS_TYPE_AGGREGATIONS)
def test_loss_type_aggregates_fpo_as_trl_aggregates_a_sequence_loss(tmp_path, tokenizer, tiny_model, loss_type):
    """On-policy FPO's sequence loss is -A_b (ratio 1); loss_type decides how it is averaged, exactly as TRL's
    formulas (losses.sequence_weights), and the DiPOD term is averaged the same way."""
    trainer = _trainer(tiny_model, tokenizer, tmp_path, loss_type=loss_type)
    inputs = _first_micro_batch(trainer)
    lengths = inputs["completion_mask"].sum(-1)
    tokens = inputs["num_items_in_batch"].float() / trainer.args.steps_per_generation  # one process
    weights = losses.sequence_weights(lengths, loss_type, trainer.args.max_completion_length, tokens)
    loss = trainer.compute_loss(trainer.model, inputs)
    assert torch.allclose(loss, (weights * -inputs["advantages"]).sum(), atol=1e-5)
    trainer.args.dipod_beta = 0.05
    with_term = trainer.compute_loss(trainer.model, inputs)
    assert torch.allclose(with_term - loss, 0.05 * (weights * -_elbo(trainer, inputs)).sum(), atol=1e-4)


def test_loss_type_changes_the_spg_loss_by_its_weights(tmp_path, tokenizer, tiny_model):
    """SPG: each loss_type weights the same per-sequence sandwich losses (read back one sequence at a time)."""
    trainer = _trainer(tiny_model, tokenizer, tmp_path, likelihood_estimator="spg", loss_type="luspo")
    inputs = _first_micro_batch(trainer)
    view = trainer._likelihood_view(*trainer._joined(inputs))
    scored = view[2]
    with trainer._mask_seeds(inputs["mask_seeds"]):
        per_seq = torch.stack([trainer._elbo_policy_loss(trainer.model, inputs, "train", view, one_hot)[0]
                               for one_hot in torch.eye(scored.size(0))])
    loss = trainer.compute_loss(trainer.model, inputs)
    luspo = losses.sequence_weights(scored.sum(-1), "luspo")  # sum_b L_b l_b / B
    assert torch.allclose(loss, (luspo * per_seq).sum(), atol=1e-5)
    trainer.args.loss_type = None  # sequence_aggregation="mean"
    assert torch.allclose(trainer.compute_loss(trainer.model, inputs), per_seq.mean(), atol=1e-5)
    assert not torch.allclose(loss, per_seq.mean(), atol=1e-3)


def _off_policy(inputs, shift: torch.Tensor) -> dict:
    """The micro-batch as if the old policy's per-token ELBO terms had been `shift_b / L_b` higher per token."""
    mask = inputs["completion_mask"].float()
    per_token_shift = (shift / mask.sum(-1).clamp(min=1))[:, None] * mask
    return {**inputs, "old_per_token_logps": inputs["old_per_token_logps"] + per_token_shift}


def test_importance_sampling_level_sequence_is_gspo_on_the_elbo_ratio(tmp_path, tokenizer, tiny_model):
    """'sequence': exp((ELBO_new - ELBO_old) / L_b). With a log-ratio of -1 per sequence FPO clips every sequence
    (ratio 0.37), GSPO's per-token ratio (about 0.88) does not."""
    trainer = _trainer(tiny_model, tokenizer, tmp_path, importance_sampling_level="sequence", epsilon=0.2,
                       num_iterations=2)
    inputs = _off_policy(_first_micro_batch(trainer), torch.ones(8))
    new = _elbo(trainer, inputs)
    old = losses.sequence_elbo(inputs["old_per_token_logps"], inputs["completion_mask"], "sequence")
    lengths = inputs["completion_mask"].sum(-1)
    valid = lengths > 0
    gspo, ratio = losses.fpo_policy_loss(new, old, inputs["advantages"], 0.2, 0.2, lengths=lengths)
    assert torch.allclose(trainer.compute_loss(trainer.model, inputs), losses.aggregate(gspo, valid), atol=1e-5)
    assert ((ratio > 0.8) & (ratio < 1.0)).all()
    trainer.args.importance_sampling_level = "token"
    fpo, _ = losses.fpo_policy_loss(new, old, inputs["advantages"], 0.2, 0.2)
    assert torch.allclose(trainer.compute_loss(trainer.model, inputs), losses.aggregate(fpo, valid), atol=1e-5)
    assert not torch.allclose(losses.aggregate(fpo, valid), losses.aggregate(gspo, valid), atol=1e-3)


def test_off_policy_mask_drops_negative_advantage_sequences_far_from_the_old_policy(tmp_path, tokenizer, tiny_model):
    trainer = _trainer(tiny_model, tokenizer, tmp_path, off_policy_mask_threshold=0.1, epsilon=10.0,
                       num_iterations=2)
    inputs = _first_micro_batch(trainer)
    lengths = inputs["completion_mask"].sum(-1).float()
    shift = torch.where(torch.arange(8) % 2 == 0, 2.0 * lengths, 0.0)  # even rows: KL 2 per token
    inputs = _off_policy(inputs, shift)
    new = _elbo(trainer, inputs)
    old = losses.sequence_elbo(inputs["old_per_token_logps"], inputs["completion_mask"], "sequence")
    fpo, _ = losses.fpo_policy_loss(new, old, inputs["advantages"], 10.0, 10.0)
    far = (torch.arange(8) % 2 == 0) & (inputs["advantages"] < 0)
    assert far.any() and (~far).any()
    kept = losses.aggregate(fpo * (~far).float(), lengths > 0)
    assert torch.allclose(trainer.compute_loss(trainer.model, inputs), kept, atol=1e-4)
    trainer.args.off_policy_mask_threshold = None
    assert torch.allclose(trainer.compute_loss(trainer.model, inputs), losses.aggregate(fpo, lengths > 0), atol=1e-4)


@pytest.mark.parametrize("estimator", ["elbo", "spg"])
def test_bias_corrected_kl_adds_kl_times_the_gradient_of_the_log_ratio(tmp_path, tokenizer, tiny_model_dir,
                                                                         estimator):
    """On-policy the ratio is 1, so the loss is unchanged, but its gradient gains beta * sum_b w_b kl_b grad ELBO_b
    (TRL's use_bias_correction_kl, on the sequence ratio)."""
    def gradient(correct: bool) -> tuple[torch.Tensor, torch.Tensor]:
        trainer.args.use_bias_correction_kl = correct
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in params])

    trainer = _trainer(tiny_model_dir, None, tmp_path, likelihood_estimator=estimator, beta=0.5)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference, so that the KL is not 0
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    inputs = _first_micro_batch(trainer)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    plain_loss, plain = gradient(False)
    corrected_loss, corrected = gradient(True)
    assert torch.allclose(plain_loss, corrected_loss, atol=1e-5)
    elbo = _elbo(trainer, inputs)
    ref = losses.sequence_elbo(inputs["ref_per_token_logps"], inputs["completion_mask"], "sequence")
    weights = losses.sequence_weights(inputs["completion_mask"].sum(-1), "mean")
    trainer.model.zero_grad()
    (0.5 * (weights * (elbo - ref).detach() * elbo).sum()).backward()
    expected = torch.cat([p.grad.flatten() for p in params])
    assert expected.abs().max() > 1e-3
    assert torch.allclose(corrected - plain, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("estimator", ["elbo", "spg"])
def test_adaptive_entropy_follows_trls_controller_and_is_checkpointed(tmp_path, tokenizer, estimator):
    """Entropy under the target: the coefficient rises by delta per step, and the one set at the previous step
    applies (none at the first, TRL's conservative start). Above the target it falls and never applies. The state
    is saved with the checkpoint as TRL saves it."""
    def run(target: float, folder: str, steps: int = 3, resume: str | None = None) -> DiPODTrainer:
        model = build_tiny_model(tokenizer, "modernbert")
        trainer = _trainer(model, tokenizer, tmp_path / folder, likelihood_estimator=estimator, max_steps=steps,
                           use_adaptive_entropy=True, entropy_coef=0.1, entropy_coef_delta=0.05,
                           entropy_coef_min=0.02, entropy_target=target, save_strategy="steps", save_steps=3)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    rising = run(100.0, "rising")
    logs = [h for h in rising.state.log_history if "loss" in h and "entropy" in h]
    assert [h["entropy_coef"] for h in logs] == pytest.approx([0.15, 0.2, 0.25])
    applied = [0.0, 0.15, 0.2]
    for h, coef in zip(logs, applied):
        assert h["loss"] == pytest.approx(h["policy_loss"] - coef * h["entropy"], abs=1e-3)
    state = json.loads((tmp_path / "rising" / "out" / "checkpoint-3" / "entropy_ctrl_state.json").read_text())
    assert state["entropy_coef"] == pytest.approx(0.25) and state["last_world_entropy"] < 100.0
    checkpoint = str(tmp_path / "rising" / "out" / "checkpoint-3")
    resumed = run(100.0, "rising", steps=4, resume=checkpoint)  # the controller continues where it stopped
    last = [h for h in resumed.state.log_history if "loss" in h and "entropy" in h][-1]
    assert last["entropy_coef"] == pytest.approx(0.3)
    assert last["loss"] == pytest.approx(last["policy_loss"] - 0.25 * last["entropy"], abs=1e-3)

    falling = run(0.0, "falling")
    logs = [h for h in falling.state.log_history if "loss" in h and "entropy" in h]
    assert [h["entropy_coef"] for h in logs] == pytest.approx([0.05, 0.02, 0.02])  # clamped at entropy_coef_min
    assert all(h["loss"] == pytest.approx(h["policy_loss"], abs=1e-5) for h in logs)


# ------------------------------------------------------------------------------------------- bidirectional MoE
def test_aux_loss_of_a_bidirectional_moe_is_transformers_own(tokenizer):
    """The likelihood's forward (no padding mask passed, LLaDA's convention) records the load-balancing loss over
    the real tokens; it equals what the model computes itself with output_router_logits and the padding mask."""
    model = build_tiny_model(tokenizer, "moe").eval()
    dllm = diffusion_adapter(model, tokenizer, attend_to_padding=False)
    ids = torch.randint(10, 60, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    with router_aux_losses() as collected:
        dllm.logits(model, ids, mask)
    own = model(input_ids=ids, attention_mask=mask, output_router_logits=True).aux_loss
    assert len(collected) == 1 and torch.allclose(collected[0], own, atol=1e-6)
    with router_aux_losses() as unmasked:
        dllm.logits(model, ids, None)
    assert not torch.allclose(unmasked[0], own, atol=1e-4)  # padding would count without the mask
    with router_aux_losses(enabled=False) as disabled:  # no hooks, nothing computed
        dllm.logits(model, ids, mask)
    assert disabled == []


@pytest.mark.parametrize("estimator", ["elbo", "one_step", "spg"])
def test_bidirectional_moe_aux_loss_is_added_and_logged_under_every_estimator(tmp_path, tokenizer, estimator):
    """A full-attention MoE (Qwen3-MoE's weights, LLaDA-MoE's shape): TRL's router_aux_loss_coef term is added and
    logged under every estimator and moves the loss by coef * aux_loss; 0.0 turns it off."""
    def run(coef):
        model = build_tiny_model(tokenizer, "moe")
        trainer = _trainer(model, tokenizer, tmp_path / str(coef), likelihood_estimator=estimator, max_steps=1,
                           router_aux_loss_coef=coef, save_strategy="no")
        trainer.train()
        return trainer

    assert_aux_loss_is_added_and_logged(run, config_coef=0.001)  # Qwen3-MoE's config value, as TRL takes it


def assert_aux_loss_is_added_and_logged(run, config_coef: float) -> None:
    """`run(coef)` trains one step with router_aux_loss_coef=coef: coef 10 logs the load-balancing loss and moves
    the loss by 10 * aux_loss, 0.0 logs none, and None takes the model config's coefficient (as TRL)."""
    on, off = run(10.0), run(0.0)
    aux = logged(on, "aux_loss")
    assert aux and all(a >= 1.0 for a in aux)  # a load-balancing loss is >= 1 (1 when perfectly balanced)
    assert not logged(off, "aux_loss")
    assert logged(on, "loss")[0] == pytest.approx(logged(off, "loss")[0] + 10.0 * aux[0], rel=1e-3, abs=1e-3)
    assert run(None).router_aux_loss_coef == pytest.approx(config_coef)


# ------------------------------------------------------------------------------ on the shared LLaDA / Dream fixtures
SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llada-tiny", "dream-tiny"])
@pytest.mark.parametrize("estimator", ["elbo", "spg"])
def test_trls_loss_options_train_the_shared_llada_and_dream(tmp_path, name, estimator):
    """Every loss option at once, off-policy (num_iterations 2) with a KL reference, on the Hub-layout checkpoints:
    the run trains, and the logged terms add up: loss = policy_loss - applied coef * entropy + DiPOD term."""
    if not (SHARED / name).is_dir():
        pytest.skip(f"../shared/models/{name} is not available")
    ratio_options = dict(importance_sampling_level="sequence", off_policy_mask_threshold=0.5) \
        if estimator == "elbo" else {}
    args = make_config(tmp_path, likelihood_estimator=estimator, loss_type="dr_grpo", beta=0.04,
                       use_bias_correction_kl=True, use_adaptive_entropy=True, entropy_coef=0.05,
                       entropy_target=100.0, num_iterations=2, max_steps=2, max_completion_length=8,
                       per_device_train_batch_size=4, save_strategy="no", **ratio_options)
    trainer = DiPODTrainer(str(SHARED / name), [digit_reward], args=args, train_dataset=make_dataset())
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    logs = [h for h in trainer.state.log_history if "loss" in h and "entropy" in h]
    assert len(logs) == 2 and logs[0]["kl"] == logs[0]["kl"]
    applied = [0.0, logs[0]["entropy_coef"]]  # TRL's controller: none at the first step, then the last coefficient
    for h, coef in zip(logs, applied):
        assert h["loss"] == pytest.approx(h["policy_loss"] - coef * h["entropy"] + h["dipod/regularizer"], abs=1e-3)


@pytest.mark.parametrize("estimator", ["elbo", "spg", "one_step"])
def test_per_token_entropies_are_the_predictive_entropies_at_the_scored_positions(tmp_path, tokenizer, tiny_model,
                                                                                  estimator):
    """TRL's signature with compute_entropy: real entropies (not zeros) at the positions the estimate scores, between
    0 and log V, with gradients only while the entropy bonus is on (as TRL)."""
    trainer = _trainer(tiny_model, tokenizer, tmp_path, likelihood_estimator=estimator, entropy_coef=0.1)
    ids = torch.randint(10, 60, (3, 14), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    torch.manual_seed(0)
    logps, entropies, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 8,
                                                                     compute_entropy=True)
    assert entropies.shape == (3, 8) and entropies.requires_grad
    scored = logps != 0
    assert scored.any() and (entropies[scored] > 0).all()
    assert (entropies <= torch.log(torch.tensor(float(len(tokenizer)))) + 1e-4).all()
    assert (entropies[~scored] == 0).all()
    trainer._entropy_bonus_enabled = False
    _, detached, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 8, compute_entropy=True)
    assert not detached.requires_grad


def test_mean_over_masked_draws():
    from dipod_trl.likelihood import mean_over_masked_draws

    values = torch.tensor([[[1.0, 2.0, 3.0]], [[5.0, 6.0, 7.0]]])
    masks = torch.tensor([[[True, True, False]], [[True, False, False]]])
    assert mean_over_masked_draws(values, masks).tolist() == [[3.0, 2.0, 0.0]]
