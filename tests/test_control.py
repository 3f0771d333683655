"""Tests for dipod_trl.control: CFM / FPO / FPO++ / DiPOD losses, the exact flow log-likelihood, the flow sampler,
self-distillation at init, the drift probe, the trainer, the config, and a short learning run."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")

from dipod_trl.control import (  # noqa: E402
    ConfigError,
    ControlConfig,
    ControlTrainer,
    FlowPolicy,
    GaussianPolicy,
    cfm_loss,
    clipped_surrogate,
    draw_cfm_noise,
    flow_log_likelihood,
    fpo_loss,
    gae,
    load_config,
)
from dipod_trl.control.envs import make_vec_env  # noqa: E402
from dipod_trl.control.report import iqm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HAS_MUJOCO = importlib.util.find_spec("mujoco") is not None
DRIFT_KEYS = ("logp_exact", "likelihood_gap", "gap_std", "ratio_err", "ratio_corr", "exact_kl")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny nets: one thread is fastest and avoids OpenMP stalls on a busy machine. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tiny(**kw) -> ControlConfig:
    base = dict(num_envs=2, num_steps=32, num_minibatches=2, update_epochs=1, hidden_sizes=[16], flow_steps=3, n_mc=2,
                eval_episodes=1, total_timesteps=64, drift_samples=8, drift_ode_steps=4)  # fmt: skip
    return ControlConfig(**{**base, **kw})


# ---------------------------------------------------------------- losses
@pytest.mark.parametrize("per_sample", [False, True])
def test_ratio_exactly_one_before_update_with_shared_draws(per_sample):
    torch.manual_seed(0)
    policy = FlowPolicy(3, 2, [32, 32])
    obs, act, adv = torch.randn(64, 3), torch.randn(64, 2), torch.randn(64)
    t, eps = draw_cfm_noise(64, 8, 2)
    old = policy.cfm_loss(obs, act, t, eps)
    new = policy.cfm_loss(obs, act, t, eps)
    assert old.shape == (64, 8) and torch.equal(old, new)
    loss, stats = fpo_loss(new, old, adv, 0.2, per_sample_ratio=per_sample)
    assert stats["ratio_mean"] == 1.0 and stats["clipfrac"] == 0.0
    torch.testing.assert_close(loss, -adv.mean())
    # fresh draws would give a noisy ratio != 1: sharing the draws is what makes it exact
    t2, eps2 = draw_cfm_noise(64, 8, 2)
    assert not torch.allclose(policy.cfm_loss(obs, act, t2, eps2), old)


def test_logratio_clamp_is_straight_through_and_keeps_the_ppo_gradient():
    """The audited case: A = -1, L_old - L_new = 1.5. PPO-clip keeps the unclipped branch (r = e^1.5 > 1 + c), so
    d loss / d L_new = -r = -4.482; the old hard clamp to +-1 made it 0."""
    adv, old = -torch.ones(1), torch.full((1, 1), 2.0)

    def grad(**kw) -> tuple[float, dict]:
        new = torch.full((1, 1), 0.5, requires_grad=True)
        loss, stats = fpo_loss(new, old, adv, 0.2, **kw)
        loss.backward()
        return new.grad.item(), stats

    g, stats = grad()  # default clamp (10) does not bind
    assert g == pytest.approx(-math.exp(1.5), abs=1e-4) and g == pytest.approx(-4.482, abs=1e-3)
    assert stats["ratio_mean"] == pytest.approx(math.exp(1.5))
    g, stats = grad(logratio_clamp_max=1.0)  # binding clamp: value clamped, gradient kept
    assert stats["ratio_mean"] == pytest.approx(math.e) and g == pytest.approx(-math.e, abs=1e-4)
    new = torch.full((1, 1), 0.5, requires_grad=True)  # the removed hard clamp, for contrast
    clipped_surrogate((old - new).clamp(-1, 1).squeeze(-1), adv, 0.2)[0].backward()
    assert new.grad.item() == 0.0
    # the clamp also keeps exp finite on a huge log-ratio
    loss, stats = fpo_loss(torch.zeros(4, 2), torch.full((4, 2), 500.0), -torch.ones(4), 0.2)
    assert torch.isfinite(loss) and stats["ratio_mean"] == pytest.approx(math.exp(10.0))


def test_fpo_pp_uses_one_ratio_per_draw():
    torch.manual_seed(0)
    old, adv = torch.rand(16, 4) * 2, torch.randn(16)
    new = (old + 0.3 * torch.randn(16, 4)).requires_grad_(True)
    loss, stats = fpo_loss(new, old, adv, 0.2, per_sample_ratio=True)
    ratio = (old - new).exp()  # (B, n): one ratio per (t, eps) draw, advantage shared by the draws of an action
    a = adv[:, None]
    expected = -torch.min(ratio * a, ratio.clamp(0.8, 1.2) * a).mean()
    torch.testing.assert_close(loss, expected)
    assert stats["ratio_mean"] == pytest.approx(ratio.mean().item())
    per_action, _ = fpo_loss(new, old, adv, 0.2, per_sample_ratio=False)  # FPO: exp of the mean difference
    r1 = (old.mean(-1) - new.mean(-1)).exp()
    torch.testing.assert_close(per_action, -torch.min(r1 * adv, r1.clamp(0.8, 1.2) * adv).mean())
    assert not torch.allclose(loss, per_action)
    # each draw gets its own gradient: a draw whose ratio is clipped contributes none
    (g,) = torch.autograd.grad(loss, new)
    clipped = ((ratio - 1).abs() > 0.2) & (ratio.clamp(0.8, 1.2) * a < ratio * a)
    assert clipped.any() and (g[clipped] == 0).all() and (g[~clipped] != 0).all()


def test_negative_advantage_cfm_clamp():
    """FPO++: where A < 0 and the new CFM loss exceeds the clamp, the draw stops contributing gradient."""
    old = torch.full((2, 3), 25.0)
    new = torch.full((2, 3), 24.0, requires_grad=True)  # a bad and a good action, both with CFM loss above 20
    adv = torch.tensor([-1.0, 1.0])
    loss, _ = fpo_loss(new, old, adv, 0.2, per_sample_ratio=True, neg_adv_cfm_max=20.0)
    (g,) = torch.autograd.grad(loss, new)
    (g_free,) = torch.autograd.grad(fpo_loss(new, old, adv, 0.2, per_sample_ratio=True)[0], new)
    assert (g[0] == 0).all() and (g_free[0] != 0).all()  # A < 0: clamped, no gradient
    assert torch.equal(g[1], g_free[1])  # A > 0: untouched
    new2 = torch.full((2, 3), 15.0)  # below the clamp nothing changes
    a, _ = fpo_loss(new2, old - 9, adv, 0.2, per_sample_ratio=True, neg_adv_cfm_max=20.0)
    b, _ = fpo_loss(new2, old - 9, adv, 0.2, per_sample_ratio=True)
    torch.testing.assert_close(a, b)


def test_aspo_is_ppo_for_positive_and_spo_for_negative_advantages():
    logratio, adv, c = torch.tensor([0.5, 0.5, -0.4]), torch.tensor([1.0, -2.0, -1.0]), 0.2
    loss, _ = clipped_surrogate(logratio, adv, c, trust_region="aspo")
    r = logratio.exp()
    ppo0 = -min(r[0] * 1.0, 1.2 * 1.0)
    spo = [-(r[i] * adv[i] - adv[i].abs() / (2 * c) * (r[i] - 1) ** 2) for i in (1, 2)]
    torch.testing.assert_close(loss, torch.stack([torch.as_tensor(ppo0), *spo]).mean())


def test_cfm_loss_is_zero_for_exact_flow_to_point_mass():
    torch.manual_seed(0)
    w = torch.randn(4, 2)
    target = lambda o: torch.tanh(o @ w)  # noqa: E731 - one fixed action per observation
    exact = lambda x, t, o: (target(o) - x) / (1 - t.unsqueeze(-1))  # noqa: E731 - optimal field = a* - eps on the path
    obs = torch.randn(128, 4)
    t, eps = draw_cfm_noise(128, 16, 2)
    t = t.clamp(max=0.99)
    assert cfm_loss(exact, obs, target(obs), t, eps).max() < 1e-8
    assert cfm_loss(exact, obs, target(obs) + 0.5, t, eps).mean() > 0.1
    # Euler integration of that straight-line field lands exactly on the target from any noise
    policy = FlowPolicy(4, 2, [8], flow_steps=4)
    policy.velocity = exact
    torch.testing.assert_close(policy.sample(obs), target(obs), rtol=0, atol=1e-5)


def test_dipod_term_adds_exactly_beta_times_cfm():
    torch.manual_seed(0)
    new, old, adv, dipod = torch.rand(32, 2), torch.rand(32, 2), torch.randn(32), torch.rand(32, 2) * 3
    base, _ = fpo_loss(new, old, adv, 0.2, dipod_cfm=dipod, dipod_beta=0.0)
    for beta in (0.05, 0.5, 2.0):
        with_term, stats = fpo_loss(new, old, adv, 0.2, dipod_cfm=dipod, dipod_beta=beta)
        torch.testing.assert_close(with_term - base, beta * dipod.mean())
        assert stats["dipod_cfm"] == pytest.approx(dipod.mean().item())


def test_gae_matches_discounted_returns_without_bootstrap():
    rewards, values = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[0.5], [0.5], [0.5]])
    dones = torch.tensor([[0.0], [0.0], [1.0]])
    adv = gae(rewards, values, dones, last_value=torch.tensor([100.0]), gamma=0.5, lam=1.0)
    expected = torch.tensor([[1 + 0.5 * 2 + 0.25 * 3], [2 + 0.5 * 3], [3.0]]) - values
    torch.testing.assert_close(adv, expected)


# ---------------------------------------------------------------- exact log-likelihood
def test_exact_loglik_matches_gaussian_closed_form():
    """The marginal-preserving field of data N(mu(o), diag sigma^2) under x_t = (1-t) eps + t a carries N(0, I) to
    exactly that Gaussian, so the ODE log-density must equal the Gaussian's."""
    torch.manual_seed(0)
    w, sigma = torch.randn(2, 3), torch.tensor([0.3, 0.7, 1.5])
    mu = lambda o: torch.tanh(o @ w)  # noqa: E731

    def field(x, t, o):
        t = t.unsqueeze(-1)
        s2 = (1 - t) ** 2 + t**2 * sigma**2
        return mu(o) + (t * sigma**2 - (1 - t)) / s2 * (x - t * mu(o))

    obs = torch.randn(64, 2)
    act = mu(obs) + sigma * torch.randn(64, 3)
    exact = torch.distributions.Normal(mu(obs), sigma).log_prob(act).sum(-1)
    torch.testing.assert_close(flow_log_likelihood(field, obs, act, steps=32), exact, rtol=0, atol=1e-4)
    assert (flow_log_likelihood(field, obs, act, steps=2) - exact).abs().max() > 1e-3  # resolution matters


