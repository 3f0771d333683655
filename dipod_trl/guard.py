"""Non-finite guard: an update whose gradient norm is NaN or inf is skipped, counted, and explained.

The decision is taken on the (all-reduced) gradient norm, which every rank sees identically, so ranks never disagree
about skipping. A skipped update leaves the weights and the optimizer state untouched; after
`max_consecutive` skips in a row training stops with an error, and the last checkpoint (taken from good weights)
stays the latest one.
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Raised after too many consecutive non-finite updates."""


class NonFiniteGuard:
    """Counts non-finite updates. `observe_loss` per micro-step, `should_skip` once per optimizer step."""

    def __init__(self, max_consecutive: int):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}.")
        self.max_consecutive = max_consecutive
        self.skipped = 0  # total skipped updates
        self.consecutive = 0
        self._loss_finite = True  # this rank's losses since the last optimizer step

    def observe_loss(self, loss: torch.Tensor) -> None:
        self._loss_finite = self._loss_finite and bool(torch.isfinite(loss.detach()).all())

    def should_skip(self, grad_norm: float | torch.Tensor | None, step: int, learning_rate: float | None) -> bool:
        """True when this update must be skipped; raises after `max_consecutive` skips in a row."""
        loss_finite, self._loss_finite = self._loss_finite, True
        if grad_norm is None or math.isfinite(float(grad_norm)):
            self.consecutive = 0
            return False
        self.skipped += 1
        self.consecutive += 1
        cause = likely_cause(loss_finite, learning_rate)
        logger.warning(
            "Step %d: gradient norm is %s; update skipped (weights and optimizer state unchanged; %d skipped so far). "
            "%s", step + 1, float(grad_norm), self.skipped, cause,
        )
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"{self.consecutive} consecutive updates had a non-finite gradient norm (last at step {step + 1}); "
                f"training stopped so that no corrupted weights are saved. {cause} The latest checkpoint holds the "
                "last good weights; raise `max_consecutive_nonfinite` to tolerate longer streaks."
            )
        return True


def likely_cause(loss_finite: bool, learning_rate: float | None) -> str:
    if not loss_finite:
        return (
            "The loss itself was NaN/inf: look for huge or non-finite rewards (e.g. with scale_rewards='none'), "
            "non-finite logits (an overflowing bf16 forward), or NaN weights."
        )
    lr = f" ({learning_rate:.3g})" if learning_rate is not None else ""
    return (
        f"The loss was finite but its gradient overflowed: the learning rate{lr} is likely too high, or the advantages "
        "are huge; lower learning_rate, keep max_grad_norm > 0, or scale the rewards."
    )
