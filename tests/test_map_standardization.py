"""Maps standardised per pixel by good images' maps: the statistics, and the detector and runtime that apply them."""

import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from skfastflow import FastFlowDetector
from skfastflow.map_standardization import MAX_STATISTICS_PIXELS, GoodMapStatistics, MapStandardizer, statistics_size
from skfastflow.persistence import load, save
from skfastflow.runtime import decode_standardizer, encode_standardizer
from skfastflow.tiling import resize_map, stitched_scores


@given(n_maps=st.integers(1, 12), height=st.integers(1, 20), width=st.integers(1, 20), seed=st.integers(0, 999))
def test_statistics_are_the_per_pixel_mean_and_std_plus_the_median_std(n_maps, height, width, seed):
    maps = np.random.default_rng(seed).normal(-0.5, 0.1, size=(n_maps, height, width))
    statistics = GoodMapStatistics((height, width))
    for anomaly_map in maps:
        statistics.add(anomaly_map)
    std = maps.std(axis=0)
    if not np.all(std + np.median(std) > 0):  # one map: no spread anywhere
        with pytest.raises(ValueError, match="constant.*standardize_maps=False"):
            statistics.result()
        return
    standardizer = statistics.result()
    np.testing.assert_allclose(standardizer.mean, maps.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(standardizer.scale, std + np.median(std), rtol=1e-4, atol=1e-6)
    # The mean map itself standardises to zero; one scale above it, to one.
    np.testing.assert_allclose(standardizer(standardizer.mean), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardizer(standardizer.mean + standardizer.scale), 1.0, atol=1e-4)


def test_maps_of_other_sizes_meet_the_statistics_resized():
    rng = np.random.default_rng(0)
    mean, scale = rng.normal(size=(8, 12)), rng.uniform(0.5, 2.0, size=(8, 12))
    standardizer = MapStandardizer(mean, scale)
    anomaly_map = rng.normal(size=(20, 30)).astype(np.float32)
    expected = (anomaly_map - resize_map(mean.astype(np.float32), (20, 30))) / resize_map(scale.astype(np.float32), (20, 30))
    np.testing.assert_allclose(standardizer(anomaly_map), expected, rtol=1e-6)
    # Statistics accumulated from maps of several sizes: each map is resized to the grid first.
    statistics = GoodMapStatistics((8, 12))
    statistics.add(np.full((16, 24), -0.25))
    statistics.add(np.full((4, 6), -0.75))
    np.testing.assert_allclose(statistics.result().mean, -0.5)


def test_statistics_grid_is_the_most_common_size_bounded_in_pixels():
    assert statistics_size([(460, 1130), (460, 1130), (300, 300)]) == (460, 1130)
    height, width = statistics_size([(4000, 3000)])
    assert height * width <= MAX_STATISTICS_PIXELS * 1.01 and abs(height / width - 4 / 3) < 0.01


def test_constant_good_maps_are_refused_with_a_remedy():
    with pytest.raises(ValueError, match="standardize_maps=False"):
        MapStandardizer(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="same"):
        MapStandardizer(np.zeros((4, 4)), np.ones((4, 5)))


def test_standardizer_travels_exactly_through_pickle_and_export_metadata():
    rng = np.random.default_rng(1)
    standardizer = MapStandardizer(rng.normal(size=(5, 7)), rng.uniform(0.1, 1.0, size=(5, 7)))
    for copy in (pickle.loads(pickle.dumps(standardizer)), decode_standardizer(encode_standardizer(standardizer))):
        np.testing.assert_array_equal(copy.mean, standardizer.mean)
        np.testing.assert_array_equal(copy.scale, standardizer.scale)


def _images(n, seed, size=48):
    return np.random.default_rng(seed).integers(90, 160, size=(n, size, size, 3), dtype=np.uint8)


def _twins(**params):
    """Two detectors with the same flows (same seed, one thread), maps standardised or not."""
    common = dict(pre_trained=False, input_size=48, flow_steps=2, max_iter=2, early_stopping=False, calibration_cv=None,
                  inference_precision="float32", training_precision="float32", n_threads=1, random_state=0, **params)
    X = _images(10, 0)
    return (
        FastFlowDetector("test_resnet", standardize_maps=True, **common).fit(X),
        FastFlowDetector("test_resnet", standardize_maps=False, **common).fit(X),
        X,
    )


def test_detector_standardises_by_its_training_images_raw_maps():
    standardized, raw, X = _twins()
    # The statistics are those of the training images' raw maps, per pixel.
    train_maps = raw.predict_maps(X).astype(np.float64)
    std = train_maps.std(axis=0)
    np.testing.assert_allclose(standardized.map_standardizer_.mean, train_maps.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(standardized.map_standardizer_.scale, std + np.median(std), rtol=1e-4, atol=1e-7)
    # New images: the maps stay raw, and the score is minus the top 1 % of the standardised map.
    X_new = _images(4, 1)
    maps, scores = standardized.predict_maps(X_new, return_scores=True)
    np.testing.assert_array_equal(maps, raw.predict_maps(X_new))
    expected = (maps - standardized.map_standardizer_.mean) / standardized.map_standardizer_.scale
    np.testing.assert_allclose(scores, [stitched_scores(m, (0.01,))[0.01] for m in expected], rtol=1e-5, atol=1e-5)
    # offset_ comes from the standardised scores of the calibration (here the training) images.
    np.testing.assert_allclose(np.sort(standardized.calibration_scores_), np.sort(standardized.score_samples(X)), atol=1e-4)


def test_tiled_statistics_come_from_the_stitched_maps_of_the_training_images():
    standardized, raw, X = _twins(tile_size=32, tile_stride=16, tile_flows="shared")  # shared: images of any size
    train_maps = raw.predict_maps(X).astype(np.float64)  # stitched at 48x48 by the scoring path
    std = train_maps.std(axis=0)
    assert standardized.map_standardizer_.size == (48, 48)
    np.testing.assert_allclose(standardized.map_standardizer_.mean, train_maps.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(standardized.map_standardizer_.scale, std + np.median(std), rtol=1e-3, atol=1e-6)
    # An image of another size: the statistics are resized to its stitched map, then scored.
    other = np.random.default_rng(2).integers(90, 160, size=(64, 80, 3), dtype=np.uint8)
    stitched, score = standardized.predict_maps([other], return_scores=True)
    np.testing.assert_array_equal(stitched[0], raw.predict_maps([other])[0])
    expected = stitched_scores(standardized.map_standardizer_(stitched[0]), (0.01,))[0.01]
    assert score[0] == pytest.approx(expected, rel=1e-6)


def test_a_bright_patch_where_good_images_vary_least_stands_out_more_after_standardising():
    """Good images vary in their left half only (a texture that changes from part to part) and
    are flat on the right; a defect on the flat right is what standardising is for: raw maps
    run hot on the left of every image, so the defect's lead over good images grows."""
    rng = np.random.default_rng(3)

    def part(defect=False):
        image = np.full((48, 48, 3), 120, dtype=np.uint8)
        image[:, :24] = rng.integers(40, 220, size=(48, 24, 1), dtype=np.uint8)
        if defect:
            image[20:26, 34:40] = 160
        return image

    good = np.stack([part() for _ in range(24)])
    params = dict(pre_trained=False, input_size=48, flow_steps=2, max_iter=4, calibration_cv=None, n_threads=1, random_state=0)
    margins = {}
    for standardize in (False, True):
        detector = FastFlowDetector("test_resnet", standardize_maps=standardize, **params).fit(good)
        good_scores = detector.score_samples(np.stack([part() for _ in range(8)]))
        defect_scores = detector.score_samples(np.stack([part(defect=True) for _ in range(8)]))
        # How far below the good images the defects score, in units of the good scores' spread.
        margins[standardize] = (np.median(good_scores) - np.median(defect_scores)) / np.std(good_scores)
    # Raw maps even score the defects as more normal than good parts (measured -2.0 spreads); standardised, they score below them.
    assert margins[True] > 0 and margins[True] > margins[False]


def test_a_fold_trained_on_copies_of_one_image_borrows_the_fitted_statistics(monkeypatch):
    """Cross-fitting on a folder of duplicates: the fold whose training images are all copies of
    one image has no spread of its own, so its scores are standardised by the fitted flows'
    statistics, with no warning (the fitted detector does standardise) and no lost images."""
    refused = []
    result = GoodMapStatistics.result

    def spy(statistics):
        try:
            return result(statistics)
        except ValueError:
            refused.append(statistics.count)
            raise

    monkeypatch.setattr(GoodMapStatistics, "result", spy)
    copies, other = _images(1, 0), _images(1, 1)
    X = np.concatenate([np.repeat(copies, 5, axis=0), other])
    params = dict(pre_trained=False, input_size=48, flow_steps=2, max_iter=2, early_stopping=False, calibration_cv=2,
                  inference_precision="float32", training_precision="float32", n_threads=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector = FastFlowDetector("test_resnet", **params).fit(X)
    assert refused, "no fold was left with copies of one image only"
    assert detector.map_standardizer_ is not None
    assert detector.calibration_scores_.shape == (6,) and np.all(np.isfinite(detector.calibration_scores_))


def test_model_files_keep_the_statistics_and_older_files_score_raw_maps(tmp_path):
    standardized, raw, X = _twins()
    save(standardized, tmp_path / "model.joblib")
    loaded = load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.map_standardizer_.mean, standardized.map_standardizer_.mean)
    np.testing.assert_array_equal(loaded.score_samples(X[:3]), standardized.score_samples(X[:3]))
    # A detector pickled before standardize_maps existed scored raw maps against an offset_ from them.
    state = raw.__getstate__()
    del state["standardize_maps"], state["map_standardizer_"]
    old = FastFlowDetector.__new__(FastFlowDetector)
    old.__setstate__(state)
    assert old.standardize_maps is False and old.map_standardizer_ is None
    np.testing.assert_array_equal(old.score_samples(X[:3]), raw.score_samples(X[:3]))