def test_exact_loglik_uses_the_trace_of_a_full_jacobian():
    """v = A x with a non-symmetric A: x_1 = expm(A) x_0, so a ~ N(0, M M^T) with M = expm(A)."""
    torch.manual_seed(1)
    a_mat = 0.6 * torch.randn(3, 3, dtype=torch.float64)
    field = lambda x, t, o: x @ a_mat.T  # noqa: E731
    m = torch.linalg.matrix_exp(a_mat)
    act = torch.randn(32, 3, dtype=torch.float64) @ m.T
    dist = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=torch.float64), m @ m.T)
    got = flow_log_likelihood(field, torch.zeros(32, 1, dtype=torch.float64), act, steps=32)
    torch.testing.assert_close(got, dist.log_prob(act), rtol=0, atol=1e-6)


def test_exact_loglik_of_a_flow_policy_integrates_to_one():
    torch.manual_seed(0)
    policy = FlowPolicy(2, 1, [32, 32])
    for p in policy.net[-1].parameters():  # a curved, non-Gaussian field
        torch.nn.init.normal_(p, std=0.7)
    grid = torch.linspace(-8, 8, 801).unsqueeze(-1)
    obs = torch.tensor([[0.3, -1.0]]).expand(801, -1)
    density = policy.exact_log_prob(obs, grid, ode_steps=32).exp()
    assert torch.trapezoid(density, grid.squeeze(-1)).item() == pytest.approx(1.0, abs=5e-3)


