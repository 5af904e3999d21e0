"""User input ``X`` as backbone-ready tensors: resized to ``input_size`` and normalised.

The checks of ``X``, the reading of files and every input error message live in
:mod:`skfastflow.image_input` (no torch), which hands out each image as float pixels;
:class:`ImageCollection` adds what the torch detector does with them: antialiased bilinear
resizing to ``input_size``, grey to RGB, then ``(x - mean) / std``, batch by batch. Every
image, from a stack or a list, is converted to float and resized on its own, so a batch of
full-resolution images never exists as floats. :func:`resize_maps` takes anomaly maps back
to each image's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .image_input import ImageInput


@dataclass
class ImageBatch:
    """A batch of backbone-ready images, the original size of each, and which are grey."""

    indices: np.ndarray
    tensor: torch.Tensor  # (n, 3, H, W) float32, normalised
    original_sizes: list[tuple[int, int]]
    is_grey: np.ndarray  # (n,) bool


class ImageCollection(ImageInput):
    """Validated view of user input ``X`` that yields normalised tensors batch by batch.

    Parameters and attributes are those of :class:`~skfastflow.image_input.ImageInput`.
    """

    def batches(
        self,
        batch_size: int,
        input_size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        indices: np.ndarray | None = None,
    ) -> Iterator[ImageBatch]:
        """Yield normalised tensors ``(n, 3, *input_size)`` of at most ``batch_size`` images.

        Images are resized with antialiased bilinear interpolation; grey becomes RGB by
        repeating the channel; then ``(x - mean) / std`` per channel.
        """
        indices = np.arange(self.n_images) if indices is None else np.asarray(indices)
        mean_tensor = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_tensor = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        for start in range(0, len(indices), batch_size):
            batch_indices = indices[start : start + batch_size]
            tensor, sizes, is_grey = self._read_batch(batch_indices, input_size)
            self.check_colour(batch_indices, is_grey)
            yield ImageBatch(batch_indices, (tensor - mean_tensor) / std_tensor, sizes, is_grey)

    def _read_batch(self, batch_indices: np.ndarray, input_size: tuple[int, int]):
        """Images at ``batch_indices`` resized to ``input_size`` (n, 3, H, W), their sizes and grey flags.

        One image at a time: only one image exists as full-resolution floats at any moment.
        """
        tensors, sizes, is_grey = [], [], []
        for index in batch_indices:
            size, grey, tensor = self._shrunk(int(index), input_size)  # the full-size floats die here
            sizes.append(size)
            is_grey.append(grey)
            tensors.append(tensor)
        return torch.cat(tensors), sizes, np.array(is_grey, dtype=bool)

    def _shrunk(self, index: int, input_size: tuple[int, int]) -> tuple[tuple[int, int], bool, torch.Tensor]:
        """Image ``index``: its size, whether it is grey, and it as RGB ``(1, 3, *input_size)``."""
        image, grey = self.load(index)
        return image.shape[:2], grey, _to_rgb(_resize(torch.from_numpy(image).permute(2, 0, 1)[None], input_size))


def _resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(tensor.shape[2:]) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)


def _to_rgb(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.expand(-1, 3, -1, -1) if tensor.shape[1] == 1 else tensor


def resize_maps(maps: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Resize maps ``(n, 1, h, w)`` back to each image's size, one interpolation per size.

    Bilinear, with pixel centres at half-integers (``align_corners=False``), as the images
    were resized to ``input_size``: each map pixel lies over its image pixel.

    Returns
    -------
    list of ndarray
        One float array ``(H_i, W_i)`` per map.
    """
    resized: list[np.ndarray | None] = [None] * len(sizes)
    for size in set(sizes):
        group = [i for i, s in enumerate(sizes) if s == size]
        block = maps[group]
        if tuple(block.shape[2:]) != size:
            block = F.interpolate(block, size=size, mode="bilinear", align_corners=False)
        for i, item in zip(group, block[:, 0].cpu().numpy()):
            resized[i] = item
    return resized
