"""Backbone features for training: computed once and cached, or recomputed per batch.

FastFlow's backbone is frozen and training uses no augmentation, so an image's features are
the same in every epoch. :class:`CachedFeatures` computes them once; :class:`StreamedFeatures`
recomputes them for every batch (the straightforward loop, kept as the honest baseline and
for data sets whose features do not fit anywhere). Both serve float32 batches.

Memory budget of the cache
--------------------------
The cache needs ``n_images * sum_i(C_i * h_i * w_i)`` values (resnet18 at 256x256: 1.75 MiB
per image in float32; wide_resnet50_2: 7 MiB). It is stored, in this order of preference:

1. ``"float32"`` in memory on the training device, when it fits the budget: exact;
2. ``"float16"`` in memory, when half of that fits: relative rounding error at most
   ``2 ** -11`` (about 5e-4) per value, far below the spread of the features;
3. ``"spill"``: float32 in an anonymous memory-mapped temporary file (in ``TMPDIR``, deleted
   when the cache is freed): exact, read back batch by batch through the page cache.

The budget (:func:`cache_memory_budget`) is the smaller of 4 GiB and half the memory
available when the cache is built (host RAM, or free GPU memory for a CUDA device).
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import torch

from .images import ImageCollection
from .nn import FastflowModel
from .threads import refresh as refresh_threads

#: Upper bound of the in-memory feature cache, in bytes.
MAX_CACHE_BYTES = 4 * 2**30

_FLOAT16_MAX = torch.finfo(torch.float16).max


def _available_host_memory() -> int | None:
    """Bytes of host memory available now (``MemAvailable`` on Linux), or None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def cache_memory_budget(device: torch.device) -> int:
    """Bytes the in-memory feature cache may use: ``min(4 GiB, available memory / 2)``.

    Parameters
    ----------
    device : torch.device
        The training device; for CUDA its free memory counts, else the host's.

    Returns
    -------
    int
    """
    if device.type == "cuda":
        available, _ = torch.cuda.mem_get_info(device)
    else:
        available = _available_host_memory()
    return MAX_CACHE_BYTES if available is None else min(MAX_CACHE_BYTES, available // 2)


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

    Attributes
    ----------
    exact : bool
        Always True: batches are what the backbone computes from the images.
    tile_numbers : ndarray of int or None
        With tiles (``images`` a :class:`~skfastflow.images.TileView`): each item's number
        among its image's tiles, which is its tile position for per-position flows; None
        for whole images.
    """

    exact = True

    def __init__(self, model: FastflowModel, images: ImageCollection, indices: np.ndarray, device: torch.device) -> None:
        self.model = model
        self.images = images
        self.indices = np.asarray(indices)
        self.device = device
        numbers = getattr(images, "tile_numbers", None)
        self.tile_numbers = None if numbers is None else numbers[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, positions: np.ndarray) -> list[torch.Tensor]:
        """Per-scale features ``(len(positions), C_i, h_i, w_i)`` of the requested positions."""
        refresh_threads()  # the backbone pass is most of a batch's work: follow the idle cores
        extractor = self.model.feature_extractor
        (image_batch,) = self.images.batches(
            len(positions), self.model.input_size, extractor.mean, extractor.std, indices=self.indices[positions]
        )
        return self.model.extract_features(image_batch.tensor.to(self.device))


class _Float16Overflow(Exception):
    """A feature value exceeds float16's range; the cache must keep float32."""


class CachedFeatures:
    """Features of every served image, computed once and kept for all epochs.

    Stored as float32 in memory when that fits ``memory_budget``, else as float16 in
    memory, else as float32 in a memory-mapped temporary file (see the module docstring).
    Batches are always float32 on the source's device.

    Parameters
    ----------
    source : StreamedFeatures
        Computes the features, ``batch_size`` images at a time.
    batch_size : int
        Images per backbone pass while filling the cache.
    memory_budget : int, default=None
        Bytes the in-memory cache may use; None means :func:`cache_memory_budget`.

    Attributes
    ----------
    storage : {"float32", "float16", "spill"}
        How the features are kept.
    exact : bool
        Whether batches are exactly what the backbone computes (all but ``"float16"``).
    """

    def __init__(self, source: StreamedFeatures, batch_size: int, memory_budget: int | None = None) -> None:
        self.device = source.device
        self.tile_numbers = source.tile_numbers
        shapes = source.model.feature_shapes
        float32_bytes = 4 * len(source) * sum(math.prod(shape) for shape in shapes)
        budget = cache_memory_budget(self.device) if memory_budget is None else memory_budget
        if float32_bytes <= budget:
            storages = ["float32"]
        elif float32_bytes // 2 <= budget:
            storages = ["float16", "spill"]  # spill only if a value overflows float16
        else:
            storages = ["spill"]
        for storage in storages:
            try:
                self.features = self._fill(source, batch_size, shapes, storage)
                self.storage = storage
                break
            except _Float16Overflow:
                continue

    def _fill(self, source, batch_size, shapes, storage):
        """Compute every feature once, writing into preallocated storage (no concatenation copy)."""
        n_images = len(source)
        if storage == "spill":
            # Anonymous (already unlinked) files: the OS frees them with the last reference.
            stores = [np.memmap(tempfile.TemporaryFile(), dtype=np.float32, mode="w+", shape=(n_images, *shape)) for shape in shapes]
        else:
            dtype = torch.float32 if storage == "float32" else torch.float16
            stores = [torch.empty((n_images, *shape), dtype=dtype, device=self.device) for shape in shapes]
        for start in range(0, n_images, batch_size):
            stop = min(start + batch_size, n_images)
            for store, feature in zip(stores, source.batch(np.arange(start, stop))):
                if storage == "spill":
                    store[start:stop] = feature.cpu().numpy()
                else:
                    if storage == "float16" and feature.abs().max() > _FLOAT16_MAX:
                        raise _Float16Overflow
                    store[start:stop] = feature
        return stores

    @property
    def exact(self) -> bool:
        return self.storage != "float16"

    def __len__(self) -> int:
        return self.features[0].shape[0]

    def batch(self, positions: np.ndarray) -> list[torch.Tensor]:
        """Per-scale cached features of the requested positions, float32 on the device."""
        if self.storage == "spill":
            return [torch.from_numpy(scale[positions]).to(self.device) for scale in self.features]
        index = torch.as_tensor(positions, device=self.device)
        return [scale[index].float() for scale in self.features]


class FeatureSubset:
    """Some items of a feature source, served as a feature source of their own.

    Cross-fitting (``FastFlowDetector(calibration_cv=K)``) trains each fold's flows on
    the other folds' cached features and scores the fold from them, without a second
    backbone pass.

    Parameters
    ----------
    source : StreamedFeatures, CachedFeatures or FeatureSubset
    positions : array of int
        Positions in ``source`` served, in this order (position ``i`` of a batch request
        refers to ``source``'s position ``positions[i]``).
    """

    def __init__(self, source, positions: np.ndarray) -> None:
        self.source = source
        self.positions = np.asarray(positions, dtype=np.int64)
        self.device = source.device

    @property
    def exact(self) -> bool:
        return self.source.exact

    @property
    def tile_numbers(self) -> np.ndarray | None:
        """The source's ``tile_numbers`` of the items served, or None for whole images."""
        numbers = self.source.tile_numbers
        return None if numbers is None else numbers[self.positions]

    def __len__(self) -> int:
        return len(self.positions)

    def batch(self, positions: np.ndarray) -> list[torch.Tensor]:
        """Per-scale features of the requested positions, as ``source.batch`` gives them."""
        return self.source.batch(self.positions[np.asarray(positions)])


def batches_in_order(features: StreamedFeatures | CachedFeatures | FeatureSubset, batch_size: int):
    """Yield the per-scale batches of ``features``, in order, ``batch_size`` images at a time."""
    for start in range(0, len(features), batch_size):
        yield features.batch(np.arange(start, min(start + batch_size, len(features))))