# ---------------------------------------------------------------- sampling, env plumbing
@pytest.mark.parametrize("algo", ["ppo", "fpo"])
@pytest.mark.parametrize("env_id", ["Pendulum-v1", pytest.param("HalfCheetah-v5", marks=pytest.mark.skipif(
    not HAS_MUJOCO, reason="mujoco not installed"))])  # fmt: skip
def test_actions_have_right_shape_and_stay_in_bounds(env_id, algo):
    trainer = ControlTrainer(_tiny(env_id=env_id, algo=algo, flow_steps=2))
    with torch.no_grad():  # exaggerate the policy output so that clipping is exercised
        for p in trainer.policy.parameters():
            p.mul_(50.0)
    space, sent = trainer.envs.single_action_space, []
    step = trainer.envs.step
    trainer.envs.step = lambda a: (sent.append(a.copy()), step(a))[1]
    ro = trainer.collect()
    assert ro.act.shape == (32, 2, space.shape[0])
    sent = np.stack(sent)
    assert sent.shape == (32, 2, *space.shape)
    assert (sent >= space.low).all() and (sent <= space.high).all()
    assert np.isclose(sent, space.high).any() or np.isclose(sent, space.low).any()  # clipping really happened
    obs = torch.randn(7, trainer.next_obs.shape[-1])
    for policy in (trainer.policy, GaussianPolicy(obs.shape[1], space.shape[0], [8])):
        assert policy.sample(obs).shape == (7, space.shape[0])
        assert policy.sample(obs, deterministic=True).shape == (7, space.shape[0])


