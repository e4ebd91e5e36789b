"""What every part of the learned codec shares: the coding grid (scale bounds, symbol ranges), a lower
bound that lets gradients through, and GDN. Its own module so the model and its context model both
build on it without importing each other."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Lower bound of the predicted scales and the coding tables' scales (as in CompressAI).
SCALE_MIN = 0.11
SCALE_MAX = 256.0
SCALE_LEVELS = 64
#: Latent symbols are clipped into [-Y_RANGE, Y_RANGE]; hyper-latent symbols into [-Z_RANGE, Z_RANGE].
Y_RANGE = 255
Z_RANGE = 48


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows when it would push x back above the bound."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)
        return grad * pass_through, None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


class GDN(nn.Module):
    """Generalized divisive normalization (Balle et al. 2016), or its inverse.

    y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2). Parameters are stored as square roots so that
    they stay non-negative; the bounds keep the denominator away from zero.
    """

    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(torch.eye(channels) * math.sqrt(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = lower_bound(self.beta, 1e-3) ** 2
        gamma = lower_bound(self.gamma, 0.0) ** 2
        c = gamma.shape[0]
        norm = F.conv2d(x * x, gamma.view(c, c, 1, 1).to(x.dtype), beta.to(x.dtype))
        norm = torch.sqrt(norm.float().clamp_min(1e-6)).to(x.dtype)
        return x * norm if self.inverse else x / norm
