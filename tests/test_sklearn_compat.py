"""FastFlowDetector as a scikit-learn citizen: estimator checks, model selection, pipelines.

Data with a known answer: good images are smooth, low-contrast sinusoidal textures; defective
ones carry a bright square spot, always in the left half of the image. A tiny random-weight
backbone trained for three epochs separates them perfectly at 32 pixels.
"""

import inspect
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import sklearn
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, KFold, PredefinedSplit, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.validation import check_is_fitted

from conftest import carried_tolerance
from skfastflow import FastFlowDetector
from skfastflow._estimator_checks import CHECKS_REPLACED_FOR_IMAGES, check_name, sklearn_checks
from skfastflow.metrics import aupro_score, pixel_roc_auc_score
from skfastflow.scoring import pixel_aupro_scorer, pixel_roc_auc_scorer
from skfastflow.transformers import CropResize, GreyConverter

SIZE = 32
TINY = dict(
    backbone="test_resnet", pre_trained=False, input_size=SIZE, flow_steps=1, max_iter=3,
    learning_rate_init=1e-2, n_threads=1, calibration_cv=None, random_state=0,
)  # fmt: skip
LEFT_HALF, RIGHT_HALF = (0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)


def smooth_textures(n, rng, size=SIZE):
    """Bronze RGB float images: two low-frequency sinusoids of random phase, below 0.6."""
    rows, columns = np.mgrid[0:size, 0:size] / size
    frequency = rng.uniform(0.5, 1.5, (n, 2, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 2, 1, 1))
    grey = (
        0.4
        + 0.08 * np.sin(2 * np.pi * (frequency[:, 0] * columns + phase[:, 0]))
        + 0.08 * np.sin(2 * np.pi * (frequency[:, 1] * rows + phase[:, 1]))
    )
    # A bronze colour, varying a little from image to image: clearly colour images.
    tint = np.array([1.0, 0.85, 0.7]) * rng.uniform(0.95, 1.05, (n, 1, 1, 3))
    return (grey[..., None] * tint).astype(np.float32)