def test_trainer_old_and_new_cfm_match_on_stored_draws():
    trainer = ControlTrainer(_tiny(algo="fpo", seed=1))
    ro = trainer.collect()
    obs, act = ro.obs.flatten(0, 1), ro.act.flatten(0, 1)
    full = trainer.policy.cfm_loss(obs, act, ro.cfm_t, ro.cfm_eps)
    idx = torch.randperm(obs.shape[0])[:16]
    mb = trainer.policy.cfm_loss(obs[idx], act[idx], ro.cfm_t[idx], ro.cfm_eps[idx])
    torch.testing.assert_close(mb, full[idx], rtol=0, atol=1e-6)
    # one full-batch minibatch: the only gradient step of the update sees a ratio of exactly 1
    for algo in ("fpo", "fpo++"):
        trainer = ControlTrainer(_tiny(algo=algo, seed=1, num_minibatches=1))
        stats = trainer.update(trainer.collect())
        assert stats["ratio_mean"] == 1.0 and stats["clipfrac"] == 0.0 and stats["approx_kl"] == 0.0


# ---------------------------------------------------------------- self-distillation at init, drift probe
def test_self_distillation_phase_trains_only_the_student_then_resets_the_optimizer():
    cfg = _tiny(algo="fpo++", self_distill_iters=6, self_distill_rollout_steps=2, self_distill_batch_size=16,
                self_distill_lr=1e-2)  # fmt: skip
    trainer = ControlTrainer(cfg)
    trainer.update(trainer.collect())  # give the main optimizer some state to be reset
    policy0, critic0 = copy.deepcopy(trainer.policy.state_dict()), copy.deepcopy(trainer.critic.state_dict())
    old_optimizer, step0 = trainer.optimizer, trainer.global_step
    stats = trainer.self_distill()
    teacher = trainer.teacher
    # teacher: a frozen copy of the policy as it was when the phase started
    assert all(not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, policy0[k], rtol=0, atol=0)
    # student actor trained, critic untouched
    assert any(not torch.equal(v, policy0[k]) for k, v in trainer.policy.state_dict().items())
    for k, v in trainer.critic.state_dict().items():
        torch.testing.assert_close(v, critic0[k], rtol=0, atol=0)
    # main optimizer rebuilt with fresh state over the same parameters
    assert trainer.optimizer is not old_optimizer and len(old_optimizer.state) > 0
    assert len(trainer.optimizer.state) == 0
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in [*trainer.policy.parameters(), *trainer.critic.parameters()]}  # fmt: skip
    # env steps of the phase are counted apart from the RL budget
    assert stats["sd_env_steps"] == trainer.distill_env_steps == 6 * 2 * cfg.num_envs
    assert trainer.global_step == step0


def test_self_distillation_data_comes_from_the_teacher(monkeypatch):
    trainer = ControlTrainer(_tiny(algo="fpo", self_distill_iters=2, self_distill_rollout_steps=3))
    calls = []
    original = FlowPolicy.sample

    def spy(self, obs, deterministic=False):
        calls.append((self is trainer.teacher, deterministic))
        return original(self, obs, deterministic)

    monkeypatch.setattr(FlowPolicy, "sample", spy)
    trainer.self_distill()
    assert calls == [(True, False)] * 6  # stochastic teacher samples only; the student never acts in the phase


