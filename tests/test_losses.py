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
    reg = losses.dipod_regularizer(torch.tensor([-6.0, -4.0, 0.0]), mask.sum(-1) > 0, 0.05)
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
    assert torch.isclose(losses.dipod_regularizer(-per_seq, valid, 0.5, lengths), torch.tensor(0.5 * 10 / 4))
    # token normalisation of the L/k-weighted draw = SPG's mean log-prob over the masked tokens
    logps = torch.tensor([[[-1.0, -2.0, -4.0, 0.0]]])
    masks = torch.tensor([[[True, False, True, False]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    per_token = (logps * masks * (3 / 2)).mean(0)
    assert torch.isclose(losses.sequence_elbo(per_token, mask, "token"), torch.tensor(-2.5))
