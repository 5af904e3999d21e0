"""Tiles of large images: where they lie, and how their anomaly maps are stitched back.

Numpy only, so the torch detector and the torch-free runtime detector cut and stitch
alike.

Why tiles
---------
Without tiling every image is resized to ``input_size`` (256x256 by default): a crack 3
pixels wide in a 1263-pixel image is under a pixel wide when the backbone sees it. With
``tile_size`` the image is cut at its own resolution into tiles of ``tile_size`` pixels
that lie wholly inside it; each tile is resized to ``input_size`` (``tile_size ==
input_size`` keeps the native resolution, ``tile_size = 2 * input_size`` halves it) and
scored on its own; the tiles' maps return to their place and are averaged where tiles
overlap (:func:`stitch`). The flows are one set for every tile position, or one set per
position for images of one size (``FastFlowDetector(tile_flows=...)``); the k-th box of
:func:`tile_boxes` is the k-th position.

The layout (:func:`tile_boxes`), along each axis of length ``L`` with tile ``t`` and
stride ``s``:

- ``L <= t``: one tile spanning the whole axis (a smaller image is stretched to
  ``input_size`` along it, as without tiling);
- otherwise tiles start at ``0, s, 2s, ...`` while they fit, and when the last one stops
  short of the edge one more is placed flush with it (a ragged last row or column is
  covered by a tile that overlaps its neighbour, never by padding).

An image of any size thus gets at least one tile and every pixel is covered.
"""

from __future__ import annotations

from numbers import Integral
from typing import NamedTuple

import numpy as np


class TileBox(NamedTuple):
    """Where a tile lies in its image, in pixels: rows ``top:top + height``, columns ``left:left + width``."""

    top: int
    left: int
    height: int
    width: int


def as_tile_pair(value, name: str) -> tuple[int, int] | None:
    """``None``, an int or a ``(height, width)`` pair of positive ints, as a pair (or None).

    Raises
    ------
    ValueError
        When ``value`` is none of these; the message names ``name``.
    """
    if value is None:
        return None
    pair = (value, value) if isinstance(value, Integral) and not isinstance(value, bool) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in pair)):
        raise ValueError(f"{name}={value!r} must be None, a positive int or a pair of positive ints (height, width) in pixels.")
    return int(pair[0]), int(pair[1])


