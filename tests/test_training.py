"""Training loop: early stopping on held-out good images, best weights, loss reporting.

Tiny random-weight timm backbone on small synthetic images: each fit takes a few seconds.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skfastflow import FastFlowDetector
from skfastflow.thresholds import labelled_offset, robust_offset

TINY = dict(backbone="test_resnet", pre_trained=False, input_size=32, batch_size=8, n_threads=1, calibration_cv=None, random_state=0)


def textured_images(n_images: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(90, 160, size=(n_images, 32, 32, 3), dtype=np.uint8)


def test_early_stopping_stops_after_n_iter_no_change_epochs_without_improvement():
    # With a tolerance no epoch can beat, only the first epoch counts as an improvement.
    detector = FastFlowDetector(**TINY, max_iter=50, n_iter_no_change=2, tol=1e9).fit(textured_images(10))
    assert detector.n_iter_ == 1 + 2
    assert len(detector.loss_curve_) == len(detector.loss_per_dimension_curve_) == len(detector.validation_scores_) == 3


def test_without_early_stopping_all_epochs_run_and_the_last_weights_are_kept():
    X = np.repeat(textured_images(1), 6, axis=0)
    detector = FastFlowDetector(**TINY, max_iter=4, early_stopping=False, tol=1e9, n_iter_no_change=1).fit(X)
    assert detector.n_iter_ == detector.best_epoch_ == len(detector.loss_curve_) == 4
    # As in scikit-learn's MLP: nothing is held out, so there is no validation curve.
    assert detector.validation_scores_ is None and detector.best_validation_score_ is None


def test_without_early_stopping_every_good_image_is_trained_on_and_sets_the_threshold():
    good = textured_images(10, seed=3)
    detector = FastFlowDetector(**TINY, max_iter=2, early_stopping=False, validation_fraction=0.5).fit(good)
    assert (detector.n_train_samples_, detector.n_validation_samples_) == (10, 0)
    # offset_ comes from the training images' own scores (as IsolationForest's does).
    training_scores = detector.score_samples(good)
    np.testing.assert_allclose(detector.calibration_scores_, training_scores, rtol=1e-5)
    assert detector.offset_ == pytest.approx(robust_offset(training_scores), rel=1e-5)
    tenth = FastFlowDetector(**TINY, max_iter=2, early_stopping=False, contamination=0.1).fit(good)
    assert tenth.offset_ == pytest.approx(np.percentile(tenth.score_samples(good), 10), rel=1e-5)


def test_without_early_stopping_one_good_image_is_enough():
    # No split is needed, so the 2-image minimum of early stopping does not apply.
    image = textured_images(1)
    # One image's maps have no spread to standardise by: they stay raw, and fit says so.
    with pytest.warns(UserWarning, match="standardize_maps.*1 good image.*map_standardizer_ is None"):
        detector = FastFlowDetector(**TINY, max_iter=1, early_stopping=False).fit(image)
    assert detector.n_train_samples_ == 1 and detector.map_standardizer_ is None
    assert detector.offset_ == pytest.approx(detector.score_samples(image)[0], rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 good images.*early_stopping=False"):
        FastFlowDetector(**TINY, max_iter=1).fit(image)


def test_early_stopping_restores_the_weights_of_the_best_held_out_epoch():
    # Identical images: the held-out log-likelihood is that of X[0]. A large learning rate
    # makes it jump up and down, so that the best epoch is not the last one.
    X = np.repeat(textured_images(1), 6, axis=0)
    detector = FastFlowDetector(**TINY, max_iter=30, learning_rate_init=0.03, n_iter_no_change=3).fit(X)
    best = int(np.argmax(detector.validation_scores_))
    assert detector.best_epoch_ == best + 1
    assert detector.n_iter_ == detector.best_epoch_ + 3 < 30
    assert detector.best_validation_score_ == detector.validation_scores_[best]
    assert detector.score(X[:1]) == pytest.approx(detector.best_validation_score_, rel=1e-5)


def test_defective_images_never_influence_the_fit():
    # Early stopping and offset_ use held-out *good* images only: adding labelled
    # defective images (or test images) to the call changes nothing.
    good = textured_images(8, seed=1)
    defective = textured_images(3, seed=2)
    defective[:, 8:20, 8:20] = 255
    alone = FastFlowDetector(**TINY, max_iter=3).fit(good)
    mixed = FastFlowDetector(**TINY, max_iter=3).fit(
        np.concatenate([good, defective]), y=np.r_[np.ones(8, int), -np.ones(3, int)]
    )
    assert mixed.n_train_samples_ + mixed.n_validation_samples_ == 8
    assert mixed.loss_curve_ == alone.loss_curve_
    assert mixed.validation_scores_ == alone.validation_scores_
    # The defects may choose another image-score rule; under the same one, the same scores.
    mixed.set_threshold(image_score=alone.image_score_)
    np.testing.assert_array_equal(mixed.calibration_scores_, alone.calibration_scores_)
    # The defects only place the threshold: between them and the held-out good images.
    assert mixed.offset_ == labelled_offset(alone.calibration_scores_, alone.score_samples(defective))


def test_validation_fraction_sets_how_many_good_images_are_held_out():
    detector = FastFlowDetector(**TINY, max_iter=1, validation_fraction=0.25).fit(textured_images(12))
    assert (detector.n_train_samples_, detector.n_validation_samples_) == (9, 3)


def test_loss_per_dimension_is_the_raw_loss_normalised_and_matches_held_out_likelihood():
    X = np.repeat(textured_images(1), 6, axis=0)
    detector = FastFlowDetector(**TINY, max_iter=3).fit(X)  # 3 epochs < n_iter_no_change: no stop
    dimensions = sum(math.prod(shape) for shape in detector.model_.feature_shapes)
    expected = [loss / dimensions + 0.5 * math.log(2 * math.pi) for loss in detector.loss_curve_]
    np.testing.assert_allclose(detector.loss_per_dimension_curve_, expected, rtol=1e-12)
    # One batch per epoch on identical images: epoch k's training loss is measured on the
    # weights that epoch k - 1's held-out score saw.
    np.testing.assert_allclose(detector.loss_per_dimension_curve_[1:], -np.array(detector.validation_scores_[:-1]), rtol=1e-4)


@settings(max_examples=25, deadline=None)
@given(
    parameter=st.sampled_from(["validation_fraction", "n_iter_no_change", "tol", "max_iter"]),
    value=st.one_of(st.floats(allow_nan=True), st.integers(-5, 0)),
)
def test_bad_training_parameters_are_refused_before_any_work(parameter, value):
    valid = {
        "validation_fraction": lambda v: isinstance(v, float) and 0 < v < 1,
        "tol": lambda v: not (isinstance(v, float) and math.isnan(v)) and v >= 0,
        "n_iter_no_change": lambda v: False,  # integers >= 1 only; the strategies give none
        "max_iter": lambda v: False,
    }[parameter]
    if valid(value):
        return
    with pytest.raises(ValueError, match=parameter):
        FastFlowDetector(**TINY, **{parameter: value}).fit(["not read: parameters are checked first"])
