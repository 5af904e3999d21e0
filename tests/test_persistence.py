"""Saving and loading fitted detectors: identical results, offline, CPU-only, clear failures."""

import os
import pickle
import socket

import joblib
import numpy as np
import pytest
import timm
import torch

import skfastflow
from skfastflow import FastFlowDetector, FastflowModel, persistence
from skfastflow.persistence import ModelFileError, load, save

TINY = dict(backbone="test_resnet", pre_trained=False, input_size=32, flow_steps=1, max_iter=2, n_threads=1, calibration_cv=None, random_state=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(90, 160, size=(10, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def fitted(images):
    return FastFlowDetector(**TINY).fit(images)


@pytest.fixture(scope="module")
def model_file(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "detector.joblib"
    save(fitted, path)
    return path


def _assert_same_results(loaded, original, X):
    np.testing.assert_array_equal(loaded.score_samples(X), original.score_samples(X))
    np.testing.assert_array_equal(loaded.decision_function(X), original.decision_function(X))
    np.testing.assert_array_equal(loaded.predict_maps(X), original.predict_maps(X))
    assert loaded.offset_ == original.offset_
    assert loaded.get_params() == original.get_params()


def test_joblib_round_trip_gives_identical_scores_and_maps(fitted, images, tmp_path):
    path = tmp_path / "detector.joblib"
    joblib.dump(fitted, path)
    loaded = joblib.load(path)
    _assert_same_results(loaded, fitted, images)
    assert loaded.loss_curve_ == fitted.loss_curve_ and loaded.n_iter_ == fitted.n_iter_
    assert not loaded.model_.training
    _assert_same_results(pickle.loads(pickle.dumps(fitted)), fitted, images)


def test_pickling_leaves_the_detector_untouched(fitted, images):
    before = set(vars(fitted))
    pickle.dumps(fitted)
    assert set(vars(fitted)) == before
    assert isinstance(fitted.model_, FastflowModel) and isinstance(fitted.device_, torch.device)


def test_parameters_changed_after_fit_do_not_break_the_saved_model(fitted, images):
    # The saved architecture is the fitted model's, not the current parameters'.
    changed = pickle.loads(pickle.dumps(fitted)).set_params(flow_steps=4, hidden_ratio=0.5, input_size=64)
    loaded = pickle.loads(pickle.dumps(changed))
    np.testing.assert_array_equal(loaded.score_samples(images), fitted.score_samples(images))
    assert loaded.flow_steps == 4


def test_unfitted_detector_round_trips_with_its_parameters():
    detector = FastFlowDetector("test_efficientnet", input_size=48, max_iter=7)
    loaded = pickle.loads(pickle.dumps(detector))
    assert loaded.get_params() == detector.get_params()
    assert not hasattr(loaded, "model_")


def test_save_and_load_round_trip(model_file, fitted, images):
    _assert_same_results(load(model_file), fitted, images)


def test_model_file_loads_without_network_or_the_backbone_weights_file(images, tmp_path, monkeypatch):
    # Backbone weights from a local file that is gone when the model is loaded: the file
    # must carry them. Any network access during the load fails the test.
    weights = tmp_path / "backbone.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), weights)
    detector = FastFlowDetector(**{**TINY, "pre_trained": True, "weights": str(weights)}).fit(images)
    path = tmp_path / "detector.joblib"
    save(detector, path)
    os.remove(weights)

    def no_network(*args, **kwargs):
        raise AssertionError("loading a model file tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    loaded = load(path)
    _assert_same_results(loaded, detector, images)


@pytest.mark.parametrize("saved_device", ["cuda", "cuda:1", "mps"])
def test_detector_fitted_on_a_gpu_loads_and_runs_on_a_cpu_only_machine(fitted, images, saved_device, monkeypatch):
    state = fitted.__getstate__()
    state["device_"] = saved_device  # as written by a detector fitted on that device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    loaded = FastFlowDetector.__new__(FastFlowDetector)
    loaded.__setstate__(state)
    assert loaded.device_ == torch.device("cpu")
    assert all(tensor.device.type == "cpu" for tensor in loaded.model_.state_dict().values())
    np.testing.assert_array_equal(loaded.score_samples(images), fitted.score_samples(images))


def test_model_state_is_numpy_on_cpu_with_versions_recorded(fitted):
    state = fitted.__getstate__()
    model_state = state["_model_state"]
    assert state["_skfastflow_version"] == skfastflow.__version__
    assert state["_skfastflow_format"] == persistence.FORMAT_VERSION
    assert model_state["torch"] == torch.__version__ and model_state["timm"]
    assert all(isinstance(array, np.ndarray) for array in model_state["arrays"].values())
    assert "model_" not in state and state["device_"] == "cpu"


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet"])
def test_pickle_stores_every_weight_once_and_little_else(backbone, images):
    detector = FastFlowDetector(**{**TINY, "backbone": backbone, "max_iter": 1}).fit(images)
    weight_bytes = sum(t.numel() * t.element_size() for t in detector.model_.state_dict().values())
    size = len(pickle.dumps(detector, protocol=pickle.HIGHEST_PROTOCOL))
    assert weight_bytes <= size <= weight_bytes + 32 * 1024


@pytest.mark.parametrize("backbone", ["resnet18", "tf_efficientnet_lite0"])
def test_paper_backbone_state_holds_exactly_the_model_weights(backbone):
    # Architecture only (pre_trained=False): what a file for this backbone must hold.
    model = FastflowModel(256, backbone, pre_trained=False)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    state = persistence.model_to_state(model, dict(input_size=(256, 256), backbone=backbone, flow_steps=8,
                                                   conv3x3_only=False, hidden_ratio=1.0))
    size = len(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    assert weight_bytes <= size <= weight_bytes * 1.001 + 64 * 1024
    # The classifier head and unused stages are not part of the features_only backbone.
    assert not any(name.startswith("feature_extractor.model.fc") for name in state["arrays"])


def test_file_from_a_newer_format_is_refused_with_the_version_to_install(fitted, tmp_path, monkeypatch):
    path = tmp_path / "future.joblib"
    monkeypatch.setattr(persistence, "FORMAT_VERSION", persistence.FORMAT_VERSION + 1)
    monkeypatch.setattr(persistence, "__version__", "9.0.0")
    save(fitted, path)
    monkeypatch.undo()
    with pytest.raises(ModelFileError, match=r"9\.0\.0.*newer.*pip install skfastflow>=9\.0\.0"):
        load(path)
    with pytest.raises(ModelFileError, match="newer"):  # plain pickle users get the same message
        joblib.load(path)


@pytest.mark.parametrize("saved_version, saved_format", [("0.0.1", persistence.FORMAT_VERSION), (skfastflow.__version__, 0)])
def test_file_from_an_older_release_or_format_is_refused(fitted, saved_version, saved_format):
    state = fitted.__getstate__()
    state["_skfastflow_version"], state["_skfastflow_format"] = saved_version, saved_format
    with pytest.raises(ModelFileError, match=rf"saved by skfastflow {saved_version}.*no longer reads.*or refit"):
        FastFlowDetector.__new__(FastFlowDetector).__setstate__(state)


def test_file_from_a_later_patch_release_loads(fitted, images):
    state = fitted.__getstate__()
    major, minor, *_ = skfastflow.__version__.split(".")
    state["_skfastflow_version"] = f"{major}.{minor}.99"
    loaded = FastFlowDetector.__new__(FastFlowDetector)
    loaded.__setstate__(state)
    np.testing.assert_array_equal(loaded.score_samples(images), fitted.score_samples(images))


def test_file_pickled_before_formats_existed_is_refused(fitted):
    state = fitted.__getstate__()
    del state["_skfastflow_format"]
    with pytest.raises(ModelFileError, match="Refit"):
        FastFlowDetector.__new__(FastFlowDetector).__setstate__(state)


def test_architecture_that_timm_no_longer_builds_is_a_clear_error(fitted):
    state = fitted.__getstate__()
    arrays = state["_model_state"]["arrays"]
    renamed = {name.replace("feature_extractor.model.", "feature_extractor.model.old_"): v for name, v in arrays.items()}
    state["_model_state"] = {**state["_model_state"], "arrays": renamed, "checksum": persistence._checksum(renamed)}
    with pytest.raises(ModelFileError, match="Install timm=="):
        FastFlowDetector.__new__(FastFlowDetector).__setstate__(state)


def test_truncated_file_is_a_clear_error(model_file, tmp_path):
    data = model_file.read_bytes()
    for keep in (0, 10, len(data) // 2, len(data) - 3):
        truncated = tmp_path / f"truncated_{keep}.joblib"
        truncated.write_bytes(data[:keep])
        with pytest.raises(ModelFileError, match="truncated, corrupted or not a skfastflow model file") as info:
            load(truncated)
        assert str(truncated) in str(info.value)


def test_damaged_weights_are_detected(model_file, fitted, tmp_path):
    data = bytearray(model_file.read_bytes())
    # Flip one byte inside the largest weight array, found by its bytes in the file.
    largest = max(fitted.__getstate__()["_model_state"]["arrays"].values(), key=lambda a: a.nbytes)
    start = bytes(data).index(largest.tobytes()[:64])
    data[start + largest.nbytes // 2] ^= 0xFF
    damaged = tmp_path / "damaged.joblib"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum: the file is corrupted"):
        load(damaged)


def test_file_that_is_not_a_model_is_a_clear_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    other_object = tmp_path / "dict.joblib"
    joblib.dump({"weights": [1, 2, 3]}, other_object)
    png = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    for path in (text, png):
        with pytest.raises(ModelFileError, match="not a skfastflow model file"):
            load(path)
    with pytest.raises(ModelFileError, match="holds a dict, not a FastFlowDetector"):
        load(other_object)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "missing.joblib")


def test_interrupted_save_keeps_the_previous_file_and_leaves_no_partial_file(fitted, model_file, tmp_path, monkeypatch):
    path = tmp_path / "detector.joblib"
    path.write_bytes(model_file.read_bytes())
    before = path.read_bytes()

    def dump_then_fail(value, file):
        file.write(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(joblib, "dump", dump_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save(fitted, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["detector.joblib"]


def test_save_replaces_an_existing_file_and_refuses_a_missing_folder(fitted, images, tmp_path):
    path = tmp_path / "detector.joblib"
    path.write_bytes(b"old")
    save(fitted, path)
    np.testing.assert_array_equal(load(path).score_samples(images), fitted.score_samples(images))
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        save(fitted, tmp_path / "no_such_folder" / "detector.joblib")
