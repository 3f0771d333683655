import itertools
import math

import pytest
import torch
from conftest import BagOfTokensLM, ContextFreeLM
from datasets import Dataset

from dipod_trl import DiPODConfig, DiPODTrainer
from dipod_trl.diagnostics import (
    DriftCallback,
    add_drift_diagnostics,
    drift_metrics,
    iw_loglik,
    order_log_weights,
    order_ranks,
)
from dipod_trl.likelihood import STREAM_DIAGNOSTICS, elbo_per_token
from dipod_trl.models import DiffusionLM

VOCAB, MASK = 12, 0
ADAPTER = DiffusionLM(MASK)
PROMPT = [1, 6]


def _log_w(model, x, order):
    """log w_sigma(x) by a plain loop: reveal the completion along `order`, scoring each token before revealing it."""
    current = torch.tensor(PROMPT + [MASK] * len(x))
    total = 0.0
    for pos in order:
        logits = model(current.unsqueeze(0)).logits[0, len(PROMPT) + pos]
        total += torch.log_softmax(logits, -1)[x[pos]].item()
        current[len(PROMPT) + pos] = x[pos]
    return total


def _exact(model, x):
    """Exact (ELBO, log p) over all orders: mean and log-mean-exp of log w_sigma."""
    with torch.no_grad():
        logs = torch.tensor([_log_w(model, x, order) for order in itertools.permutations(range(len(x)))])
    return logs.mean().item(), (torch.logsumexp(logs, 0) - math.log(len(logs))).item()


def _rows(x, n):
    ids = torch.tensor([PROMPT + x]).repeat(n, 1)
    return ids, torch.ones_like(ids)


def test_order_ranks_are_seeded_permutations_of_the_valid_positions():
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]] * 200)
    ranks = order_ranks(torch.arange(400), mask, num_orders=3)
    assert ranks.shape == (3, 400, 5)
    assert (ranks.sort(-1).values == torch.arange(5)).all()  # each row is a permutation
    assert (ranks[:, 1::2, 3:] >= 3).all()  # padding comes last, after the 3 valid positions
    assert torch.equal(ranks, order_ranks(torch.arange(400), mask, 3))
    first = torch.bincount(ranks[:, 0::2].argmin(-1).flatten(), minlength=5).float() / 600
    assert torch.allclose(first, torch.full((5,), 0.2), atol=0.05)  # uniform over orders


def test_order_log_weights_match_a_plain_sequential_loop():
    model = BagOfTokensLM(VOCAB, seed=3)
    torch.manual_seed(0)
    ids = torch.randint(1, VOCAB, (3, 7))
    attn = torch.ones_like(ids)
    attn[2, -2:] = 0  # completion of 3 valid tokens, then padding (kept in the input, never scored or unmasked)
    seeds = torch.tensor([5, 6, 7])
    log_w = order_log_weights(model, ADAPTER, ids, attn, 5, seeds, num_orders=4, batch_size=5)
    ranks = order_ranks(seeds, attn[:, -5:], 4)
    for k, b in itertools.product(range(4), range(3)):
        length = int(attn[b, -5:].sum())
        order = ranks[k, b].argsort()[:length].tolist()
        current = ids[b].clone()
        current[2:][:length] = MASK
        expected = 0.0
        with torch.no_grad():
            for pos in order:
                logits = model(current.unsqueeze(0)).logits[0, 2 + pos]
                expected += torch.log_softmax(logits, -1)[ids[b, 2 + pos]].item()
                current[2 + pos] = ids[b, 2 + pos]
        assert log_w[k, b].item() == pytest.approx(expected, abs=1e-4), (k, b)


def test_gap_is_zero_for_a_context_free_model():
    model = ContextFreeLM(len(PROMPT) + 5, VOCAB)
    ids = torch.tensor([PROMPT + [3, 4, 8, 8, 11], PROMPT + [2, 2, 9, 7, 7]]).repeat(64, 1)
    attn = torch.ones_like(ids)
    attn[1::2, -2:] = 0  # every other row: 3 valid tokens
    table = torch.log_softmax(model.table.detach(), -1)
    exact = torch.stack([(table[2:, :].gather(1, row[2:, None])[:, 0] * m[2:]).sum() for row, m in zip(ids, attn)])
    out = drift_metrics(model, ADAPTER, ids, attn, 5, torch.arange(128), num_orders=6, elbo_samples=64)
    assert torch.allclose(out["loglik"], exact, atol=1e-4)  # every order gives the same likelihood
    assert torch.allclose(out["gap_orders"], torch.zeros(128), atol=1e-4)
    assert out["elbo"].mean().item() == pytest.approx(exact.mean().item(), abs=0.05)
    assert abs(out["gap"].mean().item()) < 0.05


