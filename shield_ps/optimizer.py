"""Momentum SGD on the flat parameter vector, with a step learning-rate schedule.

The update is the one the ByzShield experiments use (PyTorch's SGD without dampening):
``v = mu * v + g``, ``w -= lr * v``, with ``lr = lr0 * gamma ** ((t + 1) // lr_step)`` at 0-based step t.

The original code counts steps from 1 and, at its step c with ``c % lr_step == 0``, sets the rate to
``lr0 * gamma ** (c // lr_step)`` before that step's update; with c = t + 1 that is the form above, so the first
decay applies to 0-based step ``lr_step - 1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shield_ps.errors import ConfigError


@dataclass(frozen=True)
class Schedule:
    """Step decay: the learning rate at 0-based step ``t`` is ``lr0 * gamma ** ((t + 1) // lr_step)``, the original
    code's schedule over its 1-based step counter (``ByzshieldMaster._model_update``)."""

    lr0: float
    gamma: float = 1.0
    lr_step: int = 1

    def __post_init__(self) -> None:
        if not self.lr0 > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr0}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"--gamma must be in (0, 1], got {self.gamma}")
        if self.lr_step < 1:
            raise ConfigError(f"--lr-step must be >= 1, got {self.lr_step}")

    def lr_at(self, step: int) -> float:
        return float(self.lr0 * self.gamma ** ((step + 1) // self.lr_step))


class MomentumSGD:
    """In-place momentum SGD over one float32 vector (no copies on the step path)."""

    def __init__(self, params: np.ndarray, momentum: float, velocity: np.ndarray | None = None) -> None:
        if params.dtype != np.float32 or params.ndim != 1:
            raise ConfigError(f"parameters must be a flat float32 vector, got {params.dtype} {params.shape}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {momentum}")
        self.params = params
        self.momentum = float(momentum)
        self.velocity = np.zeros_like(params) if velocity is None else velocity
        if self.velocity.shape != params.shape or self.velocity.dtype != np.float32:
            raise ConfigError("momentum buffer does not match the parameter vector")

    def step(self, gradient: np.ndarray, lr: float) -> None:
        """Apply one update with ``gradient`` (float32, same shape) at learning rate ``lr``."""
        if self.momentum:
            self.velocity *= np.float32(self.momentum)
            self.velocity += gradient
            np.multiply(self.velocity, np.float32(lr), out=gradient)
        else:
            gradient *= np.float32(lr)
        self.params -= gradient
