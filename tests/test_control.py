"""Tests for dipod_trl.control: CFM / FPO / DiPOD losses, the flow sampler, the trainer, and a short learning run."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")

from dipod_trl.control import (  # noqa: E402
    ControlConfig,
    ControlTrainer,
    FlowPolicy,
    GaussianPolicy,
    cfm_loss,
    draw_cfm_noise,
    fpo_loss,
    gae,
    load_config,
)
from dipod_trl.control.envs import make_vec_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HAS_MUJOCO = importlib.util.find_spec("mujoco") is not None


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny nets: one thread is fastest and avoids OpenMP stalls on a busy machine. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tiny(**kw) -> ControlConfig:
    base = dict(num_envs=2, num_steps=32, num_minibatches=2, update_epochs=1, hidden_sizes=[16], flow_steps=3, n_mc=2,
                eval_episodes=1, total_timesteps=64)  # fmt: skip
    return ControlConfig(**{**base, **kw})


# ---------------------------------------------------------------- losses
def test_ratio_exactly_one_before_update_with_shared_draws():
    torch.manual_seed(0)
    policy = FlowPolicy(3, 2, [32, 32])
    obs, act, adv = torch.randn(64, 3), torch.randn(64, 2), torch.randn(64)
    t, eps = draw_cfm_noise(64, 8, 2)
    old = policy.cfm_loss(obs, act, t, eps)
    new = policy.cfm_loss(obs, act, t, eps)
    assert torch.equal(old, new)
    loss, stats = fpo_loss(new, old, adv, clip_coef=0.2, clip_logratio=1.0)
    assert stats["ratio_mean"] == 1.0 and stats["clipfrac"] == 0.0
    assert torch.allclose(loss, -adv.mean())
    # fresh draws would give a noisy ratio != 1: sharing the draws is what makes it exact
    t2, eps2 = draw_cfm_noise(64, 8, 2)
    assert not torch.allclose(policy.cfm_loss(obs, act, t2, eps2), old)


def test_trainer_old_and_new_cfm_match_on_stored_draws():
    trainer = ControlTrainer(_tiny(algo="fpo", seed=1))
    ro = trainer.collect()
    obs, act = ro.obs.flatten(0, 1), ro.act.flatten(0, 1)
    full = trainer.policy.cfm_loss(obs, act, ro.cfm_t, ro.cfm_eps)
    idx = torch.randperm(obs.shape[0])[:16]
    mb = trainer.policy.cfm_loss(obs[idx], act[idx], ro.cfm_t[idx], ro.cfm_eps[idx])
    torch.testing.assert_close(mb, full[idx], rtol=0, atol=1e-6)
    # one full-batch minibatch: the only gradient step of the update sees a ratio of exactly 1
    trainer = ControlTrainer(_tiny(algo="fpo", seed=1, num_minibatches=1))
    stats = trainer.update(trainer.collect())
    assert stats["ratio_mean"] == 1.0 and stats["clipfrac"] == 0.0 and stats["approx_kl"] == 0.0


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
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(300):
        t, eps = draw_cfm_noise(256, 4, 2)
        loss = policy.cfm_loss(obs, acts, t, eps).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = policy.cfm_loss(obs, acts, t_eval, eps_eval).mean().item()
    assert after < 0.8 * before, (before, after)


def test_dipod_term_adds_exactly_beta_times_cfm():
    torch.manual_seed(0)
    new, old, adv, dipod = torch.rand(32), torch.rand(32), torch.randn(32), torch.rand(32) * 3
    base, _ = fpo_loss(new, old, adv, 0.2, 1.0, dipod, dipod_beta=0.0)
    for beta in (0.05, 0.5, 2.0):
        with_term, stats = fpo_loss(new, old, adv, 0.2, 1.0, dipod, dipod_beta=beta)
        torch.testing.assert_close(with_term - base, beta * dipod.mean())
        assert stats["dipod_cfm"] == pytest.approx(dipod.mean().item())
    assert ControlTrainer(_tiny(algo="fpo")).dipod_beta == 0.0
    assert ControlTrainer(_tiny(algo="fpo_dipod", dipod_beta=0.3)).dipod_beta == 0.3


def test_logratio_is_clipped_before_exp():
    adv = -torch.ones(4)
    loss, stats = fpo_loss(torch.zeros(4), torch.full((4,), 50.0), adv, 0.2, clip_logratio=1.0)
    assert stats["ratio_mean"] == pytest.approx(np.e) and torch.isfinite(loss)


def test_gae_matches_discounted_returns_without_bootstrap():
    rewards, values = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[0.5], [0.5], [0.5]])
    dones = torch.tensor([[0.0], [0.0], [1.0]])
    adv = gae(rewards, values, dones, last_value=torch.tensor([100.0]), gamma=0.5, lam=1.0)
    expected = torch.tensor([[1 + 0.5 * 2 + 0.25 * 3], [2 + 0.5 * 3], [3.0]]) - values
    torch.testing.assert_close(adv, expected)


# ---------------------------------------------------------------- sampling, env plumbing, config
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


def test_deterministic_given_seed():
    def run() -> list[dict]:
        return ControlTrainer(_tiny(algo="fpo_dipod", seed=3, total_timesteps=128)).train(progress=False)

    a, b = run(), run()
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        ra.pop("wall_time"), rb.pop("wall_time")
        np.testing.assert_equal(ra, rb)  # exact, NaN == NaN


def test_config_yaml_then_cli_overrides_and_recipes_load(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("env_id: Pendulum-v1\nn_mc: 3\nlearning_rate: 0.01\n")
    cfg = load_config(path, n_mc=5, seed=None)
    assert (cfg.n_mc, cfg.learning_rate, cfg.seed) == (5, 0.01, 0)
    with pytest.raises(ValueError):
        load_config(path, not_a_field=1)
    recipes = sorted((ROOT / "recipes" / "control").glob("*.yaml"))
    assert len(recipes) >= 2
    for recipe in recipes:
        load_config(recipe)


def test_distillation_warmup_phase_runs():
    trainer = ControlTrainer(_tiny(algo="fpo_dipod", distill_iters=1, total_timesteps=128))
    rows = trainer.train(progress=False)
    assert trainer.teacher is not None and not any(p.requires_grad for p in trainer.teacher.parameters())
    assert rows[-1]["phase_distill"] == 0.0


def test_example_cli_writes_csv_and_png(tmp_path):
    spec = importlib.util.spec_from_file_location("control_example", ROOT / "examples" / "control.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "run"
    argv = ["--env", "Pendulum-v1", "--algo", "fpo", "--total_timesteps", "128", "--num_envs", "2", "--num_steps", "32",
            "--num_minibatches", "2", "--eval_episodes", "1", "--hidden_sizes", "16", "--output_dir", str(out),
            "--no_progress"]  # fmt: skip
    assert module.main(argv) == 0
    assert (out / "progress.csv").exists() and (out / "curve.png").exists()
    assert module.main(["--aggregate", str(tmp_path), "--aggregate_out", str(tmp_path / "agg")]) == 0
    assert (tmp_path / "agg" / "summary.md").exists() and (tmp_path / "agg" / "pendulum-v1.png").exists()


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
def test_fpo_learns_pendulum_quickly():
    # The recipe with a shorter horizon and more, smaller updates: FPO swings up in ~20k steps (about -130 on seeds
    # 0-2, vs. about -1120 for uniform random actions on the same evaluation episodes).
    cfg = load_config(ROOT / "recipes" / "control" / "pendulum.yaml", algo="fpo", seed=0, total_timesteps=20_480,
                      gamma=0.9, num_steps=128, num_minibatches=16, anneal_lr=False, eval_every=10**9)  # fmt: skip
    rows = ControlTrainer(cfg).train(progress=False)
    random_return = _random_return(cfg.env_id, cfg.eval_episodes, cfg.eval_seed)
    assert random_return < -900
    assert rows[-1]["eval_return"] > random_return + 600, (rows[-1]["eval_return"], random_return)
