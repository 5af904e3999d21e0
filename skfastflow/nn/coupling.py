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

from .tracing import is_traced


CHANNELS_LAST_BELOW = 32
"""Subnets with fewer input channels than this run their convolutions in NHWC layout."""


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
        # oneDNN's NCHW convolutions are slow, forward and backward, in float32 and bfloat16,
        # when they have few channels; below this many the NHWC kernels win even after the
        # two layout conversions per step (EfficientNet-Lite0's 12- and 20-channel subnets:
        # the whole flow 1.25x faster; ResNet-18's 32 to 128 channels: no gain, so NCHW).
        self.subnet_memory_format = (
            torch.channels_last if self.split_sizes[0] < CHANNELS_LAST_BELOW else torch.contiguous_format
        )
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

    def _coupling(self, x1: torch.Tensor) -> torch.Tensor:
        """``(0.2, 0.1) * subnet(x1)``: twice the raw log-scale (first half), the shift (second half).

        The first half is the logit ``u`` of ``tanh(0.1 a) = 2 * sigmoid(u) - 1`` (the same
        function: torch's CPU ``tanh`` takes six times as long as its ``sigmoid``).
        """
        first, _, last = self.subnet
        if self.subnet_memory_format is torch.channels_last:
            # One pass converts both layout and (under autocast) dtype; the output comes back
            # NHWC and _AffineCoupling converts it back along with its dtype.
            dtype = torch.get_autocast_dtype(x1.device.type) if torch.is_autocast_enabled(x1.device.type) else x1.dtype
            x1 = x1.to(dtype, memory_format=torch.channels_last)
        hidden = F.relu(first(x1), inplace=True)
        # c * conv(h; W, b) == conv(h; c W, c b): scaling the weights instead of the output
        # spares a pass over the largest tensor of the block, in both directions.
        factors = torch.full((last.out_channels,), 0.1, dtype=last.weight.dtype, device=last.weight.device)
        factors[: self.split_sizes[1]] = 0.2
        return F.conv2d(hidden, factors[:, None, None, None] * last.weight, factors * last.bias, padding=last.padding)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``x`` to the latent side; return ``(y, log|det J|)`` with one value per sample."""
        if is_traced():  # the fused step writes into slices of a buffer, which exporters lose
            return self._recorded_forward(x)
        coupling = self._coupling(x[:, : self.split_sizes[0]])
        scale = self._scale()
        y, log_jacobian = _AffineCoupling.apply(x, coupling, scale, self.global_offset, self.permutation, self.inverse_permutation, self.clamp)
        n_pixels = x.shape[2] * x.shape[3]
        return y, log_jacobian + n_pixels * torch.log(scale).sum()

    def _recorded_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` out of place, for graph recorders (see :mod:`.tracing`), in fewer passes.

        The same function up to float rounding. The global affine transform of the active
        channels joins the coupling: ``(x2 * exp(s) + t) * scale2 + offset2`` is computed as
        ``x2 * exp(s + log(scale2)) + t'``, where the subnet's last convolution gives
        ``t' = t * scale2 + offset2`` directly (its shift weights and bias scaled, constants
        in the graph). Split sizes are Python numbers, so the graph holds no shape
        arithmetic. In onnxruntime the flows' elementwise passes, not their convolutions,
        took most of their time (measured with ``tf_efficientnet_lite0``).
        """
        n_passive, n_active = self.split_sizes
        scale, offset = self._scale(), self.global_offset
        x1, x2 = x[:, :n_passive], x[:, n_passive:]
        first, _, last = self.subnet
        scale_active = scale[0, n_passive:, 0, 0]
        factors = torch.cat((torch.full((n_active,), 0.2, dtype=last.weight.dtype), 0.1 * scale_active))
        bias = torch.cat((0.2 * last.bias[:n_active], 0.1 * scale_active * last.bias[n_active:] + offset[0, n_passive:, 0, 0]))
        coupling = F.conv2d(F.relu(first(x1)), factors[:, None, None, None] * last.weight, bias, padding=last.padding).to(x.dtype)
        sigmoid = torch.sigmoid(coupling[:, :n_active])
        growth = torch.exp(sigmoid * (2.0 * self.clamp) + (torch.log(scale_active) - self.clamp)[None, :, None, None])
        passive = x1 * scale[:, :n_passive] + offset[:, :n_passive]
        y = torch.index_select(torch.cat((passive, x2 * growth + coupling[:, n_active:]), dim=1), 1, self.permutation)
        # Only training graphs use the log-Jacobian; exporters drop it from scoring graphs. It
        # is not reused for growth above: there -clamp joins log(scale2) in one constant, one
        # pass over the map fewer per coupling step in the exported graph.
        log_scale = sigmoid * (2.0 * self.clamp) - self.clamp
        return y, log_scale.sum(dim=(1, 2, 3)) + x.shape[2] * x.shape[3] * torch.log(scale).sum()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Map a latent ``y`` back to the input side (exact inverse of :meth:`forward`)."""
        x = (y[:, self.inverse_permutation] - self.global_offset) / self._scale()
        x1, x2 = torch.split(x, self.split_sizes, dim=1)
        logit, shift = self._coupling(x1).chunk(2, dim=1)
        log_scale = self.clamp * (2.0 * torch.sigmoid(logit) - 1.0)
        return torch.cat((x1, (x2 - shift) * torch.exp(-log_scale)), dim=1)


class _AffineCoupling(torch.autograd.Function):
    """The elementwise part of a coupling step, with a hand-written backward pass.

    Given the block input ``x`` and ``coupling`` from :meth:`AllInOneBlock._coupling`, returns
    ``permute(concat(x1, x2 * exp(s) + t) * scale + offset)`` with
    ``s = clamp * (2 * sigmoid(coupling[:, :C // 2]) - 1)`` (FrEIA's ``clamp * tanh(0.1 a)``),
    ``t = coupling[:, C // 2:]``, and ``sum(s)`` per sample. Autograd would build this from
    about a dozen full-size intermediate tensors (zero-filled gradients for every slice, a
    scatter for the permutation); this backward needs a handful of passes and keeps only
    the sigmoid and ``exp(s)``, which on CPU roughly
    halves the time the flows spend outside their convolutions. Checked against autograd
    of the plain formula with :func:`torch.autograd.gradcheck` in ``tests/test_nn.py``.
    """

    @staticmethod
    def forward(ctx, x, coupling, scale, offset, permutation, inverse_permutation, clamp):
        n_passive = x.shape[1] - coupling.shape[1] // 2
        x1, x2 = x[:, :n_passive], x[:, n_passive:]
        logit, shift = coupling.to(x.dtype, memory_format=torch.contiguous_format).chunk(2, dim=1)
        # clamp * tanh(logit / 2), through the sigmoid (see AllInOneBlock._coupling).
        sigmoid = torch.sigmoid(logit)
        log_scale = torch.mul(sigmoid, 2.0 * clamp).sub_(clamp)
        growth = torch.exp(log_scale)
        # The global affine is applied in channel order and the permutation last, as one
        # gather into a fresh tensor: the same arithmetic as permuting first, in fewer passes.
        unpermuted = torch.empty_like(x)
        torch.addcmul(offset[:, :n_passive], x1, scale[:, :n_passive], out=unpermuted[:, :n_passive])
        active = unpermuted[:, n_passive:]
        torch.addcmul(shift, x2, growth, out=active)
        torch.addcmul(offset[:, n_passive:], active, scale[:, n_passive:], out=active)
        y = torch.index_select(unpermuted, 1, permutation)
        ctx.save_for_backward(x2, sigmoid, growth, y, scale, offset, permutation, inverse_permutation)
        ctx.clamp, ctx.coupling_dtype = clamp, coupling.dtype
        ctx.coupling_format = torch.channels_last if coupling.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return y, log_scale.sum(dim=(1, 2, 3))

    @staticmethod
    def backward(ctx, grad_y, grad_log_jacobian):
        x2, sigmoid, growth, y, scale, offset, permutation, inverse_permutation = ctx.saved_tensors
        n_passive = y.shape[1] - x2.shape[1]
        # Through the global affine and the permutation, back to channel order.
        grad_offset = grad_y.sum(dim=(0, 2, 3), keepdim=True)[:, inverse_permutation]
        # d/d scale of (u * scale + offset) is u = (y - offset) / scale, summed per channel;
        # the product is formed in the buffer that then receives grad_x.
        grad_x = torch.mul(grad_y, y)
        grad_scale = (grad_x.sum(dim=(0, 2, 3), keepdim=True)[:, inverse_permutation] - offset * grad_offset) / scale
        torch.index_select(grad_y, 1, inverse_permutation, out=grad_x).mul_(scale)
        grad_y2 = grad_x[:, n_passive:]
        # d/d logit of clamp * (2 sigmoid(logit) - 1) is 2 clamp sigmoid (1 - sigmoid); the
        # gradient of the coupling is rounded once, straight into the subnet's dtype.
        grad_log_scale = torch.mul(grad_y2, x2).mul_(growth)
        if grad_log_jacobian is not None:
            grad_log_scale.add_(grad_log_jacobian[:, None, None, None])
        grad_log_scale.mul_(2.0 * ctx.clamp)
        sigmoid_slope = torch.addcmul(sigmoid, sigmoid, sigmoid, value=-1.0)
        grad_coupling = torch.empty(grad_y2.shape[0], 2 * grad_y2.shape[1], *grad_y2.shape[2:], dtype=ctx.coupling_dtype, device=grad_y2.device, memory_format=ctx.coupling_format)
        grad_logit, grad_shift = grad_coupling.chunk(2, dim=1)
        torch.mul(grad_log_scale, sigmoid_slope, out=grad_logit)
        grad_shift.copy_(grad_y2)
        grad_y2.mul_(growth)
        return grad_x, grad_coupling, grad_scale, grad_offset, None, None, None


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
