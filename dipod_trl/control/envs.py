"""Gymnasium vector environments plus the running normalisers the trainer applies on top of them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from .config import ConfigError

SUGGESTED_ENVS = "Pendulum-v1, HalfCheetah-v5, Hopper-v5 or Walker2d-v5"


def make_vec_env(env_id: str, num_envs: int) -> gym.vector.VectorEnv:
    """Synchronous vector env that resets finished sub-envs in the same step (final obs is in ``info``).

    Raises ``ConfigError`` for an unknown id, a missing simulator, or an action space that is not a bounded box.
    """
    try:
        envs = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        )
    except gym.error.Error as err:
        raise ConfigError(f"cannot make env {env_id!r}: {err} (e.g. {SUGGESTED_ENVS})") from err
    space = envs.single_action_space
    problem = None
    if not isinstance(space, gym.spaces.Box):
        problem = (f"has a {type(space).__name__} action space, but flow policies need continuous actions "
                   "(a gymnasium Box)")  # fmt: skip
    elif not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        problem = "has an unbounded action space; actions are scaled to the box bounds, so they must be finite"
    elif not isinstance(envs.single_observation_space, gym.spaces.Box):
        problem = f"has a {type(envs.single_observation_space).__name__} observation space; a flat Box is needed"
    if problem:
        envs.close()
        raise ConfigError(f"env {env_id!r} {problem}: use a continuous-control env such as {SUGGESTED_ENVS}")
    return envs


def final_observations(obs: np.ndarray, info: dict) -> np.ndarray:
    """The true last observation of each sub-env (differs from ``obs`` where an episode just ended)."""
    final = obs.copy()
    mask = info.get("_final_obs")
    if mask is not None:
        for i in np.flatnonzero(mask):
            final[i] = info["final_obs"][i]
    return final


class RunningMeanStd:
    """Streaming mean / variance (parallel Welford update)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, n = x.mean(0), x.var(0), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total


class ObsNormalizer:
    """Standardise observations with running statistics; ``update=False`` freezes them (evaluation)."""

    def __init__(self, shape: tuple[int, ...], enabled: bool = True, clip: float = 10.0) -> None:
        self.rms, self.enabled, self.clip = RunningMeanStd(shape), enabled, clip

    def __call__(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        if not self.enabled:
            return obs.astype(np.float32)
        if update:
            self.rms.update(obs)
        out = (obs - self.rms.mean) / np.sqrt(self.rms.var + 1e-8)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)


class RewardScaler:
    """Divide rewards by the running std of the discounted return (keeps value targets O(1))."""

    def __init__(self, num_envs: int, gamma: float, enabled: bool = True, clip: float = 10.0) -> None:
        self.rms, self.gamma, self.enabled, self.clip = RunningMeanStd(), gamma, enabled, clip
        self.returns = np.zeros(num_envs, np.float64)

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return reward.astype(np.float32)
        self.returns = self.returns * self.gamma + reward
        self.rms.update(self.returns)
        self.returns[done] = 0.0
        return np.clip(reward / np.sqrt(self.rms.var + 1e-8), -self.clip, self.clip).astype(np.float32)


class ActionScaler:
    """Map policy actions in the normalised box [-1, 1]^d to the env's bounds, clipping anything outside."""

    def __init__(self, space: gym.spaces.Box) -> None:
        self.low = space.low.astype(np.float32)
        self.high = space.high.astype(np.float32)

    def __call__(self, action: np.ndarray) -> np.ndarray:
        action = np.clip(action, -1.0, 1.0)
        return self.low + (action + 1.0) * 0.5 * (self.high - self.low)
