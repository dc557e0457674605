"""Bind a model's parameters to one flat float32 buffer, so loading a parameter vector is a single copy.

The flat order is ``model.parameters()`` order, each tensor flattened in its own (row-major) order: the layout the PS
and every agent share. After binding, every parameter's ``.data`` is a view into :attr:`FlatParameters.flat`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shield_model.errors import ComputeError


class FlatParameters:
    """The flat view of ``model``'s trainable parameters (see module docstring)."""

    def __init__(self, model: nn.Module, device: torch.device | None = None) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.sizes = [p.numel() for p in self.params]
        self.num_params = int(sum(self.sizes))
        self.device = device if device is not None else torch.device("cpu")
        self.flat = torch.empty(self.num_params, dtype=torch.float32, device=self.device)
        offset = 0
        with torch.no_grad():
            for p, size in zip(self.params, self.sizes, strict=False):
                view = self.flat[offset:offset + size].view_as(p)
                view.copy_(p)
                p.data = view
                offset += size
        #: numpy view sharing memory with :attr:`flat` (on a GPU: a host staging buffer copied over by :meth:`load`):
        #: decode parameter vectors straight into it to skip a copy.
        self.on_host = self.device.type == "cpu"
        self.array: np.ndarray = self.flat.numpy() if self.on_host else self.flat.cpu().numpy()

    def check(self, params: np.ndarray, what: str = "parameter vector") -> None:
        """Raise :class:`ComputeError` unless ``params`` is a float32 array of shape ``(num_params,)``."""
        if not isinstance(params, np.ndarray) or params.dtype != np.float32 or params.shape != (self.num_params,):
            got = f"{params.dtype}{params.shape}" if isinstance(params, np.ndarray) else type(params).__name__
            raise ComputeError(f"{what} must be float32 of shape ({self.num_params},), got {got}")

    def load(self, params: np.ndarray) -> None:
        """Copy ``params`` into the model (a no-op when ``params`` is :attr:`array` itself)."""
        self.check(params)
        if not self.on_host:
            self.flat.copy_(torch.from_numpy(params))
        elif params.ctypes.data != self.array.ctypes.data or params.strides != self.array.strides:
            np.copyto(self.array, params, casting="no")

    def values(self) -> np.ndarray:
        """A copy of the current parameter vector."""
        return self.array.copy() if self.on_host else self.flat.cpu().numpy()

    def gradient(self, out: np.ndarray) -> np.ndarray:
        """Copy every parameter's ``.grad`` (zeros where a parameter got none) into ``out``; returns ``out``."""
        self.check(out, "gradient output")
        parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(size, device=self.device)
                 for p, size in zip(self.params, self.sizes, strict=False)]
        if self.on_host:
            torch.cat(parts, out=torch.from_numpy(out))  # one kernel: measurably cheaper than a copy per tensor
        else:
            torch.from_numpy(out).copy_(torch.cat(parts))  # one device-to-host copy (synchronises)
        return out