def test_iw_bound_rises_with_k_towards_log_likelihood_and_k1_matches_elbo():
    model = BagOfTokensLM(VOCAB, seed=1)
    xs = [[2, 9, 4, 4], [7, 3, 3, 10]]
    n = 600
    for x in xs:
        exact_elbo, exact_loglik = _exact(model, x)
        assert exact_loglik - exact_elbo > 0.05  # context matters: there is a gap to close
        ids, attn = _rows(x, n)
        means = {}
        for k in (1, 4, 32):
            log_w = order_log_weights(model, ADAPTER, ids, attn, len(x), torch.arange(n), num_orders=k)
            iw = iw_loglik(log_w)
            means[k] = (iw.mean().item(), iw.std().item() / math.sqrt(n))
        with torch.no_grad():
            elbo = elbo_per_token(model, ADAPTER, ids, attn, len(x), torch.arange(n), 1, stream=STREAM_DIAGNOSTICS)
        elbo = elbo.sum(-1)
        elbo_mean, elbo_err = elbo.mean().item(), elbo.std().item() / math.sqrt(n)
        (m1, e1), (m4, _), (m32, e32) = means[1], means[4], means[32]
        assert abs(m1 - exact_elbo) < 4 * e1 + 1e-3, (m1, exact_elbo)  # K = 1 is an unbiased ELBO estimate
        assert abs(m1 - elbo_mean) < 4 * math.hypot(e1, elbo_err), (m1, elbo_mean)  # ... as is the MC ELBO
        assert m1 < m4 < m32, means
        assert m32 < exact_loglik + 4 * e32 and m32 > exact_elbo + 0.5 * (exact_loglik - exact_elbo), means


def test_unattached_callback_says_how_to_attach():
    with pytest.raises(RuntimeError, match="attach"):
        DriftCallback().probe()
    with pytest.raises(ValueError):
        DriftCallback(num_orders=0)


def digit_reward(prompts, completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def _trainer(tmp_path, tokenizer, tiny_model):
    args = DiPODConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4, max_completion_length=8,
        block_length=4, diffusion_steps=4, max_steps=2, learning_rate=3e-3, logging_steps=1, report_to="none",
        use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0, bf16=False, num_iterations=2,
    )
    data = Dataset.from_dict({"prompt": [f"q{i}:" for i in range(16)]})
    return DiPODTrainer(tiny_model, [digit_reward], args=args, train_dataset=data, processing_class=tokenizer)


def test_callback_logs_drift_through_a_real_run_without_changing_training(tmp_path, tokenizer):
    from tiny import build_tiny_model

    plain = _trainer(tmp_path, tokenizer, build_tiny_model(tokenizer))
    plain.train()
    trainer = _trainer(tmp_path, tokenizer, build_tiny_model(tokenizer))
    callback = add_drift_diagnostics(trainer, probe_every=1, num_orders=3, probe_size=4, elbo_samples=4)
    assert trainer.callback_handler.callbacks.count(callback) == 1 and callback.attach(trainer) is callback
    assert trainer.callback_handler.callbacks.count(callback) == 1
    trainer.train()

    records = [h for h in trainer.state.log_history if "drift/gap" in h]
    assert [r["step"] for r in records] == [0, 1, 2]
    for r in records:
        assert r["drift/elbo"] < 0 and r["drift/loglik"] < 0 and r["drift/gap_orders"] >= -1e-4
        assert r["drift/gap"] == pytest.approx(r["drift/loglik"] - r["drift/elbo"], abs=1e-4)
    assert [h["step"] for h in callback.history] == [0, 1, 2]
    # the probes use their own generator and no global randomness: training is unchanged, step metrics intact
    for key in ("reward", "dipod/elbo", "dipod/policy_loss", "train_loss"):
        ours = [h[key] for h in trainer.state.log_history if key in h]
        assert ours and ours == pytest.approx([h[key] for h in plain.state.log_history if key in h]), key
