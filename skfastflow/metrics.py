"""Pixel-level metrics for anomaly segmentation: pixel ROC AUC and AUPRO.

Both metrics are areas under one kind of curve. A threshold sweeps the anomaly maps from
the highest score down; at each threshold the x axis is the false positive rate (the
fraction of defect-free pixels, over all images, scoring at or above the threshold) and
the y axis is a weighted fraction of defect pixels scoring at or above it:

- ROC curve (:func:`pixel_roc_auc_score`): every defect pixel weighs the same, so large
  defects dominate.
- Per-region overlap (PRO) curve of the MVTec AD paper (:func:`aupro_score`): every
  connected defect region weighs the same, so a missed small scratch costs as much as a
  missed large stain.

Pixels with equal scores switch together, so the curve joins consecutive distinct
thresholds by straight lines; this is the trapezoidal rule of
:func:`sklearn.metrics.roc_auc_score`, where ties count half.

Memory
------
The maps are read one image at a time, several passes over the data. Held at once:
about 32 bytes per defect pixel (its score, weight and sort order, reduced to 16 bytes
after sorting), a few temporary arrays the size of one map, and, while :func:`aupro_score`
locates the score at which the false positive rate reaches ``max_fpr``, at most
``_SELECTION_BUFFER`` defect-free scores (32 MiB). Defect-free pixels, the vast majority,
are never all held at once, so thousands of 1024x1024 maps fit in ordinary memory as long
as their defect pixels do.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import ndimage

# Most defect-free scores held at once while locating the max_fpr cut-off (8 bytes each).
_SELECTION_BUFFER = 1 << 22
# Pivot values drawn per narrowing pass when more scores than the buffer remain: each pass
# leaves about 1 / _PIVOT_SAMPLE of the candidates.
_PIVOT_SAMPLE = 1 << 12
# 8-connectivity, as in the official MVTec AD evaluation code (a 3x3 structuring element
# of ones): pixels touching at a corner belong to the same defect region.
_REGION_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def pixel_roc_auc_score(masks, maps):
    """Area under the ROC curve over all pixels of all images.

    Equal to :func:`sklearn.metrics.roc_auc_score` on the flattened, concatenated masks
    and maps (ties count half), without concatenating them: see the module's notes on
    memory.

    Parameters
    ----------
    masks : array-like of shape (n_images, height, width) or list of 2-D arrays
        Ground truth, 1 or True for defect pixels, 0 or False for defect-free ones.
        Images may differ in size when given as a list.
    maps : array-like of shape (n_images, height, width) or list of 2-D arrays
        Anomaly maps, higher means more anomalous; each the same shape as its mask.

    Returns
    -------
    auc : float
        In [0, 1]; 1 when every defect pixel scores above every defect-free pixel,
        0.5 for a constant map.

    Examples
    --------
    >>> import numpy as np
    >>> from skfastflow.metrics import pixel_roc_auc_score
    >>> masks = [np.array([[0, 1], [0, 0]]), np.array([[0, 0, 1]])]
    >>> maps = [np.array([[0.1, 0.9], [0.2, 0.3]]), np.array([[0.0, 0.4, 0.8]])]
    >>> float(pixel_roc_auc_score(masks, maps))
    1.0
    """
    masks, maps = _check_masks_and_maps(masks, maps)
    return _area_under_curve(masks, maps, max_fpr=1.0, defect_weights=_unit_weights)


def aupro_score(masks, maps, max_fpr=0.3):
    """Area under the per-region overlap (PRO) curve up to ``max_fpr``, normalised to [0, 1].

    The PRO curve of Bergmann et al., "The MVTec Anomaly Detection Dataset" (IJCV 2021):
    at each threshold, PRO is the mean, over all connected defect regions of all images,
    of the fraction of the region's pixels scoring at or above the threshold; the false
    positive rate is the fraction of all defect-free pixels scoring at or above it. The
    curve is integrated over false positive rates from 0 to ``max_fpr`` (interpolated
    linearly at ``max_fpr``) and divided by ``max_fpr``.

    Regions are 8-connected (pixels touching at a corner belong to one region), as in
    the official MVTec AD evaluation code. Memory stays bounded for large data sets: see
    the module's notes.

    Parameters
    ----------
    masks : array-like of shape (n_images, height, width) or list of 2-D arrays
        Ground truth, 1 or True for defect pixels, 0 or False for defect-free ones.
        Images may differ in size when given as a list; images without defects count
        towards the false positive rate only.
    maps : array-like of shape (n_images, height, width) or list of 2-D arrays
        Anomaly maps, higher means more anomalous; each the same shape as its mask.
    max_fpr : float, default=0.3
        Upper limit of the false positive rate, in (0, 1]. 0.3 is the MVTec AD standard.

    Returns
    -------
    aupro : float
        In [0, 1]: 1 when every defect pixel scores above every defect-free pixel;
        ``max_fpr / 2`` for a constant map (the curve is then the diagonal PRO = FPR).

    Examples
    --------
    >>> import numpy as np
    >>> from skfastflow.metrics import aupro_score
    >>> mask = np.zeros((4, 4), dtype=bool)
    >>> mask[1:3, 1:3] = True
    >>> float(aupro_score([mask], [mask * 1.0]))
    1.0
    >>> float(aupro_score([mask], [np.zeros((4, 4))]))
    0.15
    """
    if (
        isinstance(max_fpr, bool)
        or not isinstance(max_fpr, numbers.Real)
        or not 0.0 < max_fpr <= 1.0
    ):
        raise ValueError(
            f"max_fpr must be a number in (0, 1], got {max_fpr!r}; 0.3 is the MVTec AD standard."
        )
    masks, maps = _check_masks_and_maps(masks, maps)
    return _area_under_curve(masks, maps, max_fpr=float(max_fpr), defect_weights=_region_weights)


def _check_masks_and_maps(masks, maps):
    """Return masks as boolean 2-D arrays and maps as 2-D arrays, one per image.

    Raises ValueError or TypeError naming the offending image and the fix.
    """
    masks = _as_image_list(masks, "masks")
    maps = _as_image_list(maps, "maps")
    if len(masks) != len(maps):
        raise ValueError(
            f"masks holds {len(masks)} images but maps holds {len(maps)}; pass one map per mask."
        )
    boolean_masks = []
    n_defect = n_normal = 0
    for index, (mask, anomaly_map) in enumerate(zip(masks, maps)):
        if mask.shape != anomaly_map.shape:
            raise ValueError(
                f"masks[{index}] has shape {mask.shape} but maps[{index}] has shape "
                f"{anomaly_map.shape}; each map must have the shape of its mask "
                "(resize the map to the image's size)."
            )
        if anomaly_map.dtype.kind not in "biuf":
            raise TypeError(
                f"maps[{index}] has dtype {anomaly_map.dtype}; anomaly maps must hold real numbers."
            )
        if anomaly_map.dtype.kind == "f" and not np.isfinite(anomaly_map).all():
            raise ValueError(
                f"maps[{index}] contains NaN or infinite scores; replace them "
                "(e.g. np.nan_to_num) before scoring."
            )
        mask = _as_boolean_mask(mask, index)
        defects = int(np.count_nonzero(mask))
        n_defect += defects
        n_normal += mask.size - defects
        boolean_masks.append(mask)
    if n_defect == 0:
        raise ValueError(
            "masks contain no defect pixels, so the metric is undefined; evaluate on a set "
            "that includes defective images."
        )
    if n_normal == 0:
        raise ValueError(
            "masks contain no defect-free pixels, so the false positive rate is undefined; "
            "evaluate on images that are not entirely defective."
        )
    return boolean_masks, maps


def _as_image_list(images, name):
    """A list of 2-D arrays from an (N, H, W) array or a sequence of 2-D arrays."""
    if isinstance(images, np.ndarray) and images.dtype != object:
        if images.ndim != 3:
            hint = " (wrap a single image in a list)" if images.ndim == 2 else ""
            raise ValueError(
                f"{name} must be an array (n_images, height, width) or a list of 2-D arrays; "
                f"got an array of shape {images.shape}{hint}."
            )
        return list(images)
    if isinstance(images, (str, bytes)) or not hasattr(images, "__len__"):
        raise TypeError(
            f"{name} must be an array (n_images, height, width) or a list of 2-D arrays; "
            f"got {type(images).__name__}."
        )
    if len(images) == 0:
        raise ValueError(f"{name} is empty; pass at least one image.")
    arrays = [np.asarray(image) for image in images]
    for index, array in enumerate(arrays):
        if array.ndim != 2:
            raise ValueError(
                f"{name}[{index}] has shape {array.shape}; each item must be a 2-D array "
                "(height, width)."
            )
    return arrays


def _as_boolean_mask(mask, index):
    """Mask as a boolean array; only bool and 0/1 values are accepted."""
    if mask.dtype == bool:
        return mask
    if mask.dtype.kind not in "iuf":
        raise TypeError(
            f"masks[{index}] has dtype {mask.dtype}; masks must be boolean or hold 0 and 1."
        )
    defect = mask == 1
    if not (defect | (mask == 0)).all():
        stray = mask[~(defect | (mask == 0))].flat[0]
        hint = " (for 0/255 masks read from PNG files, pass mask > 0)" if stray == 255 else ""
        raise ValueError(
            f"masks[{index}] is not binary: it holds {stray!r} besides 0 and 1; masks must be "
            f"boolean or 0/1, with 1 marking defect pixels{hint}."
        )
    return defect


def _unit_weights(mask):
    """ROC weighting: every defect pixel counts once."""
    return np.ones(np.count_nonzero(mask))


def _region_weights(mask):
    """PRO weighting: each defect pixel weighs 1 / (size of its region), so regions weigh 1."""
    labels, _ = ndimage.label(mask, structure=_REGION_CONNECTIVITY)
    region_sizes = np.bincount(labels.ravel())
    return 1.0 / region_sizes[labels[mask]]


def _area_under_curve(masks, maps, max_fpr, defect_weights):
    """Area under (false positive rate, weighted fraction of defects detected) up to max_fpr.

    Between consecutive distinct scores the curve is a straight line, so a group of
    defect-free pixels sharing score ``s`` adds ``count * (W(> s) + W(>= s)) / 2`` to the
    area (in units of pixels times weight), where ``W(> s)`` is the weight of defect
    pixels scoring above ``s``. That sum is order-free, so defect-free pixels can stream
    image by image; only the group where the false positive rate crosses ``max_fpr``
    needs the global rank, found by :func:`_kth_largest_normal_score`.
    """
    defect_scores = []
    weights = []
    n_normal = 0
    for mask, anomaly_map in zip(masks, maps):
        defect_scores.append(anomaly_map[mask].astype(np.float64))
        weights.append(defect_weights(mask))
        n_normal += mask.size - len(defect_scores[-1])
    defect_scores = np.concatenate(defect_scores)
    weights = np.concatenate(weights)
    order = np.argsort(defect_scores)
    defect_scores = defect_scores[order]
    # weight_from[i]: total weight of the defects sorted at position i or later, i.e. those
    # scoring at or above defect_scores[i]; summed from the top so no large totals cancel.
    weight_from = np.zeros(len(defect_scores) + 1)
    weight_from[:-1] = np.cumsum(weights[order][::-1])[::-1]
    del order, weights
    total_weight = weight_from[0]

    def weight_above(score):
        return float(weight_from[np.searchsorted(defect_scores, score, side="right")])

    def weight_at_or_above(score):
        return float(weight_from[np.searchsorted(defect_scores, score, side="left")])

    def summed_heights(scores):
        """Sum of W(> s) + W(>= s) over scores, searching most scores once, not twice."""
        first_at_or_above = np.searchsorted(defect_scores, scores, side="left")
        total = 2.0 * float(np.sum(weight_from[first_at_or_above]))
        # W(> s) is below W(>= s) only where s equals some defect score.
        last = np.minimum(first_at_or_above, len(defect_scores) - 1)
        tied = defect_scores[last] == scores
        if tied.any():
            first_above = np.searchsorted(defect_scores, scores[tied], side="right")
            total -= float(np.sum(weight_from[first_at_or_above[tied]] - weight_from[first_above]))
        return total

    # The false positive rate budget, in defect-free pixels.
    fpr_budget = max_fpr * n_normal
    if max_fpr == 1.0:
        # Every group lies within the budget: no cut-off to locate.
        cut_score, n_above_cut, n_at_cut = -np.inf, n_normal, 0
    else:
        cut_score, n_above_cut, n_at_cut = _kth_largest_normal_score(
            masks, maps, math.ceil(fpr_budget)
        )

    area = 0.0
    for mask, anomaly_map in zip(masks, maps):
        scores = anomaly_map[~mask]
        scores = scores[scores > cut_score]
        area += summed_heights(scores) / 2.0

    if n_at_cut:
        # The group at the cut-off spans false positives n_above_cut .. n_above_cut + n_at_cut
        # while the detected weight rises linearly; keep its part up to the budget.
        start_height = weight_above(cut_score)
        end_height = weight_at_or_above(cut_score)
        width = fpr_budget - n_above_cut
        height = start_height + (end_height - start_height) * width / n_at_cut
        area += width * (start_height + height) / 2.0

    # Mathematically within [0, 1]; the clip removes rounding above 1 for perfect maps.
    return min(area / (total_weight * fpr_budget), 1.0)


def _kth_largest_normal_score(masks, maps, k):
    """The k-th largest defect-free score (k counts from 1), in a few passes over the maps.

    Returns ``(score, n_greater, n_equal)``: the score, how many defect-free pixels score
    above it and how many score exactly it. Holds at most ``_SELECTION_BUFFER`` scores:
    while more candidates remain, a pass draws evenly spaced pivots from them and a second
    pass counts candidates between and at the pivots, which narrows the candidates to one
    gap between pivots (or ends at a pivot).
    """
    lower, upper = -np.inf, np.inf  # the answer lies strictly between these two scores
    n_greater = 0  # defect-free scores at or above `upper`
    n_candidates = sum(mask.size - int(np.count_nonzero(mask)) for mask in masks)

    def candidates():
        for mask, anomaly_map in zip(masks, maps):
            scores = anomaly_map[~mask]
            yield scores[(scores > lower) & (scores < upper)]

    while n_candidates > _SELECTION_BUFFER:
        stride = -(-n_candidates // _PIVOT_SAMPLE)
        # Copies, not views: a view would keep each image's candidates alive.
        sample = [scores[::stride].copy() for scores in candidates()]
        pivots = np.unique(np.concatenate(sample))
        # Slot 2i + 1 counts candidates equal to pivots[i]; slot 2i those strictly between
        # pivots[i - 1] and pivots[i] (slot 0 below the first, the last above the last).
        counts = np.zeros(2 * len(pivots) + 1, dtype=np.int64)
        for scores in candidates():
            position = np.searchsorted(pivots, scores, side="left")
            on_pivot = pivots[np.minimum(position, len(pivots) - 1)] == scores
            counts += np.bincount(2 * position + on_pivot, minlength=len(counts))
        at_or_above = np.cumsum(counts[::-1])[::-1]
        slot = int(np.count_nonzero(at_or_above >= k - n_greater)) - 1
        n_in_slots_above = int(at_or_above[slot] - counts[slot])
        if slot % 2 == 1:
            return pivots[slot // 2], n_greater + n_in_slots_above, int(counts[slot])
        if slot > 0:
            lower = pivots[slot // 2 - 1]
        if slot < 2 * len(pivots):
            upper = pivots[slot // 2]
        n_greater += n_in_slots_above
        n_candidates = int(counts[slot])

    scores = np.concatenate(list(candidates()))
    position = len(scores) - (k - n_greater)
    score = np.partition(scores, position)[position]
    return (
        score,
        n_greater + int(np.count_nonzero(scores > score)),
        int(np.count_nonzero(scores == score)),
    )


def recall_at_false_alarm_rates(y_true, scores, false_alarm_rates=(0.0, 0.01, 0.05, 0.1)):
    """Share of defective images caught by the best threshold allowed each false-alarm rate.

    For each rate ``r``, the threshold is the one that flags the most defective images
    while flagging at most a share ``r`` of the good ones (images are flagged when their
    score lies strictly below it). This is the operating point a threshold chosen *on
    these very images* would reach, so it is a yardstick for a threshold set without them,
    never a way to set one.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        1 for good, -1 for defective images (scikit-learn's outlier labels).
    scores : array-like of shape (n_samples,)
        :meth:`~skfastflow.FastFlowDetector.score_samples` (lower = more abnormal).
    false_alarm_rates : sequence of float in [0, 1], default=(0, 0.01, 0.05, 0.1)

    Returns
    -------
    recalls : ndarray of shape (len(false_alarm_rates),), dtype float64
        Values in [0, 1].

    Raises
    ------
    ValueError
        If the labels are not 1 / -1, or either class is missing.

    Examples
    --------
    >>> recall_at_false_alarm_rates([1, 1, 1, 1, -1, -1], [0.9, 0.8, 0.7, 0.4, 0.5, 0.1], [0.0, 0.25])
    array([0.5, 1. ])
    """
    y_true = np.asarray(y_true).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y_true.shape != scores.shape:
        raise ValueError(f"y_true has {y_true.size} labels but scores has {scores.size} values; pass one of each per image.")
    if not np.isin(y_true, (1, -1)).all():
        raise ValueError("y_true may only hold 1 (good) and -1 (defective).")
    good, defects = np.sort(scores[y_true == 1]), np.sort(scores[y_true == -1])
    if good.size == 0 or defects.size == 0:
        raise ValueError("recall at a false-alarm rate needs good (1) and defective (-1) images.")
    recalls = []
    for rate in false_alarm_rates:
        # At most floor(rate * n_good) good images may lie strictly below the threshold: the
        # highest such threshold is the next good score up (all of them for rate 1).
        allowed = math.floor(rate * good.size + 1e-9)
        threshold = good[allowed] if allowed < good.size else np.inf
        recalls.append(np.searchsorted(defects, threshold, side="left") / defects.size)
    return np.array(recalls, dtype=np.float64)
