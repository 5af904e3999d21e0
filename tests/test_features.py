"""The speed paths give the answers of the straightforward ones.

- the feature cache is exact: same loss curve as recomputing the backbone every epoch;
- float16 storage changes features by at most float16 rounding, a spill file not at all;
- bfloat16 inference changes anomaly maps by at most ``BFLOAT16_MAP_TOLERANCE`` and
  leaves the ranking of defective against good images as it was; ``"auto"`` inference
  keeps the backbone's features float32 to the bit and changes maps by at most
  ``AUTO_MAP_TOLERANCE``;
- bfloat16 (mixed precision) training keeps the cache exact and follows the float32 loss
  curve within ``BFLOAT16_LOSS_TOLERANCE``.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from conftest import carried_tolerance
from skfastflow import FastFlowDetector, features
from skfastflow.datasets import make_defect_images
from skfastflow.detector import _bfloat16_is_native
from skfastflow.features import CachedFeatures, StreamedFeatures
from skfastflow.images import ImageCollection
from skfastflow.nn import FastflowModel

FAST = dict(backbone="test_resnet", pre_trained=False, input_size=64, max_iter=3, batch_size=8, n_threads=1, calibration_cv=None, random_state=0)

# Largest change of an anomaly map value (maps lie in [-1, 0]) from bfloat16 inference, for
# this file's small model. Measured with pretrained tf_efficientnet_lite0 at 256x256: 0.026
# (mean 0.003) on synthetic textures; on glass's 98 test images 0.074 at single pixels (mean
# 0.006), image scores by at most 0.005 (mean 0.0016), image AUROC unchanged.
BFLOAT16_MAP_TOLERANCE = 0.05
# Largest change of an anomaly map value from inference_precision="auto" (bfloat16 flows,
# float32 backbone), for this file's small model (measured: 5e-4). Measured with pretrained
# tf_efficientnet_lite0 at 256x256: 2.8e-3 on magnetic_tile's 472 test maps (mean 2e-4),
# image scores by at most 3.6e-4; metrics unchanged to 2e-4 (docs/quality.md).
AUTO_MAP_TOLERANCE = 0.005
# Relative change of the training loss curve when the cache is float16 instead of float32.
FLOAT16_LOSS_TOLERANCE = 1e-4  # measured: 1.5e-5
# Relative change of the training loss curve when the flows' convolutions run in bfloat16.
BFLOAT16_LOSS_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def good_images():
    return make_defect_images(16, image_size=64, defect_fraction=0.0, random_state=0).images


@pytest.fixture(scope="module")
def streamed(good_images):
    torch.manual_seed(0)
    model = FastflowModel(64, "test_resnet", pre_trained=False)
    return StreamedFeatures(model, ImageCollection(good_images), np.arange(len(good_images)), torch.device("cpu"))


def _cache_bytes(source):
    return 4 * len(source) * sum(math.prod(shape) for shape in source.model.feature_shapes)


def test_cache_serves_the_features_the_backbone_computes(streamed):
    cache = CachedFeatures(streamed, batch_size=5)
    assert cache.storage == "float32" and len(cache) == len(streamed)
    positions = np.array([7, 0, 15, 12])  # any order, across fill batches
    for cached, computed in zip(cache.batch(positions), streamed.batch(positions)):
        assert cached.dtype == torch.float32 and cached.shape == computed.shape
        torch.testing.assert_close(cached, computed, rtol=1e-5, atol=1e-6)


def test_over_budget_cache_is_float16_within_its_rounding(streamed):
    budget = _cache_bytes(streamed) // 2  # float32 does not fit, float16 does
    cache = CachedFeatures(streamed, batch_size=8, memory_budget=budget)
    assert cache.storage == "float16"
    assert all(scale.dtype == torch.float16 for scale in cache.features)
    positions = np.arange(len(streamed))
    for cached, computed in zip(cache.batch(positions), streamed.batch(positions)):
        assert cached.dtype == torch.float32
        # float16 keeps 11 significant bits: relative error <= 2**-11 (plus subnormal spacing).
        assert torch.all((cached - computed).abs() <= 2.0**-11 * computed.abs() + 2.0**-24)


def test_far_over_budget_cache_spills_to_a_file_exactly(streamed):
    cache = CachedFeatures(streamed, batch_size=8, memory_budget=0)
    assert cache.storage == "spill"
    exact = CachedFeatures(streamed, batch_size=8)
    positions = np.array([3, 14, 0, 4])
    for spilled, in_memory in zip(cache.batch(positions), exact.batch(positions)):
        assert spilled.dtype == torch.float32
        torch.testing.assert_close(spilled, in_memory, rtol=0, atol=0)


class _HugeFeatures:
    """A feature source whose values exceed float16's range (65504)."""

    tile_numbers = None  # whole images, not tiles

    def __init__(self):
        self.device = torch.device("cpu")
        self.model = type("Model", (), {"feature_shapes": [(2, 3, 3)]})()
        self.values = torch.linspace(-1e6, 1e6, 4 * 18).reshape(4, 2, 3, 3)

    def __len__(self):
        return 4

    def batch(self, positions):
        return [self.values[torch.as_tensor(positions)]]


