"""Tests for skfastflow.metrics: pixel ROC AUC and AUPRO on data with known answers."""

import tracemalloc
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from skfastflow import metrics
from skfastflow.metrics import aupro_score, pixel_roc_auc_score


def slow_aupro(masks, maps, max_fpr):
    """AUPRO straight from its definition: one threshold at a time, then the trapezoid rule."""
    regions = []  # boolean mask of each defect region, with the index of its image
    for index, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(index, labels == label) for label in range(1, count + 1)]
    n_normal = sum(int((~np.asarray(mask, bool)).sum()) for mask in masks)
    thresholds = sorted({float(v) for m in maps for v in np.ravel(m)}, reverse=True)
    fprs, pros = [0.0], [0.0]  # above every score nothing is detected
    for threshold in thresholds:
        detected = [np.asarray(m) >= threshold for m in maps]
        false_positives = sum(int((d & ~np.asarray(m, bool)).sum()) for d, m in zip(detected, masks))
        fprs.append(false_positives / n_normal)
        pros.append(np.mean([detected[i][region].mean() for i, region in regions]))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(fprs, pros), zip(fprs[1:], pros[1:])):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # interpolate the curve exactly at max_fpr
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


@st.composite
def labelled_maps(draw, max_images=3, max_side=6, max_score=None):
    """Masks and maps of random sizes, with at least one defect and one defect-free pixel.

    Integer scores from a small range force many ties; otherwise scores are floats.
    """
    n_images = draw(st.integers(1, max_images))
    masks, maps = [], []
    for _ in range(n_images):
        shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
        masks.append(draw(hnp.arrays(bool, shape)))
        if max_score is None:
            elements = st.floats(-10, 10, allow_nan=False, width=32)
            maps.append(draw(hnp.arrays(np.float32, shape, elements=elements)))
        else:
            maps.append(draw(hnp.arrays(np.int64, shape, elements=st.integers(0, max_score))))
    all_masks = np.concatenate([m.ravel() for m in masks])
    assume(all_masks.any() and not all_masks.all())
    return masks, maps


def flatten(images):
    return np.concatenate([np.ravel(image) for image in images])


# --- pixel ROC AUC ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=st.one_of(labelled_maps(max_score=3), labelled_maps()))
def test_pixel_roc_auc_equals_sklearn_on_flattened_pixels(data):
    masks, maps = data
    expected = roc_auc_score(flatten(masks), flatten(maps))
    assert pixel_roc_auc_score(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_roc_auc_known_values():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    assert pixel_roc_auc_score([mask], [mask.astype(float)]) == 1.0
    assert pixel_roc_auc_score([mask], [1.0 - mask]) == 0.0
    assert pixel_roc_auc_score([mask], [np.full((4, 4), 7.0)]) == 0.5


def test_pixel_roc_auc_weights_pixels_while_aupro_weights_regions():
    # Two regions in a 1x10 strip: a 1-pixel one above every defect-free pixel and a
    # 3-pixel one below all of them. Pixel AUROC = 1/4 (one defect pixel of four ranks
    # above the normals); the PRO curve sits at 1/2 (one region of two) over all FPRs.
    mask = np.array([[1, 0, 0, 0, 1, 1, 1, 0, 0, 0]])
    anomaly_map = np.array([[9.0, 5, 5, 5, 0, 0, 0, 5, 5, 5]])
    assert pixel_roc_auc_score([mask], [anomaly_map]) == pytest.approx(0.25)
    assert aupro_score([mask], [anomaly_map]) == pytest.approx(0.5)


def test_masks_and_maps_as_stacked_arrays_equal_lists():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 8, 9)) > 0.8
    maps = rng.random((3, 8, 9)).astype(np.float32)
    assert pixel_roc_auc_score(masks, maps) == pixel_roc_auc_score(list(masks), list(maps))
    assert aupro_score(masks, maps) == aupro_score(list(masks.astype(int)), list(maps))
    # Same scores in float64 give the same answer: float32 -> float64 is exact.
    assert aupro_score(masks, maps) == aupro_score(masks, maps.astype(np.float64))


