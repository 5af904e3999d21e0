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
from .tiling import TileBox, tile_boxes


@dataclass
class ImageBatch:
    """A batch of backbone-ready images, the original size of each, and which are grey."""

    indices: np.ndarray
    tensor: torch.Tensor  # (n, 3, H, W) float32, normalised
    original_sizes: list[tuple[int, int]]
    is_grey: np.ndarray  # (n,) bool


@dataclass
class TileBatch:
    """A batch of backbone-ready tiles, cut from one or more images in order.

    ``images`` lists the images whose first tile is in this batch, as ``(index, size,
    is_grey, n_tiles)``: a consumer knows an image is complete when it has seen its
    ``n_tiles`` tiles.
    """

    tensor: torch.Tensor  # (n, 3, H, W) float32, normalised tiles at input_size
    owners: np.ndarray  # (n,) index of each tile's image
    boxes: list[TileBox]
    tile_numbers: np.ndarray  # (n,) number of each tile among its image's tiles (tile_boxes order)
    images: list[tuple[int, tuple[int, int], bool, int]]


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
        normalise = _normaliser(mean, std)
        for start in range(0, len(indices), batch_size):
            batch_indices = indices[start : start + batch_size]
            tensor, sizes, is_grey = self._read_batch(batch_indices, input_size)
            self.check_colour(batch_indices, is_grey)
            yield ImageBatch(batch_indices, normalise(tensor), sizes, is_grey)

    def tile_batches(
        self,
        batch_size: int,
        input_size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        tiling: tuple[tuple[int, int], tuple[int, int]],
        indices: np.ndarray | None = None,
    ) -> Iterator[TileBatch]:
        """Yield batches of at most ``batch_size`` tiles ``(n, 3, *input_size)``, image after image.

        Each image is read once and cut by :func:`skfastflow.tiling.tile_boxes` at its own
        resolution; each tile is resized to ``input_size`` (antialiased bilinear, as whole
        images are), grey repeated to RGB, normalised. Only one image exists as
        full-resolution floats at any moment, and at most ``batch_size`` tiles.
        """
        indices = np.arange(self.n_images) if indices is None else np.asarray(indices)
        normalise = _normaliser(mean, std)
        tiles, owners, boxes, numbers, started = [], [], [], [], []
        for index in indices:
            image, grey = self.load(int(index))
            self.check_colour(np.array([index]), np.array([grey]))
            pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
            image_boxes = tile_boxes(image.shape[:2], *tiling)
            started.append((int(index), image.shape[:2], grey, len(image_boxes)))
            for number, box in enumerate(image_boxes):
                tiles.append(_tile(pixels, box, input_size))
                owners.append(int(index))
                boxes.append(box)
                numbers.append(number)
                if len(tiles) == batch_size:
                    yield TileBatch(normalise(torch.cat(tiles)), np.array(owners), boxes, np.array(numbers), started)
                    tiles, owners, boxes, numbers, started = [], [], [], [], []
        if tiles:
            yield TileBatch(normalise(torch.cat(tiles)), np.array(owners), boxes, np.array(numbers), started)

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


class TileView:
    """The tiles of some images of a collection, as the items that training batches.

    Offers :meth:`ImageCollection.batches` over tiles instead of images, for
    :class:`~skfastflow.features.StreamedFeatures` and the feature cache. Building it
    reads each image once (for its size, and to record its colour); batches of tiles
    read their images again, one at a time, and keep the last one read, so consecutive
    tiles of an image (the cache fills in order) cost one read.

    Parameters
    ----------
    images : ImageCollection
    indices : array of int
        The images whose tiles are served, in this order.
    tiling : ((int, int), (int, int))
        Tile size and stride (:func:`skfastflow.tiling.check_tiling`).

    Attributes
    ----------
    n_images : int
        Number of tiles (the items served).
    owners : ndarray of int
        Image of each tile.
    tile_numbers : ndarray of int
        Number of each tile among its image's tiles (:func:`~skfastflow.tiling.tile_boxes`
        order): its tile position, for images of one size.
    image_sizes : dict
        ``{image index: (height, width)}`` of the images cut.
    """

    def __init__(self, images: ImageCollection, indices: np.ndarray, tiling) -> None:
        self.images = images
        owners, numbers, self.boxes, self.image_sizes = [], [], [], {}
        for index in np.asarray(indices):
            image, grey = images.load(int(index))
            images.check_colour(np.array([index]), np.array([grey]))
            self.image_sizes[int(index)] = tuple(image.shape[:2])
            for number, box in enumerate(tile_boxes(image.shape[:2], *tiling)):
                owners.append(int(index))
                numbers.append(number)
                self.boxes.append(box)
        self.owners = np.array(owners, dtype=np.int64)
        self.tile_numbers = np.array(numbers, dtype=np.int64)
        self.n_images = len(self.owners)
        self._last: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.n_images

    def positions_of(self, image_indices: np.ndarray) -> np.ndarray:
        """Positions of the tiles of the given images (in this view's order)."""
        return np.flatnonzero(np.isin(self.owners, image_indices))

    def batches(self, batch_size: int, input_size, mean, std, indices: np.ndarray | None = None) -> Iterator[ImageBatch]:
        """Yield normalised tiles ``(n, 3, *input_size)``, ``batch_size`` at a time (``indices``: tile positions)."""
        indices = np.arange(self.n_images) if indices is None else np.asarray(indices)
        normalise = _normaliser(mean, std)
        for start in range(0, len(indices), batch_size):
            positions = indices[start : start + batch_size]
            tensor = torch.cat([_tile(self._pixels(int(self.owners[p])), self.boxes[p], input_size) for p in positions])
            sizes = [(self.boxes[p].height, self.boxes[p].width) for p in positions]
            yield ImageBatch(positions, normalise(tensor), sizes, np.zeros(len(positions), dtype=bool))

    def _pixels(self, index: int) -> torch.Tensor:
        if self._last is None or self._last[0] != index:
            image, _ = self.images.load(index)
            self._last = (index, torch.from_numpy(image).permute(2, 0, 1)[None])
        return self._last[1]


def _normaliser(mean, std):
    """``(x - mean) / std`` per RGB channel of ``(n, 3, H, W)`` tensors."""
    mean_tensor = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_tensor = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return lambda tensor: (tensor - mean_tensor) / std_tensor


def _tile(pixels: torch.Tensor, box: TileBox, input_size: tuple[int, int]) -> torch.Tensor:
    """The tile at ``box`` of an image ``(1, C, H, W)``, resized to ``input_size``, as RGB ``(1, 3, *input_size)``."""
    crop = pixels[:, :, box.top : box.top + box.height, box.left : box.left + box.width]
    return _to_rgb(_resize(crop, input_size))


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
