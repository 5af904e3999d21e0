"""Affine coupling blocks of FastFlow's 2D normalizing flow.

Each block reproduces FrEIA 0.2's ``AllInOneBlock`` as anomalib's FastFlow configures it:
an affine coupling whose log-scale is soft-clamped with ``clamp * tanh(0.1 * a)``, a
learned per-channel global affine transform whose scale goes through ``0.2 * softplus``
(initialised to 1), and a fixed ("hard") random channel permutation. FrEIA's master branch
later changed the clamp and the permutation; FrEIA 0.2 is the reference here because the
published FastFlow results were obtained with it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def subnet_conv(in_channels: int, out_channels: int, kernel_size: int, hidden_ratio: float) -> nn.Sequential:
    """Return FastFlow's coupling subnet: conv(k) -> ReLU -> conv(k), size preserving.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the passive half in, and of the (log-scale, shift) pair out.
    kernel_size : {1, 3}
        Odd kernel size; padding keeps the spatial size.
    hidden_ratio : float
        Hidden channels are ``int(in_channels * hidden_ratio)``.
    """
    hidden_channels = max(int(in_channels * hidden_ratio), 1)
    padding = kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden_channels, kernel_size, padding=padding),
        nn.ReLU(),
        nn.Conv2d(hidden_channels, out_channels, kernel_size, padding=padding),
    )


class AllInOneBlock(nn.Module):
    """One invertible affine coupling step with FrEIA 0.2 ``AllInOneBlock`` semantics.

    Forward pass, for an input ``x`` of shape (N, C, H, W) split into ``x1`` (the first
    ``C - C // 2`` channels) and ``x2``:

    - ``a = 0.1 * subnet(x1)``; ``s = clamp * tanh(a[:, :C // 2])``, ``t = a[:, C // 2:]``
    - ``y = concat(x1, x2 * exp(s) + t)``
    - ``y = permute(y * scale + offset)`` with ``scale = 0.2 * softplus(global_scale)``
    - ``log|det J| = sum(s) + H * W * sum(log(scale))``

    Parameters
    ----------
    channels : int
        Number of input channels, at least 2.
    kernel_size : {1, 3}
        Kernel size of the subnet's convolutions.
    hidden_ratio : float, default=1.0
        Ratio of hidden to input channels in the subnet.
    clamp : float, default=2.0
        Bound on the absolute log-scale of the coupling (``affine_clamping`` in FrEIA).

    Notes
    -----
    Like the subnet's initial weights, the fixed permutation is drawn from torch's default
    generator; seed it (or fork it with :func:`torch.random.fork_rng`) for reproducibility.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        hidden_ratio: float = 1.0,
        clamp: float = 2.0,
    ) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"A coupling block needs at least 2 channels, got {channels}.")
        self.channels = channels
        self.clamp = clamp
        self.split_sizes = (channels - channels // 2, channels // 2)
        self.subnet = subnet_conv(self.split_sizes[0], 2 * self.split_sizes[1], kernel_size, hidden_ratio)
        # SOFTPLUS global affine type with init 1: 0.2 * softplus(g, beta=0.5) == 1 at g below.
        initial_global_scale = 2.0 * math.log(math.exp(0.5 * 10.0 * 1.0) - 1.0)
        self.global_scale = nn.Parameter(torch.full((1, channels, 1, 1), initial_global_scale))
        self.global_offset = nn.Parameter(torch.zeros(1, channels, 1, 1))
        # Output channel i takes input channel permutation[i] (FrEIA's w_perm[i, perm[i]] = 1).
        permutation = torch.randperm(channels)
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def _scale(self) -> torch.Tensor:
        return 0.1 * F.softplus(self.global_scale, beta=0.5)

    def _coupling(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = 0.1 * self.subnet(x1)
        n = self.split_sizes[1]
        return self.clamp * torch.tanh(a[:, :n]), a[:, n:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``x`` to the latent side; return ``(y, log|det J|)`` with one value per sample."""
        x1, x2 = torch.split(x, self.split_sizes, dim=1)
        log_scale, shift = self._coupling(x1)
        y = torch.cat((x1, x2 * torch.exp(log_scale) + shift), dim=1)
        scale = self._scale()
        y = (y * scale + self.global_offset)[:, self.permutation]
        n_pixels = x.shape[2] * x.shape[3]
        log_jacobian = log_scale.sum(dim=(1, 2, 3)) + n_pixels * torch.log(scale).sum()
        return y, log_jacobian

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Map a latent ``y`` back to the input side (exact inverse of :meth:`forward`)."""
        x = (y[:, self.inverse_permutation] - self.global_offset) / self._scale()
        x1, x2 = torch.split(x, self.split_sizes, dim=1)
        log_scale, shift = self._coupling(x1)
        return torch.cat((x1, (x2 - shift) * torch.exp(-log_scale)), dim=1)


class FastFlowBlock(nn.Module):
    """The 2D flow of one feature scale: ``flow_steps`` coupling blocks in sequence.

    Kernel sizes alternate 3x3 (even steps) and 1x1 (odd steps), as in the paper, unless
    ``conv3x3_only``.

    Parameters
    ----------
    channels : int
        Channels of the feature map this flow models.
    flow_steps : int, default=8
        Number of coupling blocks.
    conv3x3_only : bool, default=False
        Use 3x3 convolutions in every step.
    hidden_ratio : float, default=1.0
        Ratio of hidden to input channels in each subnet.
    clamp : float, default=2.0
        Soft clamp of the coupling log-scale.
    """

    def __init__(
        self,
        channels: int,
        flow_steps: int = 8,
        conv3x3_only: bool = False,
        hidden_ratio: float = 1.0,
        clamp: float = 2.0,
    ) -> None:
        super().__init__()
        self.steps = nn.ModuleList(
            AllInOneBlock(
                channels,
                kernel_size=1 if (step % 2 == 1 and not conv3x3_only) else 3,
                hidden_ratio=hidden_ratio,
                clamp=clamp,
            )
            for step in range(flow_steps)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the latent ``z`` and the summed log-Jacobian per sample."""
        log_jacobian = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for step in self.steps:
            x, step_log_jacobian = step(x)
            log_jacobian = log_jacobian + step_log_jacobian
        return x, log_jacobian

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Map a latent ``z`` back to the feature map."""
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z
