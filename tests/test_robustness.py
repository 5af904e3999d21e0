"""What the detector does with bad input, training faults and many images.

Every public method refuses unusable input with ``ValueError``/``TypeError`` naming the
problem and the fix (never a torch or PIL traceback, never silently wrong scores); a failed
or interrupted ``fit`` leaves the detector as it was; ``predict_maps`` streams files in
batches. docs/errors.md describes the same behaviour for users.
"""

import copy
import csv
import weakref

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from conftest import carried_tolerance
from skfastflow import FastFlowDetector
from skfastflow import batch_scoring
from skfastflow import image_input as image_input_module
from skfastflow import persistence
from skfastflow.cli import main
from skfastflow.nn import FastflowLoss, FastflowModel

FAST = dict(backbone="test_resnet", pre_trained=False, input_size=32, flow_steps=1, max_iter=2, batch_size=4, n_threads=1, calibration_cv=None, random_state=0)
METHODS = ["fit", "score_samples", "decision_function", "predict", "predict_maps", "score"]


def colour_images(n, seed=0, size=32):
    return np.random.default_rng(seed).integers(60, 200, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def colour_detector():
    return FastFlowDetector(**FAST).fit(colour_images(8))


@pytest.fixture(scope="module")
def grey_detector():
    return FastFlowDetector(**FAST).fit(colour_images(8)[..., 0])


def call(detector, method, X):
    if method == "fit":
        return clone(detector).fit(X)
    return getattr(detector, method)(X)


def fitted_state(detector):
    """Everything fit sets, with tensors copied, to compare before and after a failure."""
    state = {k: v for k, v in vars(detector).items() if k.endswith("_") and k != "model_"}
    return state, {k: v.clone() for k, v in detector.model_.state_dict().items()}


def assert_unchanged(detector, before, X):
    state, weights = fitted_state(detector)
    assert state.keys() == before[0].keys()
    for key, value in before[0].items():
        assert str(state[key]) == str(value), key
    for key, value in before[1].items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0)
    assert np.isfinite(detector.score_samples(X)).all()


# ----------------------------------------------------------------- bad input, every method

