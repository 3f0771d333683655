"""Policies and critic: a flow-matching policy (MLP velocity field + Euler sampler) and a Gaussian PPO baseline.

Both act in the normalised action box [-1, 1]^d; ``envs.ActionScaler`` clips and rescales to the env's bounds.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .fpo import cfm_loss
from .likelihood import flow_log_likelihood

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


def mlp(
    in_dim: int, hidden: list[int], out_dim: int, activation: str = "tanh", out_gain: float = 1.0
) -> nn.Sequential:
    """Orthogonally initialised MLP; a small ``out_gain`` makes the initial output close to zero."""
    layers: list[nn.Module] = []
    sizes = [in_dim, *hidden]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], out_dim))
    for i, layer in enumerate(m for m in layers if isinstance(m, nn.Linear)):
        last = i == len(hidden)
        nn.init.orthogonal_(layer.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class FlowPolicy(nn.Module):
    """pi(a | o) defined by the ODE da/dt = v(a_t, t, o) from a_0 ~ N(0, I) at t=0 to the action at t=1."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: list[int],
        activation: str = "tanh",
        flow_steps: int = 10,
        time_freqs: int = 4,
    ) -> None:
        super().__init__()
        self.act_dim, self.flow_steps = act_dim, flow_steps
        self.register_buffer("freqs", math.pi * torch.arange(1, time_freqs + 1, dtype=torch.float32))
        self.net = mlp(obs_dim + act_dim + 1 + 2 * time_freqs, hidden, act_dim, activation, out_gain=0.01)

    def velocity(self, x_t: Tensor, t: Tensor, obs: Tensor) -> Tensor:
        """v(x_t, t, o); ``t`` has the leading shape of ``x_t`` (no trailing feature dim)."""
        tf = t.unsqueeze(-1) * self.freqs
        return self.net(torch.cat([obs, x_t, t.unsqueeze(-1), tf.sin(), tf.cos()], dim=-1))

    @torch.no_grad()
    def sample(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Euler-integrate the flow from Gaussian noise (or from zero noise when ``deterministic``)."""
        a = torch.zeros(obs.shape[0], self.act_dim) if deterministic else torch.randn(obs.shape[0], self.act_dim)
        dt = 1.0 / self.flow_steps
        for k in range(self.flow_steps):
            t = torch.full((obs.shape[0],), k * dt)
            a = a + dt * self.velocity(a, t, obs)
        return a

    def cfm_loss(self, obs: Tensor, act: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """CFM loss of each (t, eps) draw, shape (B, n); see ``fpo.cfm_loss``."""
        return cfm_loss(self.velocity, obs, act, t, eps)

    def exact_log_prob(self, obs: Tensor, act: Tensor, ode_steps: int = 16) -> Tensor:
        """Exact log-density (B,) of ``act`` under the flow ODE; see ``likelihood.flow_log_likelihood``."""
        return flow_log_likelihood(self.velocity, obs, act, ode_steps)


class GaussianPolicy(nn.Module):
    """Diagonal Gaussian with a state-independent log-std: the PPO baseline."""

    def __init__(
        self, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "tanh", init_log_std: float = 0.0
    ):
        super().__init__()
        self.act_dim = act_dim
        self.mean = mlp(obs_dim, hidden, act_dim, activation, out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), init_log_std))

    def dist(self, obs: Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.mean(obs), self.log_std.exp())

    @torch.no_grad()
    def sample(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        return self.mean(obs) if deterministic else self.dist(obs).sample()

    def log_prob(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        """Log-likelihood (B,) and entropy (B,) of ``act``."""
        d = self.dist(obs)
        return d.log_prob(act).sum(-1), d.entropy().sum(-1)


class Critic(nn.Module):
    def __init__(self, obs_dim: int, hidden: list[int], activation: str = "tanh") -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, 1, activation, out_gain=1.0)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).squeeze(-1)
