"""FastFlow's training objective: negative log-likelihood of the latents, up to a constant."""

from __future__ import annotations

import torch
from torch import nn


class FastflowLoss(nn.Module):
    """Sum over scales of the batch mean of ``0.5 * sum(z ** 2) - log|det J|``.

    This is the negative log-likelihood under a standard normal latent, without the
    constant ``0.5 * D * log(2 * pi)``; it is unnormalised (it grows with the number of
    feature dimensions ``D``), as in the paper and anomalib.

    Examples
    --------
    >>> import torch
    >>> z = [torch.zeros(2, 4, 3, 3)]
    >>> log_jacobians = [torch.tensor([1.0, 3.0])]
    >>> FastflowLoss()(z, log_jacobians)
    tensor(-2.)
    """

    def forward(self, hidden_variables: list[torch.Tensor], jacobians: list[torch.Tensor]) -> torch.Tensor:
        """Return the scalar loss for per-scale latents ``(N, C, h, w)`` and log-Jacobians ``(N,)``."""
        return sum(
            torch.mean(0.5 * torch.sum(z**2, dim=(1, 2, 3)) - log_jacobian)
            for z, log_jacobian in zip(hidden_variables, jacobians)
        )