def test_values_beyond_float16_range_are_kept_exactly():
    source = _HugeFeatures()
    cache = CachedFeatures(source, batch_size=2, memory_budget=_cache_bytes(source) // 2)
    assert cache.storage == "spill"
    (batch,) = cache.batch(np.arange(4))
    torch.testing.assert_close(batch, source.values, rtol=0, atol=0)


def _fit(X, **params):
    return FastFlowDetector(**{**FAST, "inference_precision": "float32", "training_precision": "float32", **params}).fit(X)


@pytest.fixture(scope="module")
def cached(good_images):
    """A float32 fit with the default (float32, in-memory) feature cache."""
    return _fit(good_images, cache_features=True)


def test_cached_training_has_the_loss_curve_of_the_straightforward_loop(good_images, cached):
    streamed = _fit(good_images, cache_features=False)
    # Same seed, same batches; only the backbone's batch grouping differs (float rounding).
    np.testing.assert_allclose(cached.loss_curve_, streamed.loss_curve_, rtol=1e-5)
    np.testing.assert_allclose(cached.validation_scores_, streamed.validation_scores_, rtol=1e-5)
    np.testing.assert_allclose(cached.score_samples(good_images), streamed.score_samples(good_images), rtol=1e-5, atol=1e-6)


def test_float16_and_spilled_caches_train_like_the_float32_cache(good_images, cached, monkeypatch):
    reference = cached
    n_train = reference.n_train_samples_
    float32_bytes = 4 * n_train * sum(math.prod(shape) for shape in reference.model_.feature_shapes)
    monkeypatch.setattr(features, "MAX_CACHE_BYTES", float32_bytes // 2)
    half = _fit(good_images)
    np.testing.assert_allclose(half.loss_curve_, reference.loss_curve_, rtol=FLOAT16_LOSS_TOLERANCE)
    monkeypatch.setattr(features, "MAX_CACHE_BYTES", 0)
    spilled = _fit(good_images)
    np.testing.assert_allclose(spilled.loss_curve_, reference.loss_curve_, rtol=1e-5)


def test_offset_comes_from_exact_features_when_the_cache_is_float16(cached, monkeypatch):
    images = make_defect_images(8, image_size=64, defect_fraction=0.0, random_state=2).images
    float32_bytes = 4 * len(images) * sum(math.prod(shape) for shape in cached.model_.feature_shapes)
    monkeypatch.setattr(features, "MAX_CACHE_BYTES", float32_bytes // 2)
    # Without early stopping, the threshold's scores are the training images' own.
    detector = _fit(images, early_stopping=False)
    # Scored from the float16 cache, they would miss score_samples' by ~1e-5, and a good
    # image could fall on the other side of the threshold in fit than in predict.
    np.testing.assert_allclose(detector.calibration_scores_, detector.score_samples(images), rtol=1e-6)


def test_bfloat16_inference_stays_within_tolerance_and_keeps_the_ranking(good_images, cached):
    test = make_defect_images(16, image_size=64, defect_fraction=0.5, random_state=1)
    detector = cached
    maps32 = detector.predict_maps(test.images)
    scores32 = detector.score_samples(test.images)
    detector.set_params(inference_precision="bfloat16")  # offset_ stays float32's: only maps and scores compared
    maps16 = detector.predict_maps(test.images)
    scores16 = detector.score_samples(test.images)
    detector.set_params(inference_precision="float32")
    assert maps16.dtype == maps32.dtype and maps16.shape == maps32.shape
    assert np.abs(maps16 - maps32).max() <= BFLOAT16_MAP_TOLERANCE
    assert np.abs(scores16 - scores32).max() <= carried_tolerance(detector, BFLOAT16_MAP_TOLERANCE)
    is_good = test.target == 1
    assert abs(roc_auc_score(is_good, scores16) - roc_auc_score(is_good, scores32)) <= 0.02
    # score_samples is still the image score (top 1 % mean: 41 of 64 x 64 pixels) of the maps it would draw, standardised.
    standardised16 = np.stack([detector.map_standardizer_(m) for m in maps16]).reshape(len(maps16), -1)
    np.testing.assert_allclose(scores16, -np.sort(standardised16, axis=1)[:, -41:].mean(axis=1), rtol=1e-5)


def test_auto_inference_rounds_the_flows_but_not_the_backbone(good_images, cached):
    test = make_defect_images(16, image_size=64, defect_fraction=0.5, random_state=1)
    detector = cached
    seen = {}
    record = lambda precision: lambda module, inputs, output: seen.setdefault(precision, []).extend(output)  # noqa: E731
    maps = {}
    for precision in ("float32", "auto"):
        hook = detector.model_.feature_extractor.register_forward_hook(record(precision))
        try:
            maps[precision] = detector.set_params(inference_precision=precision).predict_maps(test.images)
        finally:
            hook.remove()
            detector.set_params(inference_precision="float32")
    assert len(seen["auto"]) == len(seen["float32"]) > 0
    for auto, exact in zip(seen["auto"], seen["float32"]):
        assert auto.dtype == torch.float32
        torch.testing.assert_close(auto, exact, rtol=0, atol=0)
    if _bfloat16_is_native(torch.device("cpu")):
        assert not np.array_equal(maps["auto"], maps["float32"])  # the flows really ran in bfloat16
    else:
        np.testing.assert_array_equal(maps["auto"], maps["float32"])  # float32 where bfloat16 is emulated
    assert np.abs(maps["auto"] - maps["float32"]).max() <= AUTO_MAP_TOLERANCE


def test_bfloat16_training_keeps_the_cache_exact_and_follows_float32(good_images, cached):
    mixed = _fit(good_images, training_precision="bfloat16")
    # The cache hands the flows the very features the backbone computes, whatever their precision.
    streamed = _fit(good_images, training_precision="bfloat16", cache_features=False)
    np.testing.assert_allclose(mixed.loss_curve_, streamed.loss_curve_, rtol=1e-5)
    # Only the convolutions of the flows round to bfloat16: the same trajectory as float32.
    np.testing.assert_allclose(mixed.loss_curve_, cached.loss_curve_, rtol=BFLOAT16_LOSS_TOLERANCE)
    assert mixed.loss_curve_ != cached.loss_curve_  # the setting really changes the arithmetic
    assert all(parameter.dtype == torch.float32 for parameter in mixed.model_.parameters())
    test = make_defect_images(16, image_size=64, defect_fraction=0.5, random_state=1)
    is_good = test.target == 1
    auroc = [roc_auc_score(is_good, detector.score_samples(test.images)) for detector in (mixed, cached)]
    assert abs(auroc[0] - auroc[1]) <= 0.05


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from(["inference_precision", "training_precision"]),
    st.text(min_size=1, max_size=12).filter(lambda text: text not in {"auto", "float32", "bfloat16"}),
)
def test_unknown_precision_is_refused(name, precision):
    X = np.zeros((4, 32, 32), dtype=np.uint8)
    with pytest.raises(ValueError, match=name):
        FastFlowDetector(**{name: precision}).fit(X)