def test_self_distillation_lowers_cfm_on_own_samples():
    torch.manual_seed(0)
    policy = FlowPolicy(3, 2, [64, 64])
    for p in policy.net[-1].parameters():  # make the initial policy obs-dependent and non-Gaussian
        torch.nn.init.normal_(p, std=0.5)
    obs = torch.randn(256, 3)
    acts = copy.deepcopy(policy).sample(obs)  # frozen samples of the initial policy
    t_eval, eps_eval = draw_cfm_noise(256, 32, 2)
    with torch.no_grad():
        before = policy.cfm_loss(obs, acts, t_eval, eps_eval).mean().item()
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(300):
        t, eps = draw_cfm_noise(256, 4, 2)
        loss = policy.cfm_loss(obs, acts, t, eps).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = policy.cfm_loss(obs, acts, t_eval, eps_eval).mean().item()
    assert after < 0.8 * before, (before, after)


def test_drift_probe_is_logged_and_leaves_training_unchanged():
    def run(drift: int) -> tuple[list[dict], list[dict]]:
        updates: list[dict] = []
        cfg = _tiny(algo="fpo++", seed=2, total_timesteps=192, drift_samples=drift, dipod_beta=0.1)
        rows = ControlTrainer(cfg).train(progress=False, on_update=updates.append)
        return rows, updates

    (rows_on, upd_on), (rows_off, upd_off) = run(16), run(0)
    assert len(upd_on) == len(upd_off) == 3
    for u in upd_on:
        assert all(math.isfinite(u[k]) for k in DRIFT_KEYS)
        assert u["gap_std"] >= 0 and u["ratio_err"] >= 0
    assert not any(k in u for u in upd_off for k in DRIFT_KEYS)
    for a, b in zip(upd_on, upd_off):
        assert (a["cfm_onpolicy"], a["policy_loss"], a["value_loss"]) == (b["cfm_onpolicy"], b["policy_loss"],
                                                                           b["value_loss"])  # fmt: skip
    assert [r["eval_return"] for r in rows_on] == [r["eval_return"] for r in rows_off]


def test_drift_probe_measures_exact_quantities():
    trainer = ControlTrainer(_tiny(algo="fpo", seed=4, drift_samples=8, drift_ode_steps=8))
    ro = trainer.collect()
    obs, act = ro.obs.flatten(0, 1), ro.act.flatten(0, 1)
    with torch.no_grad():
        old_cfm = trainer.policy.cfm_loss(obs, act, ro.cfm_t, ro.cfm_eps)
    probe = trainer._probe_before(obs, act, ro, old_cfm)
    logp = flow_log_likelihood(trainer.policy.velocity, probe["obs"], probe["act"], 8)
    torch.testing.assert_close(probe["logp"], logp)
    out = trainer._probe_after(probe, ro)  # no update in between: the exact and FPO log-ratios are both 0
    assert out["ratio_err"] == pytest.approx(0.0, abs=1e-5) and out["exact_kl"] == pytest.approx(0.0, abs=1e-5)
    assert out["likelihood_gap"] == pytest.approx((logp + old_cfm[probe["idx"]].mean(-1)).mean().item(), abs=1e-5)


def test_deterministic_given_seed():
    def run() -> list[dict]:
        cfg = _tiny(algo="fpo++", seed=3, total_timesteps=128, dipod_beta=0.05, self_distill_iters=2)
        return ControlTrainer(cfg).train(progress=False)

    a, b = run(), run()
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        ra.pop("wall_time"), rb.pop("wall_time")
        np.testing.assert_equal(ra, rb)  # exact, NaN == NaN


# ---------------------------------------------------------------- config
def test_algo_defaults_and_method_labels():
    fpo, pp = ControlConfig(algo="fpo").validate(), ControlConfig(algo="fpo++").validate()
    assert (fpo.per_sample_ratio, fpo.neg_adv_cfm_max, fpo.trust_region) == (False, 0.0, "ppo")
    assert (pp.per_sample_ratio, pp.neg_adv_cfm_max, pp.trust_region) == (True, 20.0, "ppo")
    mixed = ControlConfig(algo="fpo++", trust_region="aspo", self_distill_iters=5, dipod_beta=0.1).validate()
    assert mixed.trust_region == "aspo" and mixed.per_sample_ratio is True
    assert mixed.method == "fpo++ +SD +DiPOD" and ControlConfig(algo="ppo").method == "ppo"
    with pytest.raises(ConfigError, match="flow policies"):
        ControlConfig(algo="ppo", dipod_beta=0.1).validate()