def add_bright_spots(images, rng, radii=(2, 3, 4)):
    """Copies of ``images`` with a white square in the left half, and the defect masks.

    The squares' half-sides cycle through ``radii``: with defects of one size, AUPRO up to a
    false positive rate of 1 equals the pixel AUROC (every region's overlap is the pixel
    recall), and the scorers could swap unnoticed.
    """
    images = images.copy()
    masks = np.zeros(images.shape[:3], dtype=bool)
    size = images.shape[1]
    for index, (image, mask) in enumerate(zip(images, masks)):
        radius = radii[index % len(radii)]
        row = rng.integers(radius + 1, size - radius - 1)
        column = rng.integers(radius + 1, size // 2 - radius - 1)
        image[row - radius : row + radius, column - radius : column + radius] = 1.0
        mask[row - radius : row + radius, column - radius : column + radius] = True
    return images, masks


@pytest.fixture(scope="module")
def data():
    """12 good training images; a test set of 8 good and 8 defective images with masks."""
    rng = np.random.default_rng(0)
    train = smooth_textures(12, rng)
    defective, defect_masks = add_bright_spots(smooth_textures(8, rng), rng)
    test = np.concatenate([smooth_textures(8, rng), defective])
    y_test = np.r_[np.ones(8, int), -np.ones(8, int)]
    masks = np.concatenate([np.zeros((8, SIZE, SIZE), bool), defect_masks])
    return train, test, y_test, masks


@pytest.fixture(scope="module")
def fitted(data):
    train, *_ = data
    return FastFlowDetector(**TINY).fit(train)


# ---------------------------------------------------------------------- scikit-learn's checks

CHEAP = FastFlowDetector(**{**TINY, "max_iter": 1})


def _check_params():
    for estimator, check, replaced in sklearn_checks(CHEAP):
        marks = [pytest.mark.skip(reason=f"{replaced.reason}; replaced by {replaced.replacement}")] if replaced else []
        yield pytest.param(estimator, check, marks=marks, id=check_name(check))


@pytest.mark.parametrize("estimator, check", list(_check_params()))
def test_sklearn_estimator_check(estimator, check):
    check(estimator)


def test_every_sklearn_check_is_run_or_replaced_by_an_existing_image_test():
    generated = {check_name(check) for _, check, _ in sklearn_checks(CHEAP)}
    stale = set(CHECKS_REPLACED_FOR_IMAGES) - generated
    assert not stale, f"listed checks that scikit-learn no longer has: {stale}"
    assert len(generated - set(CHECKS_REPLACED_FOR_IMAGES)) >= 10  # the API checks that do run
    tests_folder = Path(__file__).parent
    for name, replaced in CHECKS_REPLACED_FOR_IMAGES.items():
        file_name, test_name = replaced.replacement.removeprefix("tests/").split("::")
        assert f"def {test_name}(" in (tests_folder / file_name).read_text(), f"{name}: {test_name} is missing"


def test_tags_say_the_detector_takes_images():
    tags = FastFlowDetector().__sklearn_tags__()
    assert tags.estimator_type == "outlier_detector"
    assert not tags.input_tags.two_d_array and tags.input_tags.three_d_array
    assert tags.input_tags.string and tags.input_tags.positive_only
    assert not tags.input_tags.sparse and not tags.input_tags.allow_nan
    assert tags.requires_fit and not tags.target_tags.required


# ---------------------------------------------------------------------- replacements (see _estimator_checks)


def test_methods_take_y_second_and_accept_none(fitted, data):
    _, test, *_ = data
    for method in ("fit", "score", "fit_predict"):
        assert list(inspect.signature(getattr(FastFlowDetector, method)).parameters)[1:3] == ["X", "y"]
    # y=None is the unlabelled case: the mean of the images' own held-out log-likelihoods.
    per_image = [fitted.score(test[i : i + 1]) for i in range(4)]
    assert fitted.score(test[:4], None) == pytest.approx(np.mean(per_image), rel=1e-6)


def test_fit_returns_self_is_idempotent_and_changes_neither_parameters_nor_images(data, fitted):
    train, test, *_ = data
    detector = FastFlowDetector(**TINY)
    params = detector.get_params()
    copy = train.copy()
    assert detector.fit(train[:6]) is detector
    # A second fit starts afresh: same result as a single fit on the same images.
    assert detector.fit(train) is detector
    np.testing.assert_array_equal(train, copy)
    assert detector.get_params() == params
    np.testing.assert_array_equal(detector.score_samples(test), fitted.score_samples(test))
    assert detector.offset_ == fitted.offset_


def test_fit_sets_only_trailing_underscore_public_attributes(fitted):
    public = {name for name in vars(fitted) if not name.startswith("_")}
    assert public - set(FastFlowDetector().get_params()) == {name for name in public if name.endswith("_")}
    assert {"model_", "offset_", "n_iter_", "device_"} <= public


def test_read_only_memory_mapped_images(data, fitted, tmp_path):
    train, test, *_ = data
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "test.npy", test)
    train_map = np.load(tmp_path / "train.npy", mmap_mode="r")
    test_map = np.load(tmp_path / "test.npy", mmap_mode="r")
    assert not train_map.flags.writeable
    detector = FastFlowDetector(**TINY).fit(train_map)
    np.testing.assert_array_equal(detector.score_samples(test_map), fitted.score_samples(test))
    np.testing.assert_array_equal(detector.predict_maps(test_map), fitted.predict_maps(test))


def test_images_of_any_size_are_accepted_after_fit(fitted, data):
    _, test, *_ = data
    rng = np.random.default_rng(1)
    wide = rng.uniform(0.3, 0.5, (2, 20, 44, 3))
    tiny = rng.uniform(0.3, 0.5, (2, 3, 5, 3))
    # Each image gets a map at its own size, and the map and score it gets when scored alone.
    images = [test[0], wide[0], tiny[0], wide[1], tiny[1]]
    maps, scores = fitted.predict_maps(images, return_scores=True)
    assert [m.shape for m in maps] == [(SIZE, SIZE), (20, 44), (3, 5), (20, 44), (3, 5)]
    for image, anomaly_map, score in zip(images, maps, scores):
        alone_map, alone_score = fitted.predict_maps(image[None], return_scores=True)
        np.testing.assert_allclose(anomaly_map, alone_map[0], rtol=0, atol=1e-6)
        assert score == pytest.approx(alone_score[0], abs=carried_tolerance(fitted, 1e-6))
    np.testing.assert_allclose(fitted.predict_maps(wide), np.stack(maps[1::2]), rtol=0, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    arrays(np.float64, (2, 8, 8), elements=st.floats(-1e6, 1e6, allow_nan=False)).filter(
        lambda a: a.min() < 0 or a.max() > 1
    )
)
def test_float_pixels_outside_unit_range_are_refused_before_training(pixels):
    with pytest.raises(ValueError, match=r"floats must lie in \[0, 1\]"):
        FastFlowDetector(**TINY).fit(pixels)