def check_tiling(tile_size, tile_stride) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Validate ``tile_size`` and ``tile_stride``; return them as pairs, or None without tiling.

    Parameters
    ----------
    tile_size : int, (int, int) or None
        Tile height and width in image pixels; None: no tiling.
    tile_stride : int, (int, int) or None
        Step between tile starts in pixels; None: ``tile_size`` (tiles side by side). A
        stride larger than the tile would leave pixels unscored, so it is refused.

    Returns
    -------
    ((tile_h, tile_w), (stride_h, stride_w)) or None

    Raises
    ------
    ValueError
        For values that are not positive sizes, a stride without a tile size, or a stride
        larger than the tile.
    """
    tile = as_tile_pair(tile_size, "tile_size")
    stride = as_tile_pair(tile_stride, "tile_stride")
    if tile is None:
        if stride is not None:
            raise ValueError(f"tile_stride={tile_stride!r} was given without tile_size; set tile_size too, or leave both None.")
        return None
    stride = tile if stride is None else stride
    if stride[0] > tile[0] or stride[1] > tile[1]:
        raise ValueError(
            f"tile_stride={tile_stride!r} is larger than tile_size={tile_size!r}: pixels between tiles would never be "
            "scored. Use a stride at most the tile size (the tile size itself puts tiles side by side)."
        )
    return tile, stride


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis (see the module docstring)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_boxes(image_size: tuple[int, int], tile_size: tuple[int, int], tile_stride: tuple[int, int]) -> list[TileBox]:
    """The tiles of an image, row by row.

    Parameters
    ----------
    image_size : (int, int)
        Image height and width in pixels.
    tile_size, tile_stride : (int, int)
        Tile height and width, and the step between tile starts, in pixels (as returned
        by :func:`check_tiling`).

    Returns
    -------
    list of TileBox
        At least one. Tiles lie wholly inside the image; along an axis shorter than the
        tile, a tile spans the whole axis.

    Examples
    --------
    >>> [tuple(box) for box in tile_boxes((300, 500), (256, 256), (256, 256))]
    [(0, 0, 256, 256), (0, 244, 256, 256), (44, 0, 256, 256), (44, 244, 256, 256)]
    >>> [tuple(box) for box in tile_boxes((100, 600), (256, 256), (256, 256))]
    [(0, 0, 100, 256), (0, 256, 100, 256), (0, 344, 100, 256)]
    """
    height, width = image_size
    rows = _starts(height, tile_size[0], tile_stride[0])
    columns = _starts(width, tile_size[1], tile_stride[1])
    return [
        TileBox(top, left, min(tile_size[0], height), min(tile_size[1], width)) for top in rows for left in columns
    ]


def _tent(length: int) -> np.ndarray:
    """Weights over ``length`` pixels rising linearly from the edges to the middle, all positive."""
    centres = np.arange(length, dtype=np.float64) + 0.5
    return np.minimum(centres, length - centres) / (length / 2)


class MapStitcher:
    """Builds one map of a whole image from the maps of its tiles, added one at a time.

    Where tiles overlap, their values are averaged with weights falling linearly towards
    each tile's edges, so a tile's border (where its convolutions saw zero padding) counts
    least and the seam between tiles blends; where one tile covers a pixel, its value is
    kept as it is. Memory: two float64 arrays of the image's size, whatever the number of
    tiles.

    Parameters
    ----------
    image_size : (int, int)
        Height and width of the image.
    """

    def __init__(self, image_size: tuple[int, int]) -> None:
        self.image_size = tuple(image_size)
        self._total = np.zeros(self.image_size, dtype=np.float64)
        self._weight = np.zeros(self.image_size, dtype=np.float64)

    def add(self, tile_map: np.ndarray, box: TileBox) -> None:
        """Add the map ``(box.height, box.width)`` of the tile at ``box``.

        Raises
        ------
        ValueError
            When the map's shape is not the box's size.
        """
        if tuple(tile_map.shape) != (box.height, box.width):
            raise ValueError(f"a tile map of shape {tuple(tile_map.shape)} does not fit its box {tuple(box)}.")
        window = np.outer(_tent(box.height), _tent(box.width))
        region = (slice(box.top, box.top + box.height), slice(box.left, box.left + box.width))
        self._total[region] += window * tile_map
        self._weight[region] += window

    def result(self) -> np.ndarray:
        """The stitched map, shape ``image_size``, float32.

        Raises
        ------
        ValueError
            When a pixel is covered by no tile added.
        """
        if not np.all(self._weight > 0):
            raise ValueError(f"the tiles do not cover the whole {self.image_size[0]}x{self.image_size[1]} image.")
        return (self._total / self._weight).astype(np.float32)


class TileMapAssembler:
    """Stitches the maps of several images from their tiles' maps, arriving in batches that may mix images.

    Each image is announced with :meth:`expect` (its size and number of tiles); :meth:`add`
    hands back the image's stitched map (:class:`MapStitcher`) when its last tile arrives.
    Memory: one :class:`MapStitcher` per image that has tiles both added and outstanding, so
    images whose tiles arrive one after the other hold one at a time.
    """

    def __init__(self) -> None:
        self._expected: dict = {}  # image -> (image_size, tiles still to come)
        self._stitchers: dict = {}

    def expect(self, image, image_size: tuple[int, int], n_tiles: int) -> None:
        """Announce ``image`` (any hashable key) of ``image_size`` ``(H, W)``, cut into ``n_tiles`` tiles.

        Raises
        ------
        ValueError
            When ``n_tiles`` is below 1.
        """
        if n_tiles < 1:
            raise ValueError(f"an image has at least one tile, got n_tiles={n_tiles}.")
        self._expected[image] = (tuple(image_size), int(n_tiles))

    def add(self, image, tile_map: np.ndarray, box: TileBox) -> np.ndarray | None:
        """Add the map of one tile of ``image``; return the image's stitched map (float32, its size) after its last tile, else None.

        Raises
        ------
        ValueError
            When ``image`` was not announced, or has no tile left to come; as
            :meth:`MapStitcher.add` and :meth:`MapStitcher.result` otherwise.
        """
        if image not in self._expected:
            raise ValueError(f"image {image!r} was not announced with expect(), or all its tiles were added already.")
        image_size, remaining = self._expected[image]
        if image not in self._stitchers:
            self._stitchers[image] = MapStitcher(image_size)
        self._stitchers[image].add(tile_map, box)
        if remaining > 1:
            self._expected[image] = (image_size, remaining - 1)
            return None
        del self._expected[image]
        return self._stitchers.pop(image).result()


def stitch(tile_maps, boxes, image_size: tuple[int, int]) -> np.ndarray:
    """One map of the whole image from the maps of its tiles (:class:`MapStitcher`, all at once).

    Parameters
    ----------
    tile_maps : sequence of ndarray
        One map per tile, each of shape ``(box.height, box.width)``.
    boxes : sequence of TileBox
        Where each tile lies (:func:`tile_boxes`).
    image_size : (int, int)
        Height and width of the image.

    Returns
    -------
    ndarray of shape image_size, dtype float32

    Raises
    ------
    ValueError
        When a map's shape is not its box's size, or a pixel is covered by no tile.

    Examples
    --------
    >>> boxes = tile_boxes((4, 6), (4, 4), (4, 2))
    >>> stitch([np.zeros((4, 4)), np.ones((4, 4))], boxes, (4, 6))[0].round(2).tolist()
    [0.0, 0.0, 0.25, 0.75, 1.0, 1.0]
    """
    stitcher = MapStitcher(image_size)
    for tile_map, box in zip(tile_maps, boxes, strict=True):
        stitcher.add(tile_map, box)
    return stitcher.result()


def stitched_scores(anomaly_map: np.ndarray, rules) -> dict:
    """Image scores of one stitched map under image-score rules.

    The rules of :func:`skfastflow.nn.anomaly_map.scores_by_rule`, over the map at the
    image's own resolution: ``"max"``, minus the map's maximum; a float ``q``, minus the
    mean of its highest ``round(q * H * W)`` values (at least one). Higher = more normal.

    Parameters
    ----------
    anomaly_map : ndarray of shape (H, W)
        A map from :func:`stitch` (raw, in ``[-1, 0]``, or standardised by
        :mod:`skfastflow.map_standardization`).
    rules : iterable of "max" or float

    Returns
    -------
    dict
        ``{rule: float}`` (in ``[0, 1]`` for raw maps).
    """
    values = np.asarray(anomaly_map, dtype=np.float64).ravel()
    scores = {}
    for rule in rules:
        count = 1 if rule == "max" else max(1, round(rule * values.size))
        scores[rule] = -float(np.partition(values, values.size - count)[values.size - count :].mean())
    return scores


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a map ``(h, w)`` to ``size`` ``(H, W)`` by bilinear interpolation (``align_corners=False``).

    The interpolation of :func:`torch.nn.functional.interpolate` (``mode="bilinear"``, no
    antialiasing), with which the torch detector returns its maps to each image's size.

    Parameters
    ----------
    anomaly_map : ndarray of shape (h, w)
    size : tuple of int
        ``(H, W)``.

    Returns
    -------
    resized : ndarray of shape (H, W), dtype of ``anomaly_map``
    """
    if tuple(anomaly_map.shape) == tuple(size):
        return anomaly_map
    rows_low, rows_high, rows_weight = _bilinear_taps(anomaly_map.shape[0], size[0])
    columns_low, columns_high, columns_weight = _bilinear_taps(anomaly_map.shape[1], size[1])
    values = anomaly_map.astype(np.float64)
    values = values[rows_low] * (1.0 - rows_weight)[:, None] + values[rows_high] * rows_weight[:, None]
    values = values[:, columns_low] * (1.0 - columns_weight) + values[:, columns_high] * columns_weight
    return values.astype(anomaly_map.dtype)