def test_config_yaml_then_cli_overrides_and_recipes_load(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("env_id: Pendulum-v1\nn_mc: 3\nlearning_rate: 3e-4\n")  # PyYAML reads 3e-4 as a string
    cfg = load_config(path, n_mc=5, seed=None)
    assert (cfg.n_mc, cfg.learning_rate, cfg.seed) == (5, 3e-4, 0)
    with pytest.raises(ConfigError, match="not_a_field"):
        load_config(path, not_a_field=1)
    with pytest.raises(ConfigError, match="logratio_clamp_max"):
        load_config(path, clip_logratio=1.0)
    recipes = sorted((ROOT / "recipes" / "control").glob("*.yaml"))
    assert len(recipes) >= 4
    for recipe in recipes:
        load_config(recipe)


@pytest.mark.parametrize(
    "text, key",
    [("n_mc: eight", "n_mc"), ("n_mc: 2.5", "n_mc"), ("normalize_obs: 3", "normalize_obs"),
     ("hidden_sizes: 64", "hidden_sizes"), ("learning_rate: .nan", "learning_rate"), ("algo: 3", "algo"),
     ("learning_rate: -1.0", "learning_rate"), ("algo: fpo+", "algo"), ("trust_region: spo", "trust_region"),
     ("algo: fpo_dipod", "dipod_beta 0.05")],
)  # fmt: skip
def test_bad_yaml_values_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=key):
        load_config(path)


def test_iqm_drops_a_quarter_at_each_end():
    assert iqm(np.array([100.0, 1.0, 2.0, 3.0, -50.0])) == 2.0
    assert iqm(np.array([1.0, 2.0, 6.0])) == 3.0
    assert iqm(np.arange(8.0)) == 3.5


def test_example_cli_writes_csvs_png_and_aggregate(tmp_path):
    spec = importlib.util.spec_from_file_location("control_example", ROOT / "examples" / "control.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    common = ["--env", "Pendulum-v1", "--total_timesteps", "128", "--num_envs", "2", "--num_steps", "32",
              "--num_minibatches", "2", "--eval_episodes", "1", "--hidden_sizes", "16", "--update_epochs", "1",
              "--drift_samples", "4", "--drift_ode_steps", "2", "--no_progress"]  # fmt: skip
    for seed in (0, 1):
        out = tmp_path / f"fpo_sd_{seed}"
        argv = [*common, "--algo", "fpo++", "--self_distill_iters", "2", "--seed", str(seed), "--output_dir", str(out)]
        assert module.main(argv) == 0
        assert (out / "progress.csv").exists() and (out / "updates.csv").exists() and (out / "curve.png").exists()
    assert module.main([*common, "--algo", "ppo", "--output_dir", str(tmp_path / "ppo")]) == 0
    assert module.main(["--aggregate", str(tmp_path), "--aggregate_out", str(tmp_path / "agg")]) == 0
    summary = (tmp_path / "agg" / "summary.md").read_text()
    assert "| Pendulum-v1 | fpo++ +SD | 2 |" in summary and "| Pendulum-v1 | ppo | 1 |" in summary
    assert (tmp_path / "agg" / "pendulum-v1.png").exists()


# ---------------------------------------------------------------- learning
def _random_return(env_id: str, episodes: int, seed: int) -> float:
    envs = make_vec_env(env_id, episodes)
    envs.action_space.seed(seed)
    envs.reset(seed=seed)
    returns, finished = np.zeros(episodes), np.zeros(episodes, bool)
    while not finished.all():
        _, r, term, trunc, _ = envs.step(envs.action_space.sample())
        returns += r * ~finished
        finished |= term | trunc
    return float(returns.mean())


@pytest.mark.slow
def test_fpo_pp_learns_pendulum_quickly():
    # The smoke recipe (20k steps): FPO++ swings up (uniform random actions score about -1120 on the same episodes).
    cfg = load_config(ROOT / "recipes" / "control" / "pendulum.yaml", algo="fpo++", seed=0, drift_samples=0)
    rows = ControlTrainer(cfg).train(progress=False)
    random_return = _random_return(cfg.env_id, cfg.eval_episodes, cfg.eval_seed)
    assert random_return < -900
    assert rows[-1]["eval_return"] > random_return + 600, (rows[-1]["eval_return"], random_return)