def test_bad_pixel_values_and_types_are_clear_errors(fitted):
    good = np.full((3, 8, 8), 0.5)
    cases = [
        (good - 1.0, ValueError, r"must lie in \[0, 1\]"),  # negative values (positive_only)
        (np.where(np.eye(8, dtype=bool), np.nan, good), ValueError, "NaN or infinite"),
        (np.where(np.eye(8, dtype=bool), np.inf, good), ValueError, "NaN or infinite"),
        (good.astype(np.complex128), TypeError, "not an image type"),
        (good > 0, TypeError, "boolean pixels"),
        (np.full((3, 8, 8), -5, dtype=np.int64), ValueError, "outside 0..255"),
        ([object(), object()], TypeError, "must be numpy arrays, PIL images or file paths"),
    ]
    for X, error, message in cases:
        with pytest.raises(error, match=message):
            FastFlowDetector(**TINY).fit(X)
        with pytest.raises(error, match=message):
            fitted.score_samples(X)


def test_pixel_dtypes_give_the_same_scores(fitted, data):
    _, test, *_ = data
    as_uint8 = np.rint(test[::4] * 255).astype(np.uint8)
    reference = fitted.score_samples(as_uint8)
    for X in (as_uint8 / np.float32(255), as_uint8 / 255.0, as_uint8.astype(np.int64), as_uint8.astype(np.uint16) * 257):
        np.testing.assert_allclose(fitted.score_samples(X), reference, rtol=1e-5, atol=1e-6)


def test_empty_and_wrongly_shaped_input_are_clear_errors(fitted, data):
    train, *_ = data
    cases = [
        (train[:0], ValueError, "contains no images"),
        ([], ValueError, "contains no images"),
        (train[0], ValueError, r"looks like one \(H, W, C\) image; pass a stack"),
        (train[0, :, :, 0], ValueError, r"must have 3 \(N, H, W\) or 4"),
        (train[:, 0, 0, 0], ValueError, r"must have 3 \(N, H, W\) or 4"),
        (train[None], ValueError, r"must have 3 \(N, H, W\) or 4"),
        (train.transpose(0, 3, 1, 2), ValueError, "channels-first"),
        (np.zeros((2, 8, 8, 2)), ValueError, "channels"),
    ]
    for X, error, message in cases:
        with pytest.raises(error, match=message):
            FastFlowDetector(**TINY).fit(X)
        with pytest.raises(error, match=message):
            fitted.predict(X)
    with pytest.raises(ValueError, match="at least 2 good images"):
        FastFlowDetector(**TINY).fit(train[:1])


def test_sparse_matrices_are_refused(fitted):
    sparse = scipy.sparse.csr_matrix(np.eye(8))
    with pytest.raises(TypeError, match="csr_matrix; pass a numpy array"):
        FastFlowDetector(**TINY).fit(sparse)
    with pytest.raises(TypeError, match="pass a numpy array"):
        fitted.score_samples(scipy.sparse.csr_array(np.eye(8)))


def test_memory_layout_does_not_change_scores(fitted, data):
    _, test, *_ = data
    reference = fitted.score_samples(test)
    np.testing.assert_array_equal(fitted.score_samples(np.asfortranarray(test)), reference)
    padded = np.zeros((16, SIZE + 2, SIZE + 2, 4), np.float32)
    padded[:, 1:-1, 1:-1, :3] = test
    view = padded[:, 1:-1, 1:-1, :3]  # not contiguous
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(fitted.score_samples(view), reference)