def _bilinear_taps(n_in: int, n_out: int):
    """Source indices (lower, upper) and the upper one's weight of each output pixel, as torch computes them.

    Output pixel ``i`` samples the input at ``(i + 0.5) * n_in / n_out - 0.5``, clamped at 0
    below; past the last pixel both taps are the last pixel.
    """
    source = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.intp), n_in - 1)
    return low, np.minimum(low + 1, n_in - 1), source - low


def aspect_input_size(image_size: tuple[int, int], short_side: int = 256, multiple: int = 32) -> tuple[int, int]:
    """An ``input_size`` that keeps an image's aspect ratio: the short side at ``short_side``.

    The long side is scaled by the same factor and rounded to a multiple of ``multiple``
    (backbones halve the resolution five times; 32 keeps every feature map's cells
    aligned with the image). The cheaper alternative to tiling for non-square images: it
    keeps thin features from being squashed along the long side, at
    ``long / short`` times the compute of a square ``short_side`` input.

    Parameters
    ----------
    image_size : (int, int)
        Height and width of a typical image, in pixels.
    short_side : int, default=256
        The input's short side, in pixels.
    multiple : int, default=32
        The long side is rounded to a multiple of this (at least ``short_side``).

    Returns
    -------
    (int, int)
        ``(height, width)`` for ``FastFlowDetector(input_size=...)``.

    Raises
    ------
    ValueError
        For sizes that are not positive.

    Examples
    --------
    >>> aspect_input_size((500, 1263))
    (256, 640)
    >>> aspect_input_size((800, 600))
    (352, 256)
    """
    height, width = image_size
    if min(height, width, short_side, multiple) <= 0:
        raise ValueError(f"image_size={image_size!r}, short_side={short_side!r} and multiple={multiple!r} must be positive.")
    long_side = max(short_side, multiple * round(short_side * max(height, width) / min(height, width) / multiple))
    return (short_side, long_side) if height <= width else (long_side, short_side)


__all__ = ["MapStitcher", "TileBox", "TileMapAssembler", "aspect_input_size", "check_tiling", "resize_map", "stitch", "stitched_scores", "tile_boxes"]
