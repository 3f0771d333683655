"""Exact action log-likelihood of a flow policy, for measuring how far the CFM surrogate drifts from it.

The policy's flow carries ``x_0 ~ N(0, I)`` at t=0 along ``dx/dt = v(x, t, o)`` to the action at t=1. By the
instantaneous change of variables, ``log p_1(a) = log N(x_0; 0, I) - int_0^1 tr(dv/dx)(x_t, t) dt``, with ``x_t``
the ODE solution through ``x_1 = a``. The ODE is integrated backwards with RK4 and the divergence is the exact trace
of the Jacobian (one backward pass per action dimension: action dims are small). This is the density of the
continuous flow; the sampler's Euler discretisation approximates it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .fpo import VelocityFn


def velocity_and_divergence(velocity: VelocityFn, x: Tensor, t: Tensor, obs: Tensor) -> tuple[Tensor, Tensor]:
    """``v(x, t, o)`` (B, d) and its exact divergence ``tr(dv/dx)`` (B,); samples must not interact (row-wise nets)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(x, t, obs)
        div = torch.zeros(x.shape[0], dtype=x.dtype)
        if v.requires_grad:
            for i in range(x.shape[1]):
                (grad,) = torch.autograd.grad(v[:, i].sum(), x, retain_graph=i < x.shape[1] - 1, allow_unused=True)
                if grad is not None:
                    div = div + grad[:, i]
    return v.detach(), div.detach()


def standard_normal_log_prob(x: Tensor) -> Tensor:
    return -0.5 * x.pow(2).sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)


@torch.no_grad()
def flow_log_likelihood(velocity: VelocityFn, obs: Tensor, act: Tensor, steps: int = 16) -> Tensor:
    """Exact (up to RK4 error, O(1/steps^4)) log-density (B,) of ``act`` under the flow ODE conditioned on ``obs``."""
    x, div_integral, h = act.detach().clone(), torch.zeros(act.shape[0], dtype=act.dtype), 1.0 / steps

    def field(x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        return velocity_and_divergence(velocity, x, torch.full((x.shape[0],), t, dtype=x.dtype), obs)

    for k in range(steps):  # from t = 1 down to t = 0
        t = 1.0 - k * h
        v1, d1 = field(x, t)
        v2, d2 = field(x - 0.5 * h * v1, t - 0.5 * h)
        v3, d3 = field(x - 0.5 * h * v2, t - 0.5 * h)
        v4, d4 = field(x - h * v3, t - h)
        x = x - h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
        div_integral = div_integral + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    return standard_normal_log_prob(x) - div_integral
