"""Rollouts, GAE critic, the PPO / FPO / FPO++ update loop, DiPOD (self-distillation at init and per update).

Reading order: ``ControlTrainer.train`` -> ``self_distill`` (optional, once) -> ``collect`` (one on-policy batch)
-> ``update`` (clipped-surrogate epochs, exact-likelihood drift probe) -> ``evaluate`` (deterministic episodes).
``run_experiment`` wires the trainer to CSV / PNG outputs.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from tqdm.auto import tqdm

from .config import ControlConfig
from .envs import ActionScaler, ObsNormalizer, RewardScaler, final_observations, make_vec_env
from .fpo import draw_cfm_noise, fpo_loss, gae, gaussian_ppo_loss, value_loss
from .policy import Critic, FlowPolicy, GaussianPolicy


@dataclass
class Rollout:
    """One on-policy batch, time-major (T, N, ...). ``cfm_t``/``cfm_eps`` are the MC draws FPO reuses."""

    obs: Tensor
    act: Tensor
    rewards: Tensor
    dones: Tensor
    values: Tensor
    last_value: Tensor
    logp: Tensor | None = None
    cfm_t: Tensor | None = None
    cfm_eps: Tensor | None = None


class ControlTrainer:
    def __init__(self, cfg: ControlConfig) -> None:
        self.cfg = cfg.validate()
        torch.manual_seed(cfg.seed)  # with a fixed thread count, CPU runs are bit-for-bit reproducible
        np.random.seed(cfg.seed)

        self.envs = make_vec_env(cfg.env_id, cfg.num_envs)
        obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        self.act_dim = int(np.prod(self.envs.single_action_space.shape))
        self.obs_norm = ObsNormalizer((obs_dim,), cfg.normalize_obs)
        self.reward_scaler = RewardScaler(cfg.num_envs, cfg.gamma, cfg.normalize_reward)
        self.act_scaler = ActionScaler(self.envs.single_action_space)

        self.is_flow = cfg.algo != "ppo"
        self.policy: FlowPolicy | GaussianPolicy
        if self.is_flow:
            self.policy = FlowPolicy(obs_dim, self.act_dim, cfg.hidden_sizes, cfg.activation, cfg.flow_steps)
        else:
            self.policy = GaussianPolicy(obs_dim, self.act_dim, cfg.hidden_sizes, cfg.activation, cfg.init_log_std)
        self.critic = Critic(obs_dim, cfg.hidden_sizes, cfg.activation)
        self.optimizer = self._make_optimizer()
        self.teacher: FlowPolicy | None = None  # set by self_distill: the frozen initial policy
        # The drift probe draws its subsample from its own generator, so training is identical with or without it.
        self._probe_gen = torch.Generator().manual_seed(cfg.seed + 12345)

        self.global_step = 0
        self.distill_env_steps = 0
        raw_obs, _ = self.envs.reset(seed=cfg.seed)
        self.next_obs = self.obs_norm(raw_obs, update=True)
        self._ep_return = np.zeros(cfg.num_envs)
        self.train_returns: deque[float] = deque(maxlen=20)
        self._eval_envs = None

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = [*self.policy.parameters(), *self.critic.parameters()]
        return torch.optim.Adam(params, lr=self.cfg.learning_rate, eps=1e-5)

    # ------------------------------------------------------------------ rollouts
    @torch.no_grad()
    def collect(self) -> Rollout:
        """Step the vector env ``num_steps`` times with the current policy."""
        cfg = self.cfg
        T, N = cfg.num_steps, cfg.num_envs
        obs_buf = torch.zeros(T, N, self.next_obs.shape[-1])
        act_buf = torch.zeros(T, N, self.act_dim)
        rew_buf, done_buf, val_buf = torch.zeros(T, N), torch.zeros(T, N), torch.zeros(T, N)
        for step in range(T):
            obs = torch.from_numpy(self.next_obs)
            act = self.policy.sample(obs)
            obs_buf[step], act_buf[step], val_buf[step] = obs, act, self.critic(obs)

            raw_obs, reward, term, trunc, info = self.envs.step(self.act_scaler(act.numpy()))
            done = term | trunc
            self._track_episodes(reward, done)
            scaled = torch.from_numpy(self.reward_scaler(reward, done))
            if trunc.any():  # time-limit: bootstrap from the value of the true final observation
                final = torch.from_numpy(self.obs_norm(final_observations(raw_obs, info)))
                scaled += cfg.gamma * self.critic(final) * torch.from_numpy(trunc & ~term).float()
            rew_buf[step], done_buf[step] = scaled, torch.from_numpy(done).float()
            self.next_obs = self.obs_norm(raw_obs, update=True)
            self.global_step += N

        ro = Rollout(obs_buf, act_buf, rew_buf, done_buf, val_buf, self.critic(torch.from_numpy(self.next_obs)))
        flat_obs, flat_act = obs_buf.flatten(0, 1), act_buf.flatten(0, 1)
        if self.is_flow:  # MC draws stored with the rollout: old and new CFM losses use identical (t, eps)
            ro.cfm_t, ro.cfm_eps = draw_cfm_noise(T * N, cfg.n_mc, self.act_dim)
        else:
            ro.logp = self.policy.log_prob(flat_obs, flat_act)[0]
        return ro

    def _track_episodes(self, reward: np.ndarray, done: np.ndarray) -> None:
        self._ep_return += reward
        for i in np.flatnonzero(done):
            self.train_returns.append(float(self._ep_return[i]))
            self._ep_return[i] = 0.0

    # ------------------------------------------------------------------ DiPOD at initialisation
    def self_distill(self) -> dict[str, float]:
        """The paper's DiPOD for control: fit the student actor to its own frozen initial copy, then reset.

        A frozen copy of the initial flow policy (the teacher) acts in the envs; each of ``self_distill_iters``
        gradient steps first collects ``self_distill_rollout_steps`` teacher steps per env, then trains only the
        student actor on the CFM loss of a minibatch of (observation, teacher action) pairs, with its own AdamW and
        gradient clipping. The critic is not touched. Afterwards the main optimizer is rebuilt (fresh state) and the
        envs are reset, so FPO(++) starts unchanged. These env steps are counted in ``distill_env_steps`` only.
        """
        cfg, policy = self.cfg, self.policy
        assert isinstance(policy, FlowPolicy), "self-distillation needs a flow policy"
        self.teacher = copy.deepcopy(policy).requires_grad_(False).eval()
        opt = torch.optim.AdamW(
            policy.parameters(), lr=cfg.self_distill_lr, weight_decay=cfg.self_distill_weight_decay
        )
        keep = max(4 * cfg.self_distill_batch_size, 8 * cfg.self_distill_rollout_steps * cfg.num_envs)
        all_obs, all_act = torch.zeros(0, self.next_obs.shape[-1]), torch.zeros(0, self.act_dim)
        losses = []
        for _ in range(cfg.self_distill_iters):
            with torch.no_grad():
                for _ in range(cfg.self_distill_rollout_steps):
                    obs = torch.from_numpy(self.next_obs)
                    act = self.teacher.sample(obs)
                    all_obs, all_act = torch.cat([all_obs, obs])[-keep:], torch.cat([all_act, act])[-keep:]
                    raw_obs, *_ = self.envs.step(self.act_scaler(act.numpy()))
                    self.next_obs = self.obs_norm(raw_obs, update=True)
                    self.distill_env_steps += cfg.num_envs
            idx = torch.randperm(all_obs.shape[0])[: cfg.self_distill_batch_size]
            t, eps = draw_cfm_noise(idx.numel(), cfg.n_mc, self.act_dim)
            loss = policy.cfm_loss(all_obs[idx], all_act[idx], t, eps).mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.self_distill_max_grad_norm)
            opt.step()
            losses.append(loss.item())
        self.optimizer = self._make_optimizer()
        raw_obs, _ = self.envs.reset(seed=cfg.seed + 1)
        self.next_obs = self.obs_norm(raw_obs, update=True)
        self._ep_return[:] = 0.0
        return {"sd_loss_first": losses[0], "sd_loss_last": losses[-1], "sd_env_steps": self.distill_env_steps}

    # ------------------------------------------------------------------ updates
    def update(self, ro: Rollout) -> dict[str, float]:
        """Clipped-surrogate epochs on one batch; for flow policies also the exact-likelihood drift probe."""
        cfg = self.cfg
        adv = gae(ro.rewards, ro.values, ro.dones, ro.last_value, cfg.gamma, cfg.gae_lambda)
        b_ret = (adv + ro.values).flatten()
        b_adv, b_obs, b_act = adv.flatten(), ro.obs.flatten(0, 1), ro.act.flatten(0, 1)
        stats: dict[str, list[float]] = {}
        probe: dict[str, Tensor] = {}
        if self.is_flow:
            with torch.no_grad():
                old_cfm = self.policy.cfm_loss(b_obs, b_act, ro.cfm_t, ro.cfm_eps)
            stats["cfm_onpolicy"], stats["cfm_draw_max"] = [old_cfm.mean().item()], [old_cfm.max().item()]
            if cfg.drift_samples:
                probe = self._probe_before(b_obs, b_act, ro, old_cfm)

        for _ in range(cfg.update_epochs):
            for idx in torch.randperm(cfg.batch_size).split(cfg.minibatch_size):
                obs, act, mb_adv = b_obs[idx], b_act[idx], b_adv[idx]
                if cfg.norm_adv:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                if self.is_flow:
                    new_cfm = self.policy.cfm_loss(obs, act, ro.cfm_t[idx], ro.cfm_eps[idx])
                    pg_loss, mb_stats = fpo_loss(
                        new_cfm, old_cfm[idx], mb_adv, cfg.clip_coef, per_sample_ratio=cfg.per_sample_ratio,
                        logratio_clamp_max=cfg.logratio_clamp_max, neg_adv_cfm_max=cfg.neg_adv_cfm_max,
                        trust_region=cfg.trust_region, dipod_cfm=self._dipod_cfm(obs, act), dipod_beta=cfg.dipod_beta,
                    )  # fmt: skip
                else:
                    new_logp, entropy = self.policy.log_prob(obs, act)
                    pg_loss, mb_stats = gaussian_ppo_loss(
                        new_logp, ro.logp[idx], entropy, mb_adv, cfg.clip_coef, cfg.ent_coef
                    )
                v_loss = value_loss(self.critic(obs), b_ret[idx])
                loss = pg_loss + cfg.vf_coef * v_loss
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_([*self.policy.parameters(), *self.critic.parameters()], cfg.max_grad_norm)
                self.optimizer.step()
                for k, v in {**mb_stats, "policy_loss": pg_loss.item(), "value_loss": v_loss.item()}.items():
                    stats.setdefault(k, []).append(v)

        out = {k: float(np.mean(v)) for k, v in stats.items()}
        if probe:
            out.update(self._probe_after(probe, ro))
        out["action_std"] = b_act.std(0).mean().item()
        out["action_clipfrac"] = (b_act.abs() > 1).float().mean().item()
        if not self.is_flow:
            out["log_std"] = self.policy.log_std.mean().item()
        return out

    def _dipod_cfm(self, obs: Tensor, act: Tensor) -> Tensor | None:
        """Per-update DiPOD term: CFM loss of on-policy actions with fresh (t, eps) draws."""
        if self.cfg.dipod_beta == 0.0:
            return None
        if self.cfg.dipod_source == "current":
            act = self.policy.sample(obs)
        t, eps = draw_cfm_noise(obs.shape[0], self.cfg.n_mc, self.act_dim)
        return self.policy.cfm_loss(obs, act, t, eps)

    # ------------------------------------------------------------------ exact-likelihood drift probe
    def _probe_before(self, b_obs: Tensor, b_act: Tensor, ro: Rollout, old_cfm: Tensor) -> dict[str, Tensor]:
        idx = torch.randperm(b_obs.shape[0], generator=self._probe_gen)[: self.cfg.drift_samples]
        logp = self.policy.exact_log_prob(b_obs[idx], b_act[idx], self.cfg.drift_ode_steps)
        return {"idx": idx, "obs": b_obs[idx], "act": b_act[idx], "logp": logp, "cfm": old_cfm[idx].mean(-1)}

    @torch.no_grad()
    def _probe_after(self, p: dict[str, Tensor], ro: Rollout) -> dict[str, float]:
        """Gap between exact log pi and -L_cfm on on-policy actions, and how well FPO's log-ratio tracks the exact one.

        ``likelihood_gap`` = mean(log pi_old(a) + L_old(a)) and ``gap_std`` its spread over actions (the FPO ratio is
        exact only where the gap is the same for every action, before and after the update); ``ratio_err`` =
        mean |(log pi_new - log pi_old) - (L_old - L_new)|; ``exact_kl`` = mean(log pi_old - log pi_new) (KL(old||new)).
        """
        logp_new = self.policy.exact_log_prob(p["obs"], p["act"], self.cfg.drift_ode_steps)
        cfm_new = self.policy.cfm_loss(p["obs"], p["act"], ro.cfm_t[p["idx"]], ro.cfm_eps[p["idx"]]).mean(-1)
        gap = p["logp"] + p["cfm"]
        exact_lr, fpo_lr = logp_new - p["logp"], p["cfm"] - cfm_new
        corr = torch.corrcoef(torch.stack([exact_lr, fpo_lr]))[0, 1] if exact_lr.numel() > 1 else torch.tensor(0.0)
        return {
            "logp_exact": p["logp"].mean().item(),
            "likelihood_gap": gap.mean().item(),
            "gap_std": gap.std().item() if gap.numel() > 1 else 0.0,
            "ratio_err": (exact_lr - fpo_lr).abs().mean().item(),
            "ratio_corr": corr.item(),
            "exact_kl": -exact_lr.mean().item(),
        }

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Mean and std of undiscounted returns over ``eval_episodes`` deterministic episodes (fixed seeds)."""
        cfg = self.cfg
        if self._eval_envs is None:
            self._eval_envs = make_vec_env(cfg.env_id, cfg.eval_episodes)
        raw_obs, _ = self._eval_envs.reset(seed=cfg.eval_seed)
        returns, finished = np.zeros(cfg.eval_episodes), np.zeros(cfg.eval_episodes, bool)
        while not finished.all():
            act = self.policy.sample(torch.from_numpy(self.obs_norm(raw_obs)), deterministic=True)
            raw_obs, reward, term, trunc, _ = self._eval_envs.step(self.act_scaler(act.numpy()))
            returns += reward * ~finished
            finished |= term | trunc
        return float(returns.mean()), float(returns.std())

    # ------------------------------------------------------------------ main loop
    def train(
        self,
        on_eval: Callable[[dict[str, Any]], None] | None = None,
        progress: bool = True,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict]:
        """Optional self-distillation, then run to ``total_timesteps``; evaluate every ``eval_every`` steps and at
        the end. Returns the eval rows (each with the stats of the latest update); ``on_update`` gets every update's
        stats."""
        cfg = self.cfg
        num_iters = max(1, cfg.total_timesteps // cfg.batch_size)
        rows: list[dict[str, Any]] = []
        start, next_eval = time.time(), 0
        sd_stats = self.self_distill() if self.is_flow and cfg.self_distill_iters > 0 else {}
        stats: dict[str, float] = dict(sd_stats)
        bar = tqdm(
            total=num_iters * cfg.batch_size, disable=not progress, desc=f"{cfg.method} {cfg.env_id}", unit="step"
        )
        for it in range(num_iters + 1):
            if self.global_step >= next_eval or it == num_iters:
                ret, ret_std = self.evaluate()
                train_ret = float(np.mean(self.train_returns)) if self.train_returns else float("nan")
                row = {"step": self.global_step, "eval_return": ret, "eval_return_std": ret_std,
                       "train_return": train_ret, "wall_time": time.time() - start, **stats}  # fmt: skip
                rows.append(row)
                if on_eval:
                    on_eval(row)
                bar.set_postfix(eval=f"{ret:.1f}", train=f"{train_ret:.1f}")
                next_eval += cfg.eval_every
            if it == num_iters:
                break
            if cfg.anneal_lr:
                self.optimizer.param_groups[0]["lr"] = cfg.learning_rate * (1.0 - it / num_iters)
            stats = {**sd_stats, **self.update(self.collect())}
            if on_update:
                on_update({"step": self.global_step, **stats})
            bar.update(cfg.batch_size)
        bar.close()
        return rows


def run_experiment(cfg: ControlConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Set the torch thread count, train, and (if ``cfg.output_dir``) write ``config.yaml``, ``progress.csv`` (per
    evaluation), ``updates.csv`` (per update) and ``curve.png`` there."""
    from .report import CsvLogger, plot_run

    torch.set_num_threads(cfg.torch_threads)
    logger = update_logger = None
    if cfg.output_dir:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.validate().to_dict(), sort_keys=False))
        logger, update_logger = CsvLogger(out / "progress.csv"), CsvLogger(out / "updates.csv")
    rows = ControlTrainer(cfg).train(
        on_eval=logger.log if logger else None,
        progress=progress,
        on_update=update_logger.log if update_logger else None,
    )
    if cfg.output_dir:
        plot_run(rows, Path(cfg.output_dir) / "curve.png", title=f"{cfg.method} on {cfg.env_id} (seed {cfg.seed})")
    return rows
