"""Verdicts: the label-free threshold, conformal p-values, labelled defects, set_threshold, score(X, y)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from skfastflow import FastFlowDetector
from skfastflow.metrics import recall_at_false_alarm_rates
from skfastflow.thresholds import (
    AUTO_CROSS_FIT_BELOW,
    AUTO_FALSE_ALARM_RATE,
    IMAGE_SCORE_RULES,
    choose_image_score,
    conformal_offset,
    conformal_p_values,
    labelled_offset,
    quantile_offset,
    robust_offset,
)

TINY = dict(backbone="test_resnet", pre_trained=False, input_size=64, flow_steps=2, max_iter=2, batch_size=8, calibration_cv=None, random_state=0)
scores_strategy = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=40)


def textured_images(n, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(90, 160, size=(1, 64, 64, 3))
    return np.clip(base + rng.integers(-12, 12, size=(n, 64, 64, 3)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- label-free threshold


def test_one_atypical_good_image_does_not_drag_the_threshold_down():
    # 19 held-out scores of 0.5 and one of 0.3: the former rule (capped at the minimum) gave 0.3,
    # passing every defect scoring above it; the median and MAD ignore the odd one.
    assert robust_offset([0.5] * 19 + [0.3]) == 0.5
    typical = 0.5 + 0.01 * norm.ppf((np.arange(19) + 0.5) / 19)
    with_odd = np.append(typical, 0.1)
    # Moved by the odd image by less than a tenth of the typical images' spread...
    assert abs(robust_offset(with_odd) - robust_offset(typical)) < 0.1 * 0.01
    # ...and at the normal tail of the aimed false-alarm rate (2.05 robust deviations for 2 %) below their median.
    assert robust_offset(typical) == pytest.approx(np.median(typical) - norm.ppf(1 - AUTO_FALSE_ALARM_RATE) * 1.4826 * np.median(np.abs(typical - 0.5)), rel=1e-6)


def test_a_second_mode_of_good_scores_is_not_flagged_whole():
    # Out-of-fold scores of glass's 18 good images (seed 0): a sixth of them form a lower mode,
    # and so do a sixth of its good test images (0.384, 0.386, 0.393). The normal tail fitted to
    # the bulk (0.400) flagged that mode; the cap at the 5 % order statistic keeps all but the lowest.
    glass = [0.3763, 0.3822, 0.3861, 0.4111, 0.4172, 0.420, 0.421, 0.423, 0.426, 0.427, 0.429, 0.430, 0.432, 0.433, 0.435, 0.436, 0.440, 0.441]
    median = np.median(glass)
    normal_tail = median - norm.ppf(1 - AUTO_FALSE_ALARM_RATE) * 1.482602218505602 * np.median(np.abs(np.subtract(glass, median)))
    assert normal_tail > 0.39
    assert robust_offset(glass) == 0.3822


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=200))
def test_the_threshold_flags_at_most_five_percent_of_the_calibration_images_or_one(scores):
    flagged = np.sum(np.asarray(scores) < robust_offset(scores))
    assert flagged <= max(1, int(np.floor(0.05 * len(scores))))


def test_threshold_with_fewer_than_three_scores_is_their_minimum():
    assert robust_offset([0.2397, 0.1532]) == 0.1532
    assert robust_offset([0.4]) == 0.4
    # From exactly 3 scores on, the spread rule applies: MAD 0.1 around the median 0.5.
    assert robust_offset([0.4, 0.5, 0.6]) == pytest.approx(0.5 - norm.ppf(1 - AUTO_FALSE_ALARM_RATE) * 1.482602218505602 * 0.1, rel=1e-12)


@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30), st.floats(0.001, 0.5))
def test_contamination_is_the_quantile_of_the_calibration_scores(scores, contamination):
    assert quantile_offset(scores, contamination) == pytest.approx(np.percentile(scores, 100 * contamination))


# ---------------------------------------------------------------------------- conformal p-values


def test_p_values_count_calibration_scores_at_or_below():
    np.testing.assert_array_equal(conformal_p_values([0.1, 0.45, 0.5, 0.9], [0.4, 0.5, 0.6, 0.7]), [0.2, 0.4, 0.6, 1.0])


@pytest.mark.parametrize("n_calibration, alpha", [(19, 0.1), (39, 0.05), (9, 0.2), (30, 0.1)])
def test_p_values_are_valid_on_exchangeable_scores(n_calibration, alpha):
    # P(p <= alpha) = floor(alpha (n + 1)) / (n + 1) <= alpha for a good image exchangeable with
    # the calibration images (Bates et al. 2023, Lemma 2): exact, not just a bound.
    rng = np.random.default_rng(0)
    repetitions = 4000
    draws = rng.normal(size=(repetitions, n_calibration + 1))
    p = np.array([conformal_p_values(row[-1:], row[:-1])[0] for row in draws])
    expected = np.floor(alpha * (n_calibration + 1) + 1e-9) / (n_calibration + 1)
    noise = 4 * np.sqrt(expected * (1 - expected) / repetitions)
    assert expected <= alpha
    assert abs(np.mean(p <= alpha) - expected) < noise


@settings(max_examples=60, deadline=None)
@given(calibration=scores_strategy, scores=scores_strategy, alpha=st.floats(0.01, 0.99))
def test_conformal_offset_flags_exactly_the_images_with_p_at_most_alpha(calibration, scores, alpha):
    offset = conformal_offset(calibration, alpha)
    flagged = np.asarray(scores) < offset
    np.testing.assert_array_equal(flagged, conformal_p_values(scores, calibration) <= alpha + 1e-12)


def test_detector_p_values_compare_scores_with_the_held_out_good_images():
    good = textured_images(12, seed=2)
    detector = FastFlowDetector(**TINY, validation_fraction=0.5).fit(good)
    assert len(detector.calibration_scores_) == 6
    test = textured_images(4, seed=3)
    test[:2, 10:40, 10:40] = 0
    expected = conformal_p_values(detector.score_samples(test), detector.calibration_scores_)
    np.testing.assert_array_equal(detector.p_values(test), expected)
    assert set(np.round(detector.p_values(test) * 7, 9)) <= set(range(1, 8))


# ---------------------------------------------------------------------------- cross-fitting


class RecordingDetector(FastFlowDetector):
    """Records, for cross-fitting's fold trainings, which images each trained on, whose maps
    standardised its scores, and which images it scored."""

    def _cross_fit(self, n_folds, n_epochs, input_size, tile_grid_size, images, train_indices, train_items, train_features, device, tiling, rng, standardizer):
        self.folds_seen, trained, standardized_by = [], [], []
        owners = train_items.owners if tiling is not None else np.asarray(train_indices)
        train, score, statistics_of = self._train, self._threshold_scores, self._good_map_statistics

        def recording_train(model, features, validation, rng, n_epochs=None, monitored=True):
            trained.append((set(owners[features.positions].tolist()), n_epochs, monitored))
            return train(model, features, validation, rng, n_epochs=n_epochs, monitored=monitored)

        def recording_statistics(model, features, device, tiles):
            standardized_by.append(set(owners[features.positions].tolist()))
            return statistics_of(model, features, device, tiles)

        def recording_scores(model, images, indices, features, device, tiling, standardizer):
            assert standardizer is not None
            self.folds_seen.append((*trained[-1], standardized_by[-1], set(np.asarray(indices).tolist())))
            return score(model, images, indices, features, device, tiling, standardizer)

        self._train, self._threshold_scores, self._good_map_statistics = recording_train, recording_scores, recording_statistics
        try:
            return super()._cross_fit(
                n_folds, n_epochs, input_size, tile_grid_size, images, train_indices, train_items, train_features, device, tiling, rng, standardizer
            )
        finally:
            del self._train, self._threshold_scores, self._good_map_statistics


@pytest.mark.parametrize("tiling", [{}, {"tile_size": 32, "tile_flows": "shared"}, {"tile_size": 32, "tile_flows": "per_position"}])
def test_cross_fitting_scores_every_good_image_by_flows_that_never_trained_on_it(tiling):
    good = textured_images(15, seed=7)
    detector = RecordingDetector(**{**TINY, **tiling, "calibration_cv": 4, "n_threads": 1}).fit(good)
    plain = FastFlowDetector(**TINY, **tiling, n_threads=1).fit(good)
    assert detector.calibration_folds_ == 4 and len(detector.folds_seen) == 4
    scored = set()
    for trained_on, n_epochs, monitored, standardized_by, fold in detector.folds_seen:
        assert not trained_on & fold  # no image (nor any tile of it) scored by flows that saw it
        assert standardized_by == trained_on  # nor standardised by statistics that include it
        assert n_epochs == plain.best_epoch_ and not monitored
        assert not fold & scored
        scored |= fold
    assert len(scored) == detector.n_train_samples_ == 13
    assert len(detector.calibration_scores_) == 15
    # The fitted flows are those of the fit without cross-fitting; the held-out images' scores are kept.
    for name, weights in plain.model_.state_dict().items():
        assert torch_equal(weights, detector.model_.state_dict()[name]), name
    assert set(plain.calibration_scores_.tolist()) <= set(detector.calibration_scores_.tolist())
    assert detector.offset_ == robust_offset(detector.calibration_scores_)


def test_calibration_cv_auto_cross_fits_only_when_few_images_are_held_out():
    few = FastFlowDetector(**{**TINY, "calibration_cv": "auto", "n_threads": 1}).fit(textured_images(12, seed=8))
    assert few.calibration_folds_ == 5 and len(few.calibration_scores_) == 12
    # 100 held out (of 125, at validation_fraction 0.8): their own tail is used, no cross-fitting.
    many = FastFlowDetector(**{**TINY, "calibration_cv": "auto", "n_threads": 1}, validation_fraction=0.8).fit(textured_images(125, seed=8))
    assert many.n_validation_samples_ == AUTO_CROSS_FIT_BELOW == 100
    assert many.calibration_folds_ is None and len(many.calibration_scores_) == 100
    # One fewer held out (99 of 124): cross-fitted, every good image gets a calibration score.
    fewer = FastFlowDetector(**{**TINY, "calibration_cv": "auto", "n_threads": 1}, validation_fraction=0.795).fit(textured_images(124, seed=8))
    assert fewer.n_validation_samples_ == 99 and fewer.calibration_folds_ == 5 and len(fewer.calibration_scores_) == 124


def test_cross_fitting_replaces_in_sample_scores_without_early_stopping():
    good = textured_images(10, seed=9)
    detector = RecordingDetector(**{**TINY, "calibration_cv": 2, "n_threads": 1}, early_stopping=False).fit(good)
    assert detector.n_validation_samples_ == 0 and len(detector.calibration_scores_) == 10
    assert sorted(len(fold) for *_, fold in detector.folds_seen) == [5, 5]
    assert all(n_epochs == detector.max_iter for _, n_epochs, _, _, _ in detector.folds_seen)


def test_model_files_from_before_cross_fitting_load_as_calibrated_on_held_out_images():
    detector = FastFlowDetector(**TINY).fit(textured_images(6, seed=11))
    state = detector.__getstate__()
    del state["calibration_cv"], state["calibration_folds_"]  # as pickled before cross-fitting existed
    old = FastFlowDetector.__new__(FastFlowDetector)
    old.__setstate__(state)
    assert old.calibration_cv is None and old.calibration_folds_ is None
    np.testing.assert_array_equal(old.calibration_scores_, detector.calibration_scores_)


def test_more_folds_than_training_images_is_refused_with_a_remedy():
    with pytest.raises(ValueError, match="calibration_cv=20 needs at least as many training images, got 5"):
        FastFlowDetector(**{**TINY, "calibration_cv": 20}).fit(textured_images(6, seed=10))


# ---------------------------------------------------------------------------- labelled defects


def test_labelled_offset_maximises_f1_or_reaches_the_recall_asked_for():
    good, defects = [0.5, 0.6, 0.7], [0.1, 0.2, 0.55]
    # Below 0.35: 2 of 3 defects, no false alarm (F1 0.8); below 0.575: 3 defects and one
    # good image (F1 6/7 = 0.857): the latter is best.
    assert labelled_offset(good, defects) == pytest.approx(0.575)
    assert labelled_offset(good, defects, target_recall=0.3) == pytest.approx(0.15)
    assert labelled_offset(good, defects, target_recall=0.5) == pytest.approx(0.35)  # 2 of 3 needed
    assert labelled_offset(good, defects, target_recall=2 / 3) == pytest.approx(0.35)
    assert labelled_offset(good, defects, target_recall=1.0) == pytest.approx(0.575)


def test_labelled_defects_never_lower_the_label_free_threshold():
    good, defects = np.linspace(0.4, 0.6, 21), [0.1, 0.2, 0.45, 0.5, 0.55]
    # Best F1 flags the two clear defects only (below 0.3); the label-free threshold flags more.
    assert robust_offset(good) == pytest.approx(0.5 - norm.ppf(1 - AUTO_FALSE_ALARM_RATE) * 1.482602218505602 * 0.05)
    assert labelled_offset(good, defects) == robust_offset(good)
    assert labelled_offset(good, defects, target_recall=0.4) == pytest.approx(0.3)  # asked for: no floor


def test_image_score_rule_is_chosen_by_separation_of_labelled_defects_ties_to_the_first():
    good = {"max": [0.5, 0.6], 0.01: [0.5, 0.6]}
    assert choose_image_score(good, {"max": [0.55, 0.1], 0.01: [0.2, 0.1]}) == 0.01
    assert choose_image_score(good, {"max": [0.2, 0.1], 0.01: [0.2, 0.1]}) == "max"


@pytest.fixture(scope="module")
def labelled_fit():
    good = textured_images(12, seed=4)
    defects = textured_images(4, seed=5)
    defects[:, 20:30, 20:30] = 255
    X = np.concatenate([good, defects])
    y = np.r_[np.ones(12, int), -np.ones(4, int)]
    detector = FastFlowDetector(**TINY, validation_fraction=0.5, image_score="auto").fit(X, y)
    return detector, good, defects, X, y


def test_labelled_defects_are_scored_not_trained_on(labelled_fit):
    detector, good, defects, X, y = labelled_fit
    alone = FastFlowDetector(**TINY, validation_fraction=0.5, image_score="auto").fit(good)
    assert detector.n_train_samples_ + detector.n_validation_samples_ == 12
    assert detector.loss_curve_ == alone.loss_curve_
    for name, weights in detector.model_.state_dict().items():
        assert torch_equal(weights, alone.model_.state_dict()[name]), name
    np.testing.assert_allclose(detector.defect_scores_, detector.score_samples(defects), rtol=1e-6)
    rule = detector.image_score_
    assert rule in IMAGE_SCORE_RULES
    assert detector.offset_ == labelled_offset(detector.calibration_scores_, detector.defect_scores_)


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_set_threshold_changes_rule_and_operating_point_without_retraining(labelled_fit):
    detector, good, defects, X, y = labelled_fit
    import copy

    detector = copy.deepcopy(detector)
    weights = {name: value.clone() for name, value in detector.model_.state_dict().items()}
    # With input_size equal to the image size, predict_maps standardised is the map the rule reads.
    maps = np.stack([detector.map_standardizer_(m) for m in detector.predict_maps(defects)])
    detector.set_threshold(image_score="max")
    assert detector.image_score == "max" and detector.image_score_ == "max"
    np.testing.assert_allclose(detector.score_samples(defects), -maps.reshape(4, -1).max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(detector.defect_scores_, -maps.reshape(4, -1).max(axis=1), rtol=1e-6)
    assert detector.offset_ == labelled_offset(detector.calibration_scores_, detector.defect_scores_)
    detector.set_threshold(target_recall=1.0)
    assert detector.offset_ > detector.defect_scores_.max()
    detector.set_threshold(contamination=0.25)
    assert detector.offset_ == pytest.approx(np.percentile(detector.calibration_scores_, 25))
    for name, value in detector.model_.state_dict().items():
        assert torch_equal(value, weights[name])
    with pytest.raises(ValueError, match="was not scored at fit time"):
        detector.set_threshold(image_score=0.2)
    assert detector.image_score == "max"  # a refused change leaves the detector as it was
    with pytest.raises(ValueError, match="contamination"):
        detector.set_threshold(contamination=0.9)
    assert detector.contamination == 0.25


def test_defects_given_after_fit_give_the_detector_fit_with_them(labelled_fit):
    detector, good, defects, X, y = labelled_fit
    later = FastFlowDetector(**TINY, validation_fraction=0.5, image_score="auto").fit(good)
    assert later.defect_scores_ is None
    later.set_threshold(defects=defects)
    assert later.image_score_ == detector.image_score_
    np.testing.assert_array_equal(later.defect_scores_, detector.defect_scores_)
    assert later.offset_ == detector.offset_


def test_recalibrating_on_new_good_images_replaces_the_calibration_scores(labelled_fit):
    import copy

    detector, good, defects, X, y = labelled_fit
    detector = copy.deepcopy(detector)
    fresh = textured_images(9, seed=7)
    detector.set_threshold(good=fresh)
    np.testing.assert_allclose(detector.calibration_scores_, detector.score_samples(fresh), rtol=1e-6)
    assert detector.offset_ == labelled_offset(detector.calibration_scores_, detector.defect_scores_)
    np.testing.assert_array_equal(detector.p_values(fresh[:3]), conformal_p_values(detector.score_samples(fresh[:3]), detector.calibration_scores_))


def test_score_reads_y_as_fit_does(labelled_fit):
    detector, good, defects, X, y = labelled_fit
    assert detector.score(X, y) == pytest.approx(detector.score(good), rel=1e-6)
    assert detector.score(X, y) != pytest.approx(detector.score(X), rel=1e-6)
    with pytest.raises(ValueError, match="no image as good"):
        detector.score(defects, -np.ones(4, int))


# ---------------------------------------------------------------------------- operating points


@settings(max_examples=60, deadline=None)
@given(
    good=st.lists(st.floats(0, 1), min_size=1, max_size=25),
    defects=st.lists(st.floats(0, 1), min_size=1, max_size=25),
    rate=st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.5, 1.0]),
)
def test_recall_at_false_alarm_rate_is_the_best_threshold_within_the_rate(good, defects, rate):
    y = np.r_[np.ones(len(good)), -np.ones(len(defects))]
    scores = np.r_[good, defects]
    best = 0.0
    for threshold in np.r_[scores, np.inf]:  # flag scores strictly below
        if np.mean(np.asarray(good) < threshold) <= rate + 1e-12:
            best = max(best, np.mean(np.asarray(defects) < threshold))
    assert recall_at_false_alarm_rates(y, scores, [rate])[0] == pytest.approx(best)