# --- AUPRO -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    data=st.one_of(labelled_maps(max_score=3), labelled_maps()),
    max_fpr=st.sampled_from([0.3, 1.0, 0.05, 0.5, 0.77]),
)
def test_aupro_equals_slow_definition(data, max_fpr):
    masks, maps = data
    expected = slow_aupro(masks, maps, max_fpr)
    assert aupro_score(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    data=st.one_of(labelled_maps(max_images=4, max_side=8, max_score=4), labelled_maps(max_side=8)),
    max_fpr=st.sampled_from([0.3, 0.05, 0.6]),
    buffer=st.integers(1, 5),
    pivots=st.integers(1, 4),
)
def test_aupro_streaming_selection_matches_definition(data, max_fpr, buffer, pivots):
    # Tiny buffers force the multi-pass search for the max_fpr cut-off that large data sets use.
    masks, maps = data
    with mock.patch.object(metrics, "_SELECTION_BUFFER", buffer), mock.patch.object(
        metrics, "_PIVOT_SAMPLE", pivots
    ):
        streamed = aupro_score(masks, maps, max_fpr=max_fpr)
    assert streamed == pytest.approx(slow_aupro(masks, maps, max_fpr), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(data=labelled_maps(max_side=8), max_fpr=st.floats(0.01, 1.0))
def test_aupro_lies_in_unit_interval_and_depends_only_on_score_order(data, max_fpr):
    masks, maps = data
    value = aupro_score(masks, maps, max_fpr=max_fpr)
    assert 0.0 <= value <= 1.0
    # Only the order of scores matters: squared dense ranks keep it exactly, spacing aside.
    ranks = np.unique(flatten(maps), return_inverse=True)[1] + 1
    sizes = np.cumsum([m.size for m in maps])[:-1]
    transformed = [(r**2).reshape(m.shape) for r, m in zip(np.split(ranks, sizes), maps)]
    assert aupro_score(masks, transformed, max_fpr=max_fpr) == pytest.approx(value, abs=1e-9)


@pytest.mark.parametrize("max_fpr", [0.3, 0.01, 1.0])
def test_aupro_perfect_inverted_and_constant_maps(max_fpr):
    rng = np.random.default_rng(1)
    masks = rng.random((4, 16, 16)) > 0.9
    masks[1] = False  # an image without defects
    perfect = masks + rng.random(masks.shape) * 0.5
    assert aupro_score(masks, perfect, max_fpr=max_fpr) == 1.0
    assert aupro_score(masks, -perfect, max_fpr=max_fpr) == 0.0
    # A constant map switches every pixel at once: the curve is the diagonal PRO = FPR,
    # whose area up to max_fpr, divided by max_fpr, is max_fpr / 2.
    constant = np.zeros(masks.shape)
    assert aupro_score(masks, constant, max_fpr=max_fpr) == pytest.approx(max_fpr / 2)


def test_aupro_interpolates_inside_a_group_of_tied_scores():
    # Scores 3: two defect-free pixels and the single-pixel region; scores 1: two more
    # defect-free pixels. The curve runs straight from (0, 0) to (0.5, 1), so PRO = 2 FPR
    # and the area up to 0.3 is 0.09; divided by 0.3 that is 0.3.
    mask = np.array([[0, 0, 1, 0, 0]])
    anomaly_map = np.array([[3, 3, 3, 1, 1]])
    assert aupro_score([mask], [anomaly_map], max_fpr=0.3) == pytest.approx(0.3)
    assert aupro_score([mask], [anomaly_map], max_fpr=0.5) == pytest.approx(0.5)
    assert aupro_score([mask], [anomaly_map], max_fpr=1.0) == pytest.approx(0.75)


def test_aupro_threshold_between_defect_free_scores():
    # Ten defect-free pixels with distinct scores; the one-pixel region is found after two
    # of them (FPR 0.2), so PRO is 0 up to 0.2 and 1 after: area 0.1 up to 0.3.
    anomaly_map = np.array([[10.0, 9, 8.5, 7, 6, 5, 4, 3, 2, 1, 0]])
    mask = np.zeros((1, 11), dtype=bool)
    mask[0, 2] = True
    assert aupro_score([mask], [anomaly_map], max_fpr=0.3) == pytest.approx(0.1 / 0.3)
    assert aupro_score([mask], [anomaly_map], max_fpr=0.25) == pytest.approx(0.05 / 0.25)
    assert aupro_score([mask], [anomaly_map], max_fpr=0.2) == 0.0


def test_aupro_regions_are_eight_connected():
    # One pixel touches a 3-pixel block at a corner: one region of 4 pixels (as in the
    # MVTec AD evaluation code), of which only the corner pixel is found: PRO = 1/4.
    # With 4-connectivity it would be two regions, one fully found: PRO = 1/2.
    mask = np.zeros((5, 5), dtype=bool)
    mask[0, 0] = True
    mask[1, 1:3] = True
    mask[2, 1] = True
    anomaly_map = np.where(mask, -1.0, 0.0)
    anomaly_map[0, 0] = 1.0
    assert aupro_score([mask], [anomaly_map]) == pytest.approx(0.25)


def test_aupro_images_of_different_sizes_and_images_without_defects():
    small_mask = np.zeros((3, 4), dtype=bool)
    small_mask[1, 1] = True
    large_mask = np.zeros((6, 5), dtype=bool)
    masks = [small_mask, large_mask]
    maps = [small_mask * 2.0, np.ones((6, 5))]  # the defect-free image scores in between
    # The defect pixel (2) beats every defect-free score (0 and 1): perfect.
    assert aupro_score(masks, maps) == 1.0
    maps[1] = np.full((6, 5), 3.0)  # now 30 of the 41 defect-free pixels beat the defect
    assert aupro_score(masks, maps) == pytest.approx(slow_aupro(masks, maps, 0.3))
    assert aupro_score(masks, maps) == 0.0


# --- input validation ------------------------------------------------------------------


@pytest.mark.parametrize("metric", [pixel_roc_auc_score, aupro_score])
def test_shape_mismatch_names_the_image(metric):
    masks = [np.array([[0, 1]]), np.array([[0, 1], [1, 0]])]
    maps = [np.zeros((1, 2)), np.zeros((2, 3))]
    with pytest.raises(ValueError, match=r"masks\[1\] has shape \(2, 2\) but maps\[1\] has shape \(2, 3\)"):
        metric(masks, maps)


@pytest.mark.parametrize("metric", [pixel_roc_auc_score, aupro_score])
def test_undefined_metrics_are_refused(metric):
    maps = np.zeros((2, 3, 3))
    with pytest.raises(ValueError, match="no defect pixels"):
        metric(np.zeros((2, 3, 3), dtype=bool), maps)
    with pytest.raises(ValueError, match="no defect-free pixels"):
        metric(np.ones((2, 3, 3), dtype=bool), maps)


@pytest.mark.parametrize("metric", [pixel_roc_auc_score, aupro_score])
def test_structural_errors(metric):
    with pytest.raises(ValueError, match="2 images but maps holds 1"):
        metric([np.eye(2), np.eye(2)], [np.eye(2)])
    with pytest.raises(ValueError, match="wrap a single image in a list"):
        metric(np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match="empty"):
        metric([], [])
    with pytest.raises(ValueError, match=r"maps\[0\] has shape \(2, 2, 1\)"):
        metric([np.eye(2)], [np.zeros((2, 2, 1))])
    with pytest.raises(TypeError, match="real numbers"):
        metric([np.eye(2)], [np.array([["a", "b"], ["c", "d"]])])
    with pytest.raises(TypeError, match="list of 2-D arrays"):
        metric(5, 5)


@settings(max_examples=50, deadline=None)
@given(stray=st.one_of(st.integers(2, 255), st.integers(-5, -1), st.sampled_from([0.5, 2.0])))
def test_non_binary_masks_are_refused(stray):
    mask = np.array([[0, 1], [stray, 0]])
    with pytest.raises(ValueError, match=r"masks\[0\] is not binary"):
        pixel_roc_auc_score([mask], [np.zeros((2, 2))])
    with pytest.raises(ValueError, match=r"masks\[0\] is not binary"):
        aupro_score([mask], [np.zeros((2, 2))])


def test_zero_255_masks_get_a_hint():
    with pytest.raises(ValueError, match="mask > 0"):
        aupro_score([np.array([[0, 255]])], [np.zeros((1, 2))])


@settings(max_examples=30, deadline=None)
@given(bad=st.sampled_from([np.nan, np.inf, -np.inf]), where=st.integers(0, 3))
def test_non_finite_scores_are_refused(bad, where):
    anomaly_map = np.zeros(4)
    anomaly_map[where] = bad
    with pytest.raises(ValueError, match=r"maps\[1\] contains NaN or infinite"):
        aupro_score([np.eye(2), np.eye(2)], [np.zeros((2, 2)), anomaly_map.reshape(2, 2)])


@given(
    max_fpr=st.one_of(
        st.floats(max_value=0.0),
        st.floats(min_value=1.0, exclude_min=True),
        st.just(float("nan")),
        st.just(True),
        st.just("0.3"),
    )
)
def test_max_fpr_outside_unit_interval_is_refused(max_fpr):
    with pytest.raises(ValueError, match=r"max_fpr must be a number in \(0, 1\]"):
        aupro_score([np.eye(2)], [np.eye(2)], max_fpr=max_fpr)


def test_memory_does_not_grow_with_the_number_of_defect_free_images():
    # Only the first image has defects; the rest stream through one at a time, so peak
    # memory for 48 images matches that for 6 (small buffers force the multi-pass search).
    rng = np.random.default_rng(2)
    masks = [np.zeros((128, 128), dtype=bool) for _ in range(48)]
    masks[0][10:20, 10:20] = True
    maps = [rng.random((128, 128)) for _ in masks]  # 128 KiB each, 6 MiB in all
    peaks = []
    with mock.patch.object(metrics, "_SELECTION_BUFFER", 1000):
        for n_images in (6, 48):
            tracemalloc.start()
            aupro_score(masks[:n_images], maps[:n_images])
            pixel_roc_auc_score(masks[:n_images], maps[:n_images])
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0]