BAD_INPUTS = {
    "one image without batch axis": (np.zeros((32, 32, 3), np.uint8), ValueError, r"X\[np.newaxis\]"),
    "five dimensions": (np.zeros((2, 2, 8, 8, 3), np.uint8), ValueError, "dimensions"),
    "two channels": (np.zeros((2, 8, 8, 2), np.uint8), ValueError, "2 channels"),
    "channels first": (np.zeros((2, 3, 16, 16), np.uint8), ValueError, "channels-first"),
    "bool": (np.zeros((2, 8, 8, 3), bool), TypeError, r"boolean.*astype\(np.uint8\)"),
    "int64 beyond 255": (np.full((2, 8, 8, 3), 300, np.int64), ValueError, r"outside 0\.\.255"),
    "complex": (np.zeros((2, 8, 8, 3), np.complex128), TypeError, "complex128.*not an image type"),
    "object": (np.zeros((2, 8, 8, 3), object), TypeError, "Python objects"),
    "float 0..255": (np.full((2, 8, 8, 3), 128.0), ValueError, "divide by 255"),
    "negative floats": (np.full((2, 8, 8, 3), -0.5), ValueError, r"rescale to \[0, 1\]"),
    "NaN": (np.full((2, 8, 8, 3), np.nan), ValueError, "NaN or infinite"),
    "inf in a list": ([np.zeros((8, 8)), np.full((8, 8), np.inf)], ValueError, r"X\[1\].*NaN or infinite"),
    "empty array": (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "no images"),
    "empty list": ([], ValueError, "no images"),
    "zero-width image": ([np.zeros((8, 0, 3), np.uint8)], ValueError, "empty image"),
    "None": (None, TypeError, "NoneType"),
    "torch tensor": (torch.zeros(2, 3, 8, 8), TypeError, "permute"),
    "nested lists": (np.zeros((2, 8, 8), np.uint8).tolist(), TypeError, "np.asarray"),
    "single path": ("image.png", TypeError, "single path"),
    "missing path": (["does/not/exist.png"], ValueError, r"^image file 'does/not/exist.png' does not exist; check the path"),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_clear_error_from_every_method(colour_detector, method, case):
    X, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        call(colour_detector, method, X)


@st.composite
def unusable_arrays(draw):
    """Arrays wrong in exactly one way, each with the error it must raise."""
    n, height, width = draw(st.integers(1, 3)), draw(st.integers(5, 12)), draw(st.integers(5, 12))
    fault = draw(st.sampled_from(["ndim", "channels", "dtype", "range", "nonfinite"]))
    if fault == "ndim":
        return np.zeros((n, height, width, 3, 1), np.uint8), ValueError
    if fault == "channels":
        return np.zeros((n, height, width, draw(st.sampled_from([2, 5, 6]))), np.uint8), ValueError
    if fault == "dtype":
        return np.zeros((n, height, width, 3), draw(st.sampled_from([bool, np.complex64, object]))), TypeError
    X = np.full((n, height, width, 3), 0.5)
    position = draw(st.integers(0, X.size - 1))
    X.flat[position] = draw(st.sampled_from([1.5, 255.0, -0.1])) if fault == "range" else draw(st.sampled_from([np.nan, np.inf]))
    return X, ValueError


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(unusable_arrays(), st.sampled_from(METHODS), st.booleans())
def test_unusable_arrays_never_reach_torch(colour_detector, array_and_error, method, as_list):
    X, error = array_and_error
    X = list(X) if as_list and X.ndim == 4 and X.dtype != object else X
    with pytest.raises(error, match="X"):
        call(colour_detector, method, X)


@pytest.fixture
def broken_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(colour_images(1)[0]).save(good)
    content = good.read_bytes()
    files = {"truncated": content[: len(content) // 2], "not an image": b"hello", "empty": b""}
    for name, data in files.items():
        (tmp_path / f"{name}.png").write_bytes(data)
    return good, [tmp_path / f"{name}.png" for name in files]


@pytest.mark.parametrize("method", METHODS)
def test_unreadable_files_name_the_file(colour_detector, broken_files, method):
    good, broken = broken_files
    for path in broken:
        with pytest.raises(ValueError, match=rf"^cannot read image file '.*{path.name}'.*Replace the file") as error:
            call(colour_detector, method, [good, good, path, good])
        assert "X" not in str(error.value).replace(str(path), "")


def test_a_folder_is_refused_with_the_listing_fix(colour_detector, tmp_path):
    with pytest.raises(ValueError, match="is a folder.*list_images"):
        colour_detector.predict_maps([tmp_path])


def test_fit_needs_two_good_images():
    with pytest.raises(ValueError, match="at least 2 good images"):
        FastFlowDetector(**FAST).fit(colour_images(1))
    with pytest.raises(ValueError, match="at least 2 good images"):
        FastFlowDetector(**FAST).fit(colour_images(3), y=[1, -1, -1])


# ----------------------------------------------------------------- input that works

def test_one_image_is_scored(colour_detector):
    X = colour_images(3, seed=1)
    atol = carried_tolerance(colour_detector, 1e-6)
    assert colour_detector.score_samples(X[:1])[0] == pytest.approx(colour_detector.score_samples(X)[0], abs=atol)
    np.testing.assert_allclose(colour_detector.predict_maps(X[:1])[0], colour_detector.predict_maps(X)[0], rtol=0, atol=1e-6)


def test_equivalent_encodings_give_the_same_scores(colour_detector):
    X = colour_images(4, seed=1)
    expected = colour_detector.score_samples(X)
    rgba = np.concatenate([X, np.full((*X.shape[:3], 1), 17, np.uint8)], axis=-1)
    for same in [rgba, X.astype(np.int64), X / 255.0, (X / 255.0).astype(np.float32), list(X), list(rgba)]:
        np.testing.assert_allclose(colour_detector.score_samples(same), expected, atol=1e-5)


def test_paths_arrays_and_pil_images_mix(colour_detector, tmp_path):
    X = colour_images(3, seed=2)
    paths = []
    for i, image in enumerate(X):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    mixed = [paths[0], X[1], Image.fromarray(X[2])]
    np.testing.assert_allclose(colour_detector.score_samples(mixed), colour_detector.score_samples(X), atol=1e-6)


def test_mixed_and_tiny_sizes_give_maps_at_each_images_size(colour_detector):
    rng = np.random.default_rng(3)
    X = [rng.integers(60, 200, size=shape, dtype=np.uint8) for shape in [(40, 24, 3), (1, 1, 3), (2, 3, 3), (32, 32, 3)]]
    maps = colour_detector.predict_maps(X)
    assert [m.shape for m in maps] == [(40, 24), (1, 1), (2, 3), (32, 32)]
    for image, anomaly_map in zip(X, maps):
        np.testing.assert_allclose(anomaly_map, colour_detector.predict_maps(image[None])[0], rtol=0, atol=1e-6)
    # A 1 x 1 image is seen as a flat 32 x 32 image of its colour; its one map pixel, centred at
    # (15.5, 15.5) of that image's 32 x 32 map, is the mean of the four map pixels around it.
    flat = colour_detector.predict_maps(np.tile(X[1], (1, 32, 32, 1)))[0]
    assert maps[1][0, 0] == pytest.approx(flat[15:17, 15:17].mean(), abs=1e-6)
    alone = [colour_detector.score([image]) for image in X]
    assert colour_detector.score(X) == pytest.approx(np.mean(alone), rel=1e-6)


# ----------------------------------------------------------------- grey and colour

@pytest.mark.parametrize("method", ["score_samples", "decision_function", "predict", "predict_maps", "score"])
def test_grey_detector_scores_colour_images_and_warns_naming_each(grey_detector, method):
    assert grey_detector.colour_mode_ == "grey"
    with pytest.warns(UserWarning, match=r"colour image, but the detector was fitted on grey.*scored") as record:
        result = getattr(grey_detector, method)(colour_images(2, seed=4))
    assert [str(w.message).split(" ")[0] for w in record if "colour image" in str(w.message)] == ["X[0]", "X[1]"]
    assert np.isfinite(result).all()


def test_colour_stain_on_a_grey_part_scores_as_more_anomalous():
    # Scored over raw maps: on these random-noise parts, seen by a random backbone, the top 1 % of a
    # 32 x 32 map standardised by 7 training maps is ruled by their noise (10 pixels); what is tested
    # here is that a grey model uses colour, not standardisation (tests/test_map_standardization.py).
    grey_detector = FastFlowDetector(**FAST, standardize_maps=False).fit(colour_images(8)[..., 0])
    grey = colour_images(4, seed=4)[..., 0]
    frames = np.repeat(grey[..., None], 3, axis=-1)
    frames[2, 8:24, 8:24] = (150, 60, 20)  # a rust-coloured stain on the third part
    with pytest.warns(UserWarning, match=r"X\[2\] is a colour image"):
        scores = grey_detector.score_samples(frames)
    np.testing.assert_allclose(scores[[0, 1, 3]], grey_detector.score_samples(grey[[0, 1, 3]]), atol=1e-6)
    assert scores[2] < scores[[0, 1, 3]].min()


def test_grey_detector_accepts_grey_stored_as_rgb(grey_detector):
    grey = colour_images(3, seed=4)[..., 0]
    as_rgb = np.repeat(grey[..., None], 3, axis=-1)
    np.testing.assert_allclose(grey_detector.score_samples(as_rgb), grey_detector.score_samples(grey), atol=1e-6)


@pytest.mark.parametrize("method", ["score_samples", "predict_maps"])
def test_colour_detector_warns_about_grey_images_but_scores_them(colour_detector, method):
    assert colour_detector.colour_mode_ == "colour"
    with pytest.warns(UserWarning, match=r"X\[0\] is a grey image.*fitted on colour"):
        result = getattr(colour_detector, method)(colour_images(2, seed=5)[..., 0])
    assert np.isfinite(result).all()


def test_detector_fitted_on_both_accepts_both():
    X = list(colour_images(2)) + list(colour_images(2, seed=1)[..., 0])
    detector = FastFlowDetector(**{**FAST, "max_iter": 1}).fit(X)
    assert detector.colour_mode_ == "mixed"
    assert detector.predict(X).shape == (4,)


# ----------------------------------------------------------------- input_size too small

def test_input_size_giving_only_1x1_feature_maps_is_refused():
    with pytest.raises(ValueError, match=r"input_size=\(4, 4\) is too small.*1x1.*larger input_size"):
        FastFlowDetector(**{**FAST, "input_size": 4}).fit(colour_images(3))


def test_transformer_input_size_not_a_multiple_of_the_patch_is_refused():
    with pytest.raises(ValueError, match=r"input_size=\(24, 24\) does not fit backbone 'test_vit'.*patch size"):
        FastFlowDetector(**{**FAST, "backbone": "test_vit", "input_size": 24}).fit(colour_images(3))


def test_smallest_usable_input_size_works():
    detector = FastFlowDetector(**{**FAST, "input_size": 8, "max_iter": 1}).fit(colour_images(4))
    assert detector.predict_maps(colour_images(2, seed=1)).shape == (2, 32, 32)


# ----------------------------------------------------------------- training faults

class StopAtStep:
    """Replacement for Adam.step raising KeyboardInterrupt at the given call (1-based)."""

    def __init__(self, monkeypatch, at_call):
        self.calls, self.at_call = 0, at_call
        original = torch.optim.Adam.step

        def step(optimizer, *args, **kwargs):
            self.calls += 1
            if self.calls == self.at_call:
                raise KeyboardInterrupt
            return original(optimizer, *args, **kwargs)

        monkeypatch.setattr(torch.optim.Adam, "step", step)


def test_keyboard_interrupt_mid_training_leaves_a_fitted_detector_unchanged(colour_detector, monkeypatch):
    X = colour_images(8)
    detector = copy.deepcopy(colour_detector)
    before = fitted_state(detector)
    stopper = StopAtStep(monkeypatch, at_call=3)  # 7 training images, batch_size 4: in epoch 2
    with pytest.raises(KeyboardInterrupt):
        detector.set_params(max_iter=3).fit(colour_images(8, seed=9))
    assert stopper.calls == 3
    monkeypatch.undo()
    assert_unchanged(detector, before, X)


def test_keyboard_interrupt_leaves_a_new_detector_unfitted(monkeypatch):
    StopAtStep(monkeypatch, at_call=1)
    detector = FastFlowDetector(**FAST)
    with pytest.raises(KeyboardInterrupt):
        detector.fit(colour_images(6))
    with pytest.raises(NotFittedError):
        check_is_fitted(detector)


def test_exploding_training_stops_with_floating_point_error_naming_epoch_and_remedy():
    # Adam with a learning rate of 1e4 overflows the flow in the second epoch.
    detector = FastFlowDetector(**{**FAST, "max_iter": 3, "learning_rate_init": 1e4})
    with pytest.raises(FloatingPointError, match=r"loss became (inf|nan) in epoch \d.*lower learning_rate_init \(now 10000.0\)"):
        detector.fit(colour_images(8))
    with pytest.raises(NotFittedError):
        check_is_fitted(detector)


def test_non_finite_loss_leaves_a_fitted_detector_unchanged(colour_detector, monkeypatch):
    X = colour_images(8)
    detector = copy.deepcopy(colour_detector)
    before = fitted_state(detector)
    monkeypatch.setattr(FastflowLoss, "forward", lambda self, z, j: torch.tensor(float("nan")))
    with pytest.raises(FloatingPointError, match="became nan in epoch 1"):
        detector.fit(X)
    monkeypatch.undo()
    assert_unchanged(detector, before, X)


@pytest.mark.parametrize("early_stopping", [True, False])  # offset_ from held-out or from training images
def test_a_model_scoring_nan_is_never_returned(monkeypatch, early_stopping):
    # Finite loss but NaN scores on the threshold's images (say, features that overflow only there).
    monkeypatch.setattr(FastFlowDetector, "_threshold_scores", lambda self, model, images, indices, *_: {0.01: np.full(len(indices), np.nan)})
    detector = FastFlowDetector(**FAST, early_stopping=early_stopping)
    with pytest.raises(FloatingPointError, match="non-finite scores to good images"):
        detector.fit(colour_images(6))
    with pytest.raises(NotFittedError):
        check_is_fitted(detector)


def test_failed_fit_on_a_corrupt_file_leaves_the_model_unchanged(colour_detector, broken_files):
    good, broken = broken_files
    X = colour_images(4, seed=6)
    detector = copy.deepcopy(colour_detector)
    before = fitted_state(detector)
    with pytest.raises(ValueError, match="cannot read image file"):
        detector.fit([good, good, broken[0]])
    assert_unchanged(detector, before, X)


def test_refit_replaces_the_model_as_a_fresh_fit_would(colour_detector):
    grey = colour_images(6, seed=7)[..., 0]
    refitted = copy.deepcopy(colour_detector)
    changed = dict(input_size=40, max_iter=1, early_stopping=False, contamination=0.1)
    refitted.set_params(**changed).fit(grey)
    fresh = FastFlowDetector(**{**FAST, **changed}).fit(grey)
    assert refitted.colour_mode_ == "grey"
    assert refitted.model_.input_size == (40, 40)
    assert (refitted.n_iter_, refitted.best_epoch_, refitted.n_train_samples_) == (1, 1, fresh.n_train_samples_)
    assert refitted.loss_curve_ == fresh.loss_curve_
    assert refitted.offset_ == fresh.offset_
    np.testing.assert_array_equal(refitted.score_samples(grey), fresh.score_samples(grey))


# ----------------------------------------------------------------- scale

def write_pngs(folder, n_images, seed=8):
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n_images):
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(rng.integers(60, 200, size=(8, 8, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture
def stream_probe(monkeypatch):
    """Records file reads and backbone passes, and the most decoded images alive at once."""
    probe = {"events": [], "alive": 0, "most_alive": 0}
    original_read, original_extract = image_input_module.read_image, FastflowModel.extract_features

    def forget():
        probe["alive"] -= 1

    def counting_read(path):
        array = original_read(path)
        probe["events"].append("r")
        probe["alive"] += 1
        probe["most_alive"] = max(probe["most_alive"], probe["alive"])
        weakref.finalize(array, forget)
        return array

    def counting_extract(model, images):
        probe["events"].append("|")
        return original_extract(model, images)

    monkeypatch.setattr(image_input_module, "read_image", counting_read)
    monkeypatch.setattr(batch_scoring, "read_image", counting_read)
    monkeypatch.setattr(FastflowModel, "extract_features", counting_extract)
    return probe


def assert_streamed(probe, n_images, batch_size):
    reads_between_passes = [len(run) for run in "".join(probe["events"]).split("|")]
    assert probe["events"].count("r") == n_images
    assert probe["events"].count("|") >= -(-n_images // batch_size)
    assert max(reads_between_passes) <= batch_size
    assert probe["most_alive"] <= batch_size


def test_predict_maps_streams_files_in_batches(colour_detector, tmp_path, stream_probe):
    n_images, batch_size = 200, 32
    paths = write_pngs(tmp_path / "images", n_images)
    detector = copy.deepcopy(colour_detector).set_params(batch_size=batch_size)
    maps = detector.predict_maps(paths)
    assert maps.shape == (n_images, 8, 8)
    assert_streamed(stream_probe, n_images, batch_size)
    assert stream_probe["events"].count("|") == -(-n_images // batch_size)


# ----------------------------------------------------------------- command line

@pytest.fixture
def model_file(tmp_path):
    def save(detector):
        persistence.save(detector, tmp_path / "model.joblib")
        return tmp_path / "model.joblib"

    return save


def test_cli_predict_streams_files_in_batches(colour_detector, model_file, tmp_path, stream_probe, capsys):
    n_images, batch_size = 200, 32
    write_pngs(tmp_path / "images", n_images)
    status = main(["predict", str(model_file(colour_detector)), str(tmp_path / "images"), "--batch-size", str(batch_size)])
    assert status == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line.endswith(("good", "defective"))]) == n_images
    assert_streamed(stream_probe, n_images, batch_size)
    # --batch-size is the model's batch for this run (the saved model's is 4): one pass per 32 images.
    assert colour_detector.batch_size == 4
    assert stream_probe["events"].count("|") == -(-n_images // batch_size)


def test_cli_predict_names_an_unreadable_file_and_scores_the_others(colour_detector, model_file, broken_files, capsys):
    good, broken = broken_files
    status = main(["predict", str(model_file(colour_detector)), str(good), str(broken[0]), str(good)])
    out, err = capsys.readouterr()
    assert status == 2
    assert len([line for line in out.splitlines() if line.endswith(("good", "defective"))]) == 2
    assert f"skfastflow: error: cannot read image file '{broken[0]}'" in err and "Traceback" not in err


def test_cli_predict_gives_every_verdict_for_colour_images_on_a_grey_model(grey_detector, model_file, tmp_path, capsys):
    paths = write_pngs(tmp_path / "colour", 2)
    status = main(["predict", str(model_file(grey_detector)), *map(str, paths)])
    out, err = capsys.readouterr()
    assert status == 0
    assert [line.split()[0] for line in out.splitlines()] == [str(path) for path in paths]
    assert f"skfastflow: warning: image file '{paths[0]}' is a colour image, but the detector was fitted on grey" in err
    assert f"The same holds for 1 other file(s): '{paths[1]}'" in err
    assert "X[" not in err


# ----------------------------------------------------------------- files as users have them (issue #16)

def save_sideways(upright, path):
    """Store ``upright`` as a phone does: pixels turned 90 degrees, EXIF Orientation=6 to turn them back."""
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = stored.getexif()
    exif[274] = 6
    stored.save(path, exif=exif)


def test_phone_photos_stored_sideways_are_scored_upright(colour_detector, model_file, tmp_path, capsys):
    upright = colour_images(4, seed=9, size=64)[:, :, 8:56]  # 64 high, 48 wide, as displayed
    paths = [tmp_path / f"part{index}.png" for index in range(4)]
    for image, path in zip(upright, paths):
        save_sideways(image, path)
        assert Image.open(path).size == (64, 48)  # stored 64 wide, 48 high
    maps, scores = colour_detector.predict_maps(paths, return_scores=True)
    assert maps.shape == (4, 64, 48)
    np.testing.assert_allclose(scores, colour_detector.score_samples(upright), atol=1e-6)
    np.testing.assert_allclose(maps, colour_detector.predict_maps(upright), atol=1e-6)
    # The overlays of the command line have the displayed size too.
    status = main(["predict", str(model_file(colour_detector)), *map(str, paths), "--maps", str(tmp_path / "maps")])
    assert status == 0
    capsys.readouterr()
    with Image.open(tmp_path / "maps" / "part0.png") as overlay:
        assert overlay.size == (48, 64)


def test_cli_predict_scores_39_of_40_parts_when_the_3rd_is_truncated(colour_detector, model_file, tmp_path, capsys):
    paths = write_pngs(tmp_path / "parts", 40)
    paths[2].write_bytes(paths[2].read_bytes()[:100])
    status = main(["predict", str(model_file(colour_detector)), str(tmp_path / "parts"), "--csv", str(tmp_path / "out.csv")])
    out, err = capsys.readouterr()
    assert status == 2
    verdicts = [line.split()[0] for line in out.splitlines() if line.endswith(("good", "defective"))]
    assert verdicts == [str(path) for path in paths if path != paths[2]]
    with open(tmp_path / "out.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["path"] for row in rows] == [str(path) for path in paths]
    assert [row["verdict"] for row in rows].count("error") == 1
    assert rows[2]["verdict"] == "error" and rows[2]["score"] == "" and f"'{paths[2]}'" in rows[2]["error"]
    assert f"skfastflow: error: cannot read image file '{paths[2]}'" in err
    assert "40 images: 1 could not be scored" in err
    assert "X" not in err.replace(str(tmp_path), "").replace("offset_", "")


def test_float_tiff_of_heights_gets_a_file_remedy_from_the_detector(colour_detector, tmp_path):
    heights = np.linspace(3.0, 4.5, 32 * 32, dtype=np.float32).reshape(32, 32)  # mm
    Image.fromarray(heights).save(tmp_path / "height.tif")
    with pytest.raises(ValueError, match=r"height.tif' holds floating-point pixels from 3 to 4.5.*16-bit PNG or TIFF") as error:
        colour_detector.predict_maps([tmp_path / "height.tif"])
    assert "divide by 255" not in str(error.value) and "X" not in str(error.value).replace(str(tmp_path), "")


def test_fit_and_predict_use_every_image_of_a_folder_and_its_sub_folders(tmp_path, capsys):
    # 12 good parts as .png, .webp and .pgm: 2 at the top, 10 in day1/ and day2/.
    good = tmp_path / "good"
    images = colour_images(12, seed=3, size=16)[..., 0]
    for index, image in enumerate(images):
        folder = good if index < 2 else good / ("day1" if index < 7 else "day2")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:02d}{['.png', '.webp', '.pgm'][index % 3]}")
    (good / "notes.txt").write_text("lot 7")
    fit = ["--backbone", "test_resnet", "--no-pretrained", "--input-size", "32", "--epochs", "1", "--seed", "0"]
    assert main(["fit", str(good), "--out", str(tmp_path / "model.joblib"), *fit]) == 0
    out, err = capsys.readouterr()
    assert f"Training on 12 good images from {good}" in out
    assert "notes.txt (not an image file (suffix '.txt'))" in err
    detector = persistence.load(tmp_path / "model.joblib")
    assert detector.n_train_samples_ + detector.n_validation_samples_ == 12
    assert main(["predict", str(tmp_path / "model.joblib"), str(good)]) == 0
    out, _ = capsys.readouterr()
    assert len(out.splitlines()) == 12


def test_cli_evaluate_leaves_out_an_unreadable_test_image_and_exits_2(colour_detector, model_file, tmp_path, capsys):
    from skfastflow.cli import write_mvtec_folder
    from skfastflow.datasets import make_defect_images

    train = make_defect_images(4, image_size=32, defect_fraction=0.0, random_state=0)
    test = make_defect_images(6, image_size=32, defect_fraction=0.5, random_state=1)
    root = write_mvtec_folder(tmp_path / "data", train, test)
    broken = sorted((root / "test").rglob("*.png"))[0]
    broken.write_bytes(b"truncated")
    status = main(["evaluate", str(model_file(colour_detector)), str(root)])
    out, err = capsys.readouterr()
    assert status == 2
    assert f"skfastflow: error: cannot read image file '{broken}'" in err
    n_good = int((test.target == 1).sum()) - (broken.parent.name == "good")
    n_defective = int((test.target == -1).sum()) - (broken.parent.name != "good")
    assert f"Test images: {n_good} good, {n_defective} defective" in out
    assert "1 test images could not be scored" in err