def test_array_api_dispatch_does_not_change_results(fitted, data, monkeypatch):
    # scikit-learn's check for estimators without array API support, on images: NumPy input
    # gives the very same results with array API dispatch on. The scikit-learn code on the
    # detector's path (parameter validation, the labels' column_or_1d, the scorers) runs
    # under it. scikit-learn refuses dispatch unless SCIPY_ARRAY_API=1, which it reads when
    # dispatch is switched on (scipy reads it at import, and only sees NumPy arrays here).
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    train, test, y_test, masks = data
    X = np.concatenate([train, test[y_test == -1]])
    y = np.r_[np.ones(len(train), int), -np.ones(int((y_test == -1).sum()), int)]

    def results(detector):
        return [
            detector.score_samples(test), detector.decision_function(test), detector.predict(test),
            detector.predict_maps(test), detector.score(test), pixel_aupro_scorer(detector, test, masks),
        ]  # fmt: skip

    with sklearn.config_context(array_api_dispatch=True):
        dispatched = results(FastFlowDetector(**TINY).fit(X, y))
    # Labelled defects are left out of training but place the threshold: the same call without dispatch.
    for got, expected in zip(dispatched, results(FastFlowDetector(**TINY).fit(X, y))):
        np.testing.assert_array_equal(got, expected)


def test_fit_predict_equals_fit_then_predict(data, fitted):
    train, *_ = data
    labels = FastFlowDetector(**TINY).fit_predict(train)
    np.testing.assert_array_equal(labels, fitted.predict(train))
    assert set(np.unique(labels)) <= {-1, 1}


def test_outlier_methods_agree_in_shape_type_and_sign(fitted, data):
    _, test, y_test, _ = data
    scores = fitted.score_samples(test)
    decision = fitted.decision_function(test)
    labels = fitted.predict(test)
    assert scores.shape == decision.shape == labels.shape == (16,)
    assert scores.dtype == decision.dtype == np.float64 and labels.dtype.kind == "i"
    np.testing.assert_allclose(decision, scores - fitted.offset_)
    np.testing.assert_array_equal(labels, np.where(decision < 0, -1, 1))
    # The right answer is known: every bright spot is flagged, and it scores below every good image.
    assert np.all(labels[y_test == -1] == -1)
    assert roc_auc_score(y_test, scores) == 1.0


def test_lists_and_arrays_give_the_same_scores(fitted, data):
    _, test, *_ = data
    reference = fitted.score_samples(test)
    object_array = np.empty(len(test), dtype=object)
    object_array[:] = list(test)
    for X in (list(test), tuple(test), object_array):
        np.testing.assert_array_equal(fitted.score_samples(X), reference)


def test_n_iter_counts_the_epochs_run(fitted):
    # Early stopping waits n_iter_no_change=5 epochs, more than max_iter: every epoch runs.
    assert fitted.n_iter_ == len(fitted.loss_curve_) == TINY["max_iter"]


@pytest.mark.parametrize("inference_precision", ["float32", "auto", "bfloat16"])
def test_per_image_results_do_not_depend_on_order_or_batching(fitted, data, inference_precision):
    _, test, *_ = data
    fitted = pickle.loads(pickle.dumps(fitted)).set_params(inference_precision=inference_precision)
    scores = fitted.score_samples(test)
    maps = fitted.predict_maps(test)
    order = np.random.default_rng(0).permutation(len(test))
    np.testing.assert_allclose(fitted.score_samples(test[order]), scores[order], rtol=1e-5)
    np.testing.assert_allclose(fitted.predict_maps(test[order]), maps[order], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fitted.score_samples(test[5:9]), scores[5:9], rtol=1e-5)
    small_batches = pickle.loads(pickle.dumps(fitted)).set_params(batch_size=3)  # batch_size only batches inference
    np.testing.assert_allclose(small_batches.score_samples(test), scores, rtol=1e-5)


def test_predicting_does_not_change_the_detector(fitted, data):
    _, test, *_ = data
    before = {k: v for k, v in vars(fitted).items() if k != "model_"}
    weights = {k: v.clone() for k, v in fitted.model_.state_dict().items()}
    for method in (fitted.score_samples, fitted.decision_function, fitted.predict, fitted.predict_maps, fitted.score):
        method(test)
    assert {k: v for k, v in vars(fitted).items() if k != "model_"} == before
    assert all(np.array_equal(weights[k], v) for k, v in fitted.model_.state_dict().items())
    assert not fitted.model_.training


def test_unfitted_detector_raises_not_fitted_error(fitted, data):
    _, test, *_ = data
    detector = FastFlowDetector(**TINY)
    for method in ("score_samples", "decision_function", "predict", "predict_maps", "score"):
        with pytest.raises(NotFittedError):
            getattr(detector, method)(test)
    with pytest.raises(NotFittedError):
        check_is_fitted(detector)
    assert not hasattr(detector, "map_kind_") and fitted.map_kind_ == "raw"  # which map predict_maps returns, once fitted
    check_is_fitted(fitted)


