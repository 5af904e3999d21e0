"""Per-pixel standardisation of anomaly maps by the maps of good images, before the image score.

FastFlow's anomaly map is a per-pixel likelihood. Where the maps of good images run hot as
a matter of course (a part's rim, the edge of a fixture, a textured region), the image
score, the mean of the map's top values, picks that up in every image, good or not, and
the defects have to outshine it. Standardising each pixel by the maps of good images,

    standardised = (map - mean) / (std + median(std)),

with ``mean`` and ``std`` taken per pixel over the good training images' maps, scores
each pixel against what is usual there; the median of ``std`` keeps pixels whose maps
hardly vary from dominating. Per-position statistics of good images are PaDiM's idea
(Defard et al. 2021, "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection
and Localization", per-position Gaussians of features); here they apply to FastFlow's map.
Measured in ``docs/quality.md`` (*Maps standardised per pixel*).

The module needs numpy only: :class:`skfastflow.runtime.RuntimeDetector` applies the same
statistics without torch.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .tiling import resize_map

#: Largest number of pixels of the statistics' grid: stitched maps of large images are
#: averaged at a reduced size (the flows' features are coarser than the image's pixels).
MAX_STATISTICS_PIXELS = 1024 * 1024


def statistics_size(map_sizes) -> tuple[int, int]:
    """The grid ``(H, W)`` the statistics are kept at: the most common map size, shrunk to at most :data:`MAX_STATISTICS_PIXELS`.

    Parameters
    ----------
    map_sizes : iterable of (int, int)
        ``(height, width)`` of the good images' maps.

    Returns
    -------
    (int, int)
    """
    height, width = Counter(tuple(int(side) for side in size) for size in map_sizes).most_common(1)[0][0]
    shrink = min(1.0, (MAX_STATISTICS_PIXELS / (height * width)) ** 0.5)
    return max(1, round(height * shrink)), max(1, round(width * shrink))


def returned_map_kind(map_standardizer: "MapStandardizer | None", tile_grid_size) -> str:
    """Which map a detector's ``predict_maps`` returns: ``"raw"`` or ``"standardized"``.

    The raw map (FastFlow's, in ``[-1, 0]``, as the paper and anomalib give it), except with
    per-position tile flows (``tile_grid_size`` not None) and a ``map_standardizer``: then the
    standardised map. Each position's flows are trained apart and put good images' maps at
    levels of their own (pitting, trained on all 590 good images: mean raw level of its good
    test images -0.54 to -0.78 over its ten positions, the extremes 4 to 7 within-position
    standard deviations apart), so the raw map
    stitched from them has a seam of level at every tile border; standardising per pixel
    takes each position's level out. Measured on the ten per-position fits of
    ``docs/quality.md`` (*Tiling*): AUPRO of the standardised maps at least that of the raw
    maps on nine (+0.001 to +0.34, mean +0.091), 0.033 below on one (tire, whose test
    images come from another session than its training images).

    Parameters
    ----------
    map_standardizer : MapStandardizer or None
        The detector's ``map_standardizer_``.
    tile_grid_size : (int, int) or None
        The detector's ``tile_grid_size_`` (not None only with per-position tile flows).

    Returns
    -------
    {"raw", "standardized"}
    """
    return "standardized" if map_standardizer is not None and tile_grid_size is not None else "raw"


class GoodMapStatistics:
    """Accumulates the per-pixel mean and variance of good images' maps, one batch at a time.

    Memory: two float64 arrays of ``size``, whatever the number of maps. Maps of another
    size are resized to ``size`` first (bilinear, :func:`skfastflow.tiling.resize_map`).

    Parameters
    ----------
    size : (int, int)
        ``(height, width)`` of the statistics (:func:`statistics_size`).
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = tuple(size)
        self._sum = np.zeros(self.size, dtype=np.float64)
        self._sum_of_squares = np.zeros(self.size, dtype=np.float64)
        self.count = 0

    def add(self, anomaly_map: np.ndarray) -> None:
        """Add one map ``(H, W)``."""
        values = resize_map(np.asarray(anomaly_map, dtype=np.float64), self.size)
        self._sum += values
        self._sum_of_squares += values * values
        self.count += 1

    def result(self) -> "MapStandardizer":
        """The standardiser of the maps added so far.

        Raises
        ------
        ValueError
            When no map was added.
        """
        if self.count == 0:
            raise ValueError("no map of a good image was added, so there is nothing to standardise by.")
        mean = self._sum / self.count
        # Clipped at 0: float cancellation may leave a tiny negative variance where maps are constant.
        std = np.sqrt(np.maximum(self._sum_of_squares / self.count - mean * mean, 0.0))
        return MapStandardizer(mean, std + np.median(std))


class MapStandardizer:
    """Standardises anomaly maps per pixel: ``(map - mean) / scale``.

    Parameters
    ----------
    mean : ndarray of shape (H, W)
        Per-pixel mean of good images' maps.
    scale : ndarray of shape (H, W)
        Per-pixel standard deviation of good images' maps plus its median over pixels;
        positive wherever the good maps vary at all.

    Raises
    ------
    ValueError
        When the shapes differ, or a value of ``scale`` is not positive and finite (good
        maps that are constant everywhere: nothing to standardise by).
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray) -> None:
        mean, scale = np.asarray(mean, dtype=np.float32), np.asarray(scale, dtype=np.float32)
        if mean.ndim != 2 or mean.shape != scale.shape:
            raise ValueError(f"mean {mean.shape} and scale {scale.shape} must be two maps of the same (H, W) shape.")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError(
                "the maps of the good images are constant (or not finite), so they give no scale to standardise by; "
                "train on more varied good images, or pass standardize_maps=False."
            )
        self.mean, self.scale = mean, scale
        self._resized = {mean.shape: (mean, scale)}

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the statistics."""
        return tuple(self.mean.shape)

    def at_size(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, scale)`` resized to ``size`` (bilinear, as maps are resized), float32."""
        size = tuple(int(side) for side in size)
        if size not in self._resized:
            self._resized[size] = (resize_map(self.mean, size), resize_map(self.scale, size))
        return self._resized[size]

    def __call__(self, anomaly_map: np.ndarray) -> np.ndarray:
        """The standardised map of one map ``(H, W)`` of any size, float32."""
        mean, scale = self.at_size(anomaly_map.shape)
        return ((np.asarray(anomaly_map, dtype=np.float32) - mean) / scale).astype(np.float32)

    def __getstate__(self) -> dict:
        return {"mean": self.mean, "scale": self.scale}  # the resized copies are a cache

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["mean"], state["scale"])
