import pytest
import torch

from dipod_trl import losses


def test_fpo_at_ratio_one_is_minus_advantage_and_gradient_flows():
    elbo = torch.tensor([-10.0, -20.0, -5.0], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss, ratio = losses.fpo_policy_loss(elbo, elbo.detach(), adv, 0.2, 0.2)
    assert torch.equal(ratio, torch.ones(3))
    assert torch.allclose(loss, -adv)
    loss.sum().backward()
    assert torch.allclose(elbo.grad, -adv)


def test_fpo_clipping_stops_gradient_outside_trust_region():
    old = torch.zeros(4)
    new = torch.tensor([0.5, -0.5, 0.5, -0.5], requires_grad=True)  # ratios e^0.5 > 1.2 and e^-0.5 < 0.8
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, _ = losses.fpo_policy_loss(new, old, adv, 0.2, 0.2)
    loss.sum().backward()
    # clipped: positive advantage above 1+eps, negative advantage below 1-eps; the other two keep their gradient
    assert new.grad[0] == 0 and new.grad[1] == 0
    assert new.grad[2] != 0 and new.grad[3] != 0
    capped, _ = losses.fpo_policy_loss(torch.tensor([3.0]), torch.zeros(1), torch.tensor([-1.0]), 0.2, 0.2, delta=2.0)
    assert torch.allclose(capped, torch.tensor([2.0]))


def test_sequence_elbo_normalizations_and_aggregate_skip_empty_rows():
    per_token = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert losses.sequence_elbo(per_token, mask, "sequence").tolist() == [-6.0, -4.0, 0.0]
    assert losses.sequence_elbo(per_token, mask, "token").tolist() == [-2.0, -4.0, 0.0]
    assert losses.aggregate(torch.tensor([1.0, 3.0, 100.0]), mask.sum(-1) > 0).item() == 2.0
    reg = losses.dipod_regularizer(torch.tensor([-6.0, -4.0, 0.0]), losses.sequence_weights(mask.sum(-1), "mean"), 0.05)
    assert torch.isclose(reg, torch.tensor(0.25))


def test_spg_eubo_with_every_token_masked_once_equals_elbo_at_beta_one():
    logps = torch.tensor([[[-1.0, -2.0, -0.5]]])  # S=1, B=1, C=3, every token masked (k = L, weight 1)
    masks = torch.ones(1, 1, 3, dtype=torch.bool)
    weights = torch.ones(1, 1)
    cm = torch.ones(1, 3)
    eubo = losses.spg_eubo(logps, masks, weights, cm, beta=1.0, normalization="sequence")
    assert torch.allclose(eubo, torch.tensor([-3.5]))
    # Jensen: for beta > 1 the Renyi bound over two draws lies above the average log-prob
    two = torch.tensor([[[-1.0, -3.0]], [[-2.0, -1.0]]])
    both = torch.ones(2, 1, 2, dtype=torch.bool)
    upper = losses.spg_eubo(two, both, torch.ones(2, 1), torch.ones(1, 2), 2.0, "token")
    assert upper.item() > two.mean().item()


def test_spg_uses_lower_bound_for_positive_and_mix_for_negative_advantages():
    elbo, eubo = torch.tensor([-4.0, -4.0]), torch.tensor([-2.0, -2.0])
    adv = torch.tensor([1.0, -1.0])
    loss = losses.spg_policy_loss(elbo, eubo, adv, omega=0.5)
    assert loss.tolist() == [4.0, -3.0]


def test_length_weighted_aggregation_and_spg_per_token_elbo():
    per_seq, valid = torch.tensor([1.0, 3.0, 100.0]), torch.tensor([True, True, False])
    lengths = torch.tensor([1, 3, 5])
    assert losses.aggregate(per_seq, valid, lengths).item() == (1 * 1 + 3 * 3) / 4
    weights = losses.sequence_weights(torch.tensor([1, 3, 0]), "length")  # the invalid row scores nothing
    assert torch.isclose(losses.dipod_regularizer(-per_seq, weights, 0.5), torch.tensor(0.5 * 10 / 4))
    # token normalisation of the L/k-weighted draw = SPG's mean log-prob over the masked tokens
    logps = torch.tensor([[[-1.0, -2.0, -4.0, 0.0]]])
    masks = torch.tensor([[[True, False, True, False]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    per_token = (logps * masks * (3 / 2)).mean(0)
    assert torch.isclose(losses.sequence_elbo(per_token, mask, "token"), torch.tensor(-2.5))


# ------------------------------------------------------------------ TRL's loss options on the sequence-level losses
def _trl_aggregate(per_token_loss, mask, loss_type, max_completion_length, normalizer):
    """GRPOTrainer._compute_loss's aggregation by loss_type (TRL 1.x), transcribed."""
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    if loss_type == "dapo":
        return (per_token_loss * mask).sum() / normalizer
    if loss_type == "luspo":
        return (per_token_loss * mask).sum(-1).mean()
    raise AssertionError(loss_type)


@pytest.mark.parametrize("loss_type", losses.LOSS_TYPE_AGGREGATIONS)
def test_sequence_weights_aggregate_as_trl_aggregates_a_sequence_level_loss(loss_type):
    """A sequence loss broadcast over its scored tokens, as TRL's importance_sampling_level='sequence' makes it, and
    aggregated by TRL's formula, equals sum_b w_b l_b; one row scores nothing."""
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(5, 7, generator=g) < 0.7).float()
    mask[3] = 0.0
    per_seq = torch.randn(5, generator=g)
    expected = _trl_aggregate(per_seq[:, None].expand(5, 7), mask, loss_type, 7, normalizer=13.0)
    weights = losses.sequence_weights(mask.sum(-1), loss_type, max_completion_length=7, num_tokens=13.0)
    assert torch.isclose((weights * per_seq).sum(), expected, atol=1e-6)
    assert weights[3] == 0.0


def test_the_default_rules_and_an_unknown_rule():
    lengths = torch.tensor([2, 0, 6])
    assert losses.sequence_weights(lengths, "mean").tolist() == [0.5, 0.0, 0.5]
    assert losses.sequence_weights(lengths, "length").tolist() == losses.sequence_weights(lengths, "bnpo").tolist()
    with pytest.raises(ValueError, match="cispo"):
        losses.sequence_weights(lengths, "cispo")


def test_sequence_level_ratio_is_gspo_length_normalised():
    new, old = torch.tensor([-10.0, -30.0]), torch.tensor([-12.0, -27.0])
    lengths = torch.tensor([4, 6])
    _, token_level = losses.fpo_policy_loss(new, old, torch.ones(2), 0.2, 0.2)
    _, sequence_level = losses.fpo_policy_loss(new, old, torch.ones(2), 0.2, 0.2, lengths=lengths)
    assert torch.allclose(token_level, torch.exp(new - old))
    assert torch.allclose(sequence_level, torch.exp((new - old) / lengths))
    # the per-token ELBO (normalization='token') gives GSPO's ratio without the lengths
    _, per_token = losses.fpo_policy_loss(new / lengths, old / lengths, torch.ones(2), 0.2, 0.2)
    assert torch.allclose(per_token, sequence_level)


def test_off_policy_keep_is_trls_off_policy_sequence_mask():
    """TRL's own get_off_policy_mask on per-token log-probs whose mean difference per row is the sequence
    log-ratio gives the same mask."""
    from trl import GRPOTrainer

    advantages = torch.tensor([1.0, -1.0, -1.0, -0.5, 0.0])
    log_ratio = torch.tensor([-3.0, -3.0, -0.05, 0.4, -9.0])  # per token: new - old
    keep = losses.off_policy_keep(advantages, log_ratio, threshold=0.1)
    assert keep.tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]
    mask = torch.ones(5, 4)
    old = torch.randn(5, 4)
    trl_mask = GRPOTrainer.get_off_policy_mask(advantages[:, None], old + log_ratio[:, None], old, mask, 0.1)
    assert torch.equal(trl_mask.squeeze(1), keep)


def test_bias_corrected_kl_is_the_ratio_weighted_estimate_with_its_gradient():
    elbo = torch.tensor([-5.0, -7.0], requires_grad=True)
    ref = torch.tensor([-6.0, -6.0])
    ratio = torch.exp(elbo - elbo.detach())  # on-policy: 1
    plain = losses.elbo_kl(elbo, ref)
    corrected = losses.elbo_kl(elbo, ref, ratio)
    assert torch.allclose(corrected, plain)
    (grad,) = torch.autograd.grad(corrected.sum(), elbo)
    assert torch.allclose(grad, 1.0 + (elbo - ref).detach())  # grad kl + kl * grad log ratio