# ---------------------------------------------------------------------- parameters


INVALID_PARAMETERS = {
    "backbone": 18, "pre_trained": "yes", "weights": 3, "input_size": 0, "tile_size": 0, "tile_stride": -1, "tile_flows": "rows", "flow_steps": 0,
    "conv3x3_only": 1.5, "hidden_ratio": 0.0, "max_iter": 0, "batch_size": 2.5, "learning_rate_init": -1.0,
    "weight_decay": -1e-5, "early_stopping": None, "validation_fraction": 1.0, "n_iter_no_change": 0,
    "tol": -1.0, "image_score": 0.0, "standardize_maps": "yes", "contamination": 0.6, "target_recall": 1.5, "calibration_cv": 1, "cache_features": "no", "inference_precision": "float16",
    "training_precision": "float64", "device": None, "n_threads": 0, "random_state": "seed",
    "verbose": -1,
}  # fmt: skip


def test_every_parameter_is_validated_with_scikit_learns_message(data):
    train, *_ = data
    assert set(INVALID_PARAMETERS) == set(FastFlowDetector().get_params())
    for name, value in INVALID_PARAMETERS.items():
        with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of FastFlowDetector must be"):
            FastFlowDetector(**{**TINY, name: value}).fit(train)


def test_get_params_set_params_clone_and_repr_behave_as_for_any_estimator(fitted):
    detector = FastFlowDetector("test_efficientnet", max_iter=4)
    assert repr(detector) == "FastFlowDetector(backbone='test_efficientnet', max_iter=4)"
    assert detector.set_params(max_iter=5, contamination=0.1) is detector and detector.max_iter == 5
    with pytest.raises(ValueError, match="Invalid parameter 'n_epochs'"):
        detector.set_params(n_epochs=3)
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params() and not hasattr(copy, "model_")
    pipeline = make_pipeline(GreyConverter(), detector)
    assert pipeline.get_params()["fastflowdetector__max_iter"] == 5


# ---------------------------------------------------------------------- model selection


def test_grid_search_with_labels_picks_the_configuration_that_sees_the_defects(data):
    # Defects only ever appear in the left half: a crop to the right half cannot see them.
    train, test, y_test, _ = data
    X = np.concatenate([train, test])
    y = np.r_[np.ones(len(train), int), y_test]
    pipeline = Pipeline([("crop", CropResize(size=SIZE)), ("detector", FastFlowDetector(**TINY))])
    search = GridSearchCV(
        pipeline, {"crop__box": [RIGHT_HALF, LEFT_HALF]}, scoring="roc_auc",
        cv=StratifiedKFold(2, shuffle=True, random_state=0), refit=False,
    ).fit(X, y)  # fmt: skip
    assert search.best_params_ == {"crop__box": LEFT_HALF}
    left, right = search.cv_results_["mean_test_score"][[1, 0]]
    assert left > 0.95 and right < 0.8


def test_grid_search_with_predefined_split_follows_the_mvtec_protocol(data, fitted):
    # MVTec AD: train on the good training images, evaluate on the labelled test split.
    train, test, y_test, _ = data
    X = np.concatenate([train, test])
    y = np.r_[np.ones(len(train), int), y_test]
    split = PredefinedSplit(np.r_[-np.ones(len(train), int), np.zeros(len(test), int)])
    search = GridSearchCV(
        FastFlowDetector(**TINY), {"hidden_ratio": [0.5, 1.0]}, scoring="roc_auc", cv=split, refit=False
    ).fit(X, y)
    # hidden_ratio=1.0 is `fitted`'s configuration, fitted on the training images only.
    assert search.cv_results_["split0_test_score"][1] == roc_auc_score(y_test, fitted.decision_function(test))
    assert search.best_score_ == 1.0


