"""Backbone features for training: computed once and cached, or recomputed per batch.

FastFlow's backbone is frozen and training uses no augmentation, so an image's features are
the same in every epoch. :class:`CachedFeatures` computes them once; :class:`StreamedFeatures`
recomputes them for every batch (the straightforward loop, kept as the honest baseline and
for data sets whose features do not fit in memory). Both give identical batches.
"""

from __future__ import annotations

import numpy as np
import torch

from .images import ImageCollection
from .nn import FastflowModel


class StreamedFeatures:
    """Features recomputed from the images for every requested batch.

    Parameters
    ----------
    model : FastflowModel
        The model whose frozen backbone extracts the features.
    images : ImageCollection
        The validated images.
    indices : array of int
        Positions in ``images`` that this source serves (position ``i`` of a batch request
        refers to ``images[indices[i]]``).
    device : torch.device
        Where features are computed.
    """

    def __init__(self, model: FastflowModel, images: ImageCollection, indices: np.ndarray, device: torch.device) -> None:
        self.model = model
        self.images = images
        self.indices = np.asarray(indices)
        self.device = device

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, positions: np.ndarray) -> list[torch.Tensor]:
        """Per-scale features ``(len(positions), C_i, h_i, w_i)`` of the requested positions."""
        extractor = self.model.feature_extractor
        (image_batch,) = self.images.batches(
            len(positions), self.model.input_size, extractor.mean, extractor.std, indices=self.indices[positions]
        )
        return self.model.extract_features(image_batch.tensor.to(self.device))


class CachedFeatures:
    """Features of every served image, computed once and kept in memory on ``device``.

    Parameters
    ----------
    source : StreamedFeatures
        Computes the features, ``batch_size`` images at a time.
    batch_size : int
        Images per backbone pass while filling the cache.
    """

    def __init__(self, source: StreamedFeatures, batch_size: int) -> None:
        chunks = [source.batch(np.arange(start, min(start + batch_size, len(source)))) for start in range(0, len(source), batch_size)]
        self.features = [torch.cat(scale_chunks) for scale_chunks in zip(*chunks)]

    def __len__(self) -> int:
        return self.features[0].shape[0]

    def batch(self, positions: np.ndarray) -> list[torch.Tensor]:
        """Per-scale cached features of the requested positions."""
        index = torch.as_tensor(positions, device=self.features[0].device)
        return [scale[index] for scale in self.features]
