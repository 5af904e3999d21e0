"""FastFlow: a frozen backbone followed by one 2D normalizing flow per feature scale."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from .anomaly_map import AnomalyMapGenerator
from .backbone import DEFAULT_OUT_INDICES, FeatureExtractor
from .coupling import FastFlowBlock


def as_size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """Return ``(height, width)`` from an int or a pair."""
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


class FastflowModel(nn.Module):
    """FastFlow (Yu et al., 2021) with anomalib's interface.

    A frozen timm backbone gives feature maps; CNN features pass through a trainable
    LayerNorm over (C, h, w) (transformer features keep the backbone's own final norm);
    each scale is modelled by its own 2D flow of ``flow_steps`` coupling blocks.

    Parameters
    ----------
    input_size : int or tuple of int
        (height, width) of the normalised input images. Any size works: every shape is
        derived from the real feature maps at this size.
    backbone : str
        timm model name: a CNN that supports ``features_only`` (``resnet18``,
        ``wide_resnet50_2``, ``tf_efficientnet_lite0``, ...), or the paper's transformers
        ``cait_m48_448`` / ``deit_base_distilled_patch16_384``.
    pre_trained : bool, default=True
        Use pretrained backbone weights (timm download unless ``weights`` is given).
    flow_steps : int, default=8
        Coupling blocks per flow.
    conv3x3_only : bool, default=False
        Use 3x3 convolutions in every step instead of alternating 3x3 and 1x1.
    hidden_ratio : float, default=1.0
        Ratio of hidden to input channels in the coupling subnets.
    weights : path-like, optional
        Local backbone weights file, for machines without internet.
    out_indices : tuple of int, default=(1, 2, 3)
        Feature levels of a CNN backbone.
    n_positions : int, default=1
        Sets of LayerNorms and flows: 1 serves every input with the same ones (FastFlow as
        published); ``n_positions > 1`` keeps one set per tile position of a tiled image
        (``FastFlowDetector(tile_flows="per_position")``), all behind the one frozen
        backbone, and :meth:`encode` then needs each input's position.

    Attributes
    ----------
    tile_grid_size : (int, int) or None
        With ``n_positions > 1``: the ``(height, width)`` of the images whose tile positions
        the sets of flows model, set by :class:`~skfastflow.FastFlowDetector` (which keeps it
        as ``tile_grid_size_``); None otherwise.

    Notes
    -----
    In training mode :meth:`forward` returns ``(hidden_variables, log_jacobians)``; in eval
    mode it returns the anomaly map ``(N, 1, H, W)`` (higher = more anomalous). The
    backbone stays in eval mode in both. Random initialisation (subnet weights, channel
    permutations) draws from torch's default generator.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        backbone: str,
        pre_trained: bool = True,
        flow_steps: int = 8,
        conv3x3_only: bool = False,
        hidden_ratio: float = 1.0,
        weights: str | os.PathLike | None = None,
        out_indices: tuple[int, ...] = DEFAULT_OUT_INDICES,
        n_positions: int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(n_positions, int) or n_positions < 1:
            raise ValueError(f"n_positions={n_positions!r} must be a positive int (1: one set of flows for every input).")
        self.input_size = as_size_pair(input_size)
        self.n_positions = n_positions
        self.tile_grid_size = None
        self.feature_extractor = FeatureExtractor(backbone, pre_trained, weights, out_indices, self.input_size)
        self.feature_shapes = self._probe_feature_shapes()
        # Position-major: the modules of position p and scale s sit at p * n_scales + s, so a
        # model of one position keeps the published layout (and the keys of older model files).
        shapes = self.feature_shapes * n_positions
        if self.feature_extractor.is_transformer:
            norms = [nn.Identity() for _ in shapes]
        else:
            norms = [nn.LayerNorm(list(shape), elementwise_affine=True) for shape in shapes]
        self.norms = nn.ModuleList(norms)
        self.fast_flow_blocks = nn.ModuleList(FastFlowBlock(shape[0], flow_steps, conv3x3_only, hidden_ratio) for shape in shapes)
        self.anomaly_map_generator = AnomalyMapGenerator(self.input_size)

    def _probe_feature_shapes(self) -> list[tuple[int, int, int]]:
        """Run the backbone once on a blank image to learn each scale's (C, h, w)."""
        try:
            with torch.no_grad():
                features = self.feature_extractor(torch.zeros(1, 3, *self.input_size))
        except (RuntimeError, AssertionError) as error:  # timm asserts patch divisibility for transformers
            raise ValueError(
                f"input_size={self.input_size} does not fit backbone {self.feature_extractor.backbone_name!r} "
                f"({error}). Use a larger input_size; for a transformer, a multiple of its patch size."
            ) from error
        shapes = [tuple(int(v) for v in feature.shape[1:]) for feature in features]
        for channels, height, width in shapes:
            if height < 1 or width < 1 or channels < 2:
                raise ValueError(
                    f"input_size={self.input_size} gives an empty feature map {shapes} with backbone "
                    f"{self.feature_extractor.backbone_name!r}. Use a larger input_size."
                )
        return shapes

    def check_input(self, images: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``images`` is a batch ``(N, 3, *input_size)``.

        The backbone would accept other sizes and return other feature sizes, which the
        LayerNorms then refuse with torch's shape message, or (for some sizes) silently
        give a map at ``input_size`` of a differently resized image.
        """
        expected = (3, *self.input_size)
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != expected:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(
                f"FastflowModel expects a batch of normalised RGB images of shape (N, 3, {self.input_size[0]}, "
                f"{self.input_size[1]}) (input_size={self.input_size}), got {shape}. Resize the images to "
                f"{self.input_size[0]}x{self.input_size[1]} first (FastFlowDetector does this for any image size)."
            )

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Backbone feature maps of normalised ``images`` ``(N, 3, *input_size)`` (no gradient; cacheable across epochs).

        Raises
        ------
        ValueError
            When ``images`` is not of shape ``(N, 3, *input_size)``; the message names both sizes.
        """
        self.check_input(images)
        with torch.no_grad():
            return self.feature_extractor(images)

    def encode(self, features: list[torch.Tensor], positions=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Normalise and flow backbone features; return per-scale latents and log-Jacobians.

        Parameters
        ----------
        features : list of Tensor
            Per-scale backbone features ``(N, C_i, h_i, w_i)``.
        positions : array-like of int of shape (N,), default=None
            With ``n_positions > 1``: each input's tile position, in ``[0, n_positions)``;
            its own LayerNorms and flows transform it. Not needed with one position.

        Raises
        ------
        ValueError
            When ``n_positions > 1`` and ``positions`` is missing, of another length or out of range.
        """
        if self.n_positions == 1:
            return self._encode_at(features, 0)
        if positions is None:
            raise ValueError(f"this FastflowModel has flows for {self.n_positions} tile positions; pass each input's position.")
        positions = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        if positions.shape != (len(features[0]),) or positions.min() < 0 or positions.max() >= self.n_positions:
            raise ValueError(
                f"positions must hold one tile position in [0, {self.n_positions}) per input ({len(features[0])}), "
                f"got shape {tuple(positions.shape)} with values {positions.unique().tolist()}."
            )
        # Inputs of one position go through its flows together; the outputs return to input order.
        order = torch.argsort(positions, stable=True)
        parts = []
        for position in positions.unique().tolist():
            chosen = order[positions[order] == position].to(features[0].device)
            parts.append(self._encode_at([feature[chosen] for feature in features], position))
        restore = torch.argsort(order).to(features[0].device)
        return tuple([torch.cat([part[k][scale] for part in parts])[restore] for scale in range(len(features))] for k in (0, 1))

    def _encode_grids(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`encode` of whole images' tiles in tile order (input ``i`` at position ``i % n_positions``).

        The path :meth:`forward` records for export: a fixed loop over the positions, with
        no data-dependent indexing.
        """
        grids = [feature.reshape(-1, self.n_positions, *feature.shape[1:]) for feature in features]
        parts = [self._encode_at([grid[:, position] for grid in grids], position) for position in range(self.n_positions)]
        return tuple(
            [torch.stack([part[k][scale] for part in parts], dim=1).flatten(0, 1) for scale in range(len(features))] for k in (0, 1)
        )

    def _encode_at(self, features: list[torch.Tensor], position: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Latents and log-Jacobians of features all at one tile position (0 with one set of flows)."""
        first = position * len(self.feature_shapes)
        hidden_variables, log_jacobians = [], []
        for scale, feature in enumerate(features):
            z, log_jacobian = self.fast_flow_blocks[first + scale](self.norms[first + scale](feature))
            hidden_variables.append(z)
            log_jacobians.append(log_jacobian)
        return hidden_variables, log_jacobians

    def forward(self, images: torch.Tensor):
        """Latents and log-Jacobians in training mode, else the anomaly map ``(N, 1, H, W)``.

        ``images`` is a normalised batch ``(N, 3, *input_size)``; any other shape raises
        ``ValueError`` naming both sizes. With ``n_positions > 1`` the batch holds the tiles
        of whole images, image after image, each image's in tile order (``N`` a multiple of
        ``n_positions``). Traced or exported (``torch.jit.trace``, ``torch.export``,
        ``torch.onnx.export``), the model returns one map per image for every batch size
        (see :meth:`FeatureExtractor.forward`).
        """
        features = self.extract_features(images)
        if self.n_positions == 1:
            hidden_variables, log_jacobians = self.encode(features)
        else:
            if images.shape[0] % self.n_positions:
                raise ValueError(
                    f"a batch of {images.shape[0]} tiles is not whole images' tiles: this model has {self.n_positions} "
                    "tile positions, so pass each image's tiles in tile order, a multiple of that many."
                )
            hidden_variables, log_jacobians = self._encode_grids(features)
        if self.training:
            return hidden_variables, log_jacobians
        return self.anomaly_map_generator(hidden_variables)