# Two processes: joblib pickles the detector to its workers, each of which imports torch
# (about 20 s on two busy cores, hence slow).
@pytest.mark.parametrize("n_jobs", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_grid_search_without_labels_uses_held_out_likelihood(data, n_jobs):
    train, *_ = data
    folds = KFold(2, shuffle=True, random_state=0)
    search = GridSearchCV(FastFlowDetector(**TINY), {"flow_steps": [1]}, cv=folds, n_jobs=n_jobs, refit=False).fit(train)
    train_index, test_index = next(folds.split(train))
    by_hand = FastFlowDetector(**TINY).fit(train[train_index])
    held_out = by_hand.score(train[test_index])
    np.testing.assert_allclose(search.cv_results_["split0_test_score"][0], held_out, rtol=1e-6)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_cross_val_score_with_stratified_folds_trains_on_inliers_only(data):
    train, test, y_test, _ = data
    X = np.concatenate([train, test])
    y = np.r_[np.ones(len(train), int), y_test]
    folds = StratifiedKFold(2, shuffle=True, random_state=0)
    scores = cross_val_score(FastFlowDetector(**TINY), X, y, cv=folds, scoring="roc_auc")
    # The same folds fitted by hand on their good images only give the very same scores:
    # the defective training images were not used.
    train_index, test_index = next(folds.split(X, y))
    assert (y[train_index] == -1).any()
    by_hand = FastFlowDetector(**TINY).fit(X[train_index[y[train_index] == 1]])
    assert scores[0] == roc_auc_score(y[test_index], by_hand.decision_function(X[test_index]))


def test_pixel_scorers_score_predict_maps_against_masks(fitted, data):
    _, test, _, masks = data
    maps = fitted.predict_maps(test)
    assert pixel_roc_auc_scorer(fitted, test, masks) == pixel_roc_auc_score(masks, maps)
    assert pixel_roc_auc_scorer(fitted, test, masks) > 0.9
    aupro = aupro_score(masks, maps)  # up to the MVTec AD false positive rate of 0.3
    assert pixel_aupro_scorer(fitted, test, masks) == aupro
    # The two metrics and the area up to FPR 1 differ on defects of several sizes, so the scorers cannot swap unnoticed.
    assert len({aupro, pixel_roc_auc_score(masks, maps), aupro_score(masks, maps, max_fpr=1.0)}) == 3


def test_grid_search_with_pixel_masks_as_y(data, fitted):
    train, test, _, masks = data
    X = np.concatenate([train, test])
    y_masks = np.concatenate([np.zeros((len(train), SIZE, SIZE), bool), masks])
    split = PredefinedSplit(np.r_[-np.ones(len(train), int), np.zeros(len(test), int)])
    search = GridSearchCV(
        FastFlowDetector(**TINY), {"flow_steps": [1]}, scoring=pixel_roc_auc_scorer, cv=split, refit=False
    ).fit(X, y_masks)
    # fit with masks as y trains on the images whose mask is empty, here the training
    # images, as `fitted` was.
    assert search.best_score_ == pixel_roc_auc_score(masks, fitted.predict_maps(test))


def test_pixel_masks_as_y_must_be_binary_and_one_per_image(data):
    train, *_ = data
    masks = np.zeros((len(train), SIZE, SIZE), np.uint8)
    masks[0, :2, :2] = 255
    with pytest.raises(ValueError, match="not binary.*pass mask > 0"):
        FastFlowDetector(**TINY).fit(train, masks)
    with pytest.raises(ValueError, match="one label per image"):
        FastFlowDetector(**TINY).fit(train, masks[:3] > 0)


# ---------------------------------------------------------------------- pipelines and transformers


def test_pipeline_of_transformers_and_detector(data, fitted):
    train, test, y_test, _ = data
    steps = [CropResize(box=(0.0, 0.0, 1.0, 0.75), size=24), GreyConverter()]
    pipeline = make_pipeline(*[clone(step) for step in steps], FastFlowDetector(**{**TINY, "input_size": 24}))
    pipeline.fit(train)
    prepared = make_pipeline(*steps).fit_transform(test)
    detector = pipeline[-1]
    np.testing.assert_array_equal(pipeline.score_samples(test), detector.score_samples(prepared))
    np.testing.assert_array_equal(pipeline.decision_function(test), detector.decision_function(prepared))
    np.testing.assert_array_equal(pipeline.predict(test), detector.predict(prepared))
    assert roc_auc_score(y_test, pipeline.decision_function(test)) > 0.95
    # predict_maps is reached through the last step, on the transformed images.
    maps = pipeline[-1].predict_maps(pipeline[:-1].transform(test))
    np.testing.assert_array_equal(maps, detector.predict_maps(prepared))
    # A pipeline holding only the detector is the detector.
    alone = make_pipeline(FastFlowDetector(**TINY)).fit(train)
    np.testing.assert_array_equal(alone.score_samples(test), fitted.score_samples(test))


def test_crop_resize_keeps_the_box_and_the_pixel_type():
    images = np.zeros((2, 10, 20, 3), dtype=np.uint8)
    images[:, 2:4, 5:10] = 200  # a block inside the box (rows 2..8, columns 5..15)
    cropped = CropResize(box=(0.2, 0.25, 0.8, 0.75)).fit_transform(images)
    assert cropped.shape == (2, 6, 10, 3) and cropped.dtype == np.uint8
    np.testing.assert_array_equal(cropped, images[:, 2:8, 5:15])
    resized = CropResize(size=(5, 10)).fit_transform(images)
    assert resized.shape == (2, 5, 10, 3) and resized.dtype == np.uint8
    floats = CropResize(size=7).fit_transform(np.full((1, 9, 9), 0.25))
    assert floats.shape == (1, 7, 7) and floats.dtype == np.float64
    np.testing.assert_allclose(floats, 0.25, rtol=1e-6)
    np.testing.assert_array_equal(CropResize().fit_transform(images), images)


def test_transformers_accept_lists_of_any_sizes_paths_and_pil_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    first = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    second = rng.integers(0, 255, (20, 8, 3), dtype=np.uint8)
    Image.fromarray(second).save(tmp_path / "second.png")
    X = [first, str(tmp_path / "second.png"), Image.fromarray(second)]
    cropped = CropResize(box=(0.0, 0.0, 0.5, 0.5)).fit_transform(X)
    assert isinstance(cropped, list) and [c.shape for c in cropped] == [(6, 8, 3), (10, 4, 3), (10, 4, 3)]
    np.testing.assert_array_equal(cropped[1], second[:10, :4])
    resized = CropResize(size=8).fit_transform(X)
    assert all(r.shape == (8, 8, 3) for r in resized)
    grey = GreyConverter().fit_transform(X)
    assert [g.shape for g in grey] == [(12, 16), (20, 8), (20, 8)]


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.just(3))))
def test_grey_conversion_is_bt601_luminance_within_the_channel_range(images):
    grey = GreyConverter().fit_transform(images)
    assert grey.shape == images.shape[:3] and grey.dtype == np.uint8
    expected = np.rint(images.astype(np.float64) @ [0.299, 0.587, 0.114])
    np.testing.assert_allclose(grey, expected, atol=1)
    assert np.all(grey >= images.min(axis=-1)) and np.all(grey <= images.max(axis=-1))
    np.testing.assert_array_equal(GreyConverter().fit_transform(grey), grey)  # grey passes unchanged


def test_transformer_parameters_are_validated():
    images = np.zeros((1, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="0 <= top < bottom <= 1"):
        CropResize(box=(0.5, 0.0, 0.4, 1.0)).fit(images)
    with pytest.raises(ValueError, match="must be 4 numbers"):
        CropResize(box=(0.0, 1.0)).fit(images)
    with pytest.raises(InvalidParameterError, match="The 'size' parameter of CropResize"):
        CropResize(size=-3).fit(images)
    with pytest.raises(ValueError, match="pair of positive ints"):
        CropResize(size=(0, 4)).fit_transform(images)
    with pytest.raises(ValueError, match="contains no images"):
        GreyConverter().fit_transform(images[:0])


# ---------------------------------------------------------------------- the conventions page

CONVENTIONS = Path(__file__).parents[1] / "docs" / "conventions.md"


def test_conventions_page_lists_every_replaced_check_with_its_replacement():
    text = CONVENTIONS.read_text()
    for name, replaced in CHECKS_REPLACED_FOR_IMAGES.items():
        assert f"| `{name}` | {replaced.reason} |" in text, f"{name} is missing from docs/conventions.md"
        assert replaced.replacement.split("::")[1] in text


@pytest.mark.slow
def test_conventions_page_snippets_run():
    snippets = re.findall(r"```python\n(.*?)```", CONVENTIONS.read_text(), flags=re.DOTALL)
    assert len(snippets) >= 8
    namespace = {}
    for snippet in snippets:
        exec(compile(snippet, str(CONVENTIONS), "exec"), namespace)
