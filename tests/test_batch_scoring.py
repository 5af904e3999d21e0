"""skfastflow.batch_scoring.score_files: one result per file, in order; a bad file costs only itself.

A numpy-only stand-in detector with the public methods score_files may use shows that it
needs nothing else (the runtime and cluster detectors rely on that); the real detector
is used in tests/test_robustness.py.
"""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from skfastflow.batch_scoring import FileScore, score_files
from skfastflow.files import ImageWarning

REFUSED_LEVEL = 13  # the stand-in detector refuses images that are all this level


class MeanDetector:
    """Scores an image by its mean brightness; maps are the brightness. Public methods only.

    Refuses (ValueError, for the whole call) any image that is all ``REFUSED_LEVEL``, and
    warns, by position, about images that are all 200.
    """

    offset_ = 0.5

    def __init__(self, batch_size=3):
        self.batch_size = batch_size
        self.calls = []

    def _check(self, X):
        self.calls.append(len(X))
        for index, image in enumerate(X):
            if (image == REFUSED_LEVEL).all():
                raise ValueError(f"X[{index}] is refused")
            if (image == 200).all():
                warnings.warn(ImageWarning(f"X[{index}] is very bright", index=index, subject=f"X[{index}]"))

    def score_samples(self, X):
        self._check(X)
        return np.array([image.mean() / 255.0 for image in X])

    def predict_maps(self, X, *, return_scores=False):
        scores = self.score_samples(X)
        maps = [image.astype(np.float32) / 255.0 for image in X]
        return (maps, scores) if return_scores else maps


def write(folder, name, level=None, content=None, shape=(4, 6)):
    path = folder / name
    if content is not None:
        path.write_bytes(content)
    else:
        Image.fromarray(np.full(shape, level, np.uint8)).save(path)
    return path


@settings(max_examples=25, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(["good", "bright", "dark", "broken", "missing", "refused"]), min_size=1, max_size=9),
    batch_size=st.integers(1, 4),
)
def test_one_result_per_path_in_order_and_errors_only_for_bad_files(tmp_path_factory, kinds, batch_size):
    folder = tmp_path_factory.mktemp("files")
    levels = {"good": 180, "bright": 250, "dark": 30, "refused": REFUSED_LEVEL}
    paths = []
    for index, kind in enumerate(kinds):
        name = f"{index}.png"
        if kind == "broken":
            paths.append(write(folder, name, content=b"\x89PNG\r\n\x1a\n broken"))
        elif kind == "missing":
            paths.append(folder / name)
        else:
            paths.append(write(folder, name, levels[kind]))
    detector = MeanDetector(batch_size)
    results = list(score_files(detector, paths))
    assert [result.path for result in results] == [str(path) for path in paths]
    for kind, result in zip(kinds, results):
        if kind in ("broken", "missing", "refused"):
            assert result.verdict == "error" and np.isnan(result.score) and np.isnan(result.decision)
            assert result.path in result.error
        else:
            score = levels[kind] / 255.0
            assert result.error is None and result.score == pytest.approx(score)
            assert result.decision == pytest.approx(score - 0.5)
            assert result.verdict == ("defective" if score < 0.5 else "good")
    assert max(detector.calls, default=0) <= batch_size


def test_readable_files_of_a_batch_are_scored_in_one_call(tmp_path):
    paths = [write(tmp_path, f"{i}.png", 100 + i) for i in range(7)]
    paths.insert(2, write(tmp_path, "bad.png", content=b"nope"))
    detector = MeanDetector(batch_size=4)
    results = list(score_files(detector, paths))
    assert detector.calls == [3, 4]  # the unreadable file is left out of the first call
    assert [r.verdict for r in results].count("error") == 1 and results[2].verdict == "error"
    assert "cannot read image file" in results[2].error and "X" not in results[2].error.replace(str(tmp_path), "")


def test_a_refused_image_costs_only_itself(tmp_path):
    paths = [write(tmp_path, "a.png", 100), write(tmp_path, "b.png", REFUSED_LEVEL), write(tmp_path, "c.png", 250)]
    detector = MeanDetector(batch_size=3)
    results = list(score_files(detector, paths))
    assert [r.verdict for r in results] == ["defective", "error", "good"]
    assert results[1].error == f"{paths[1]}: X[0] is refused"
    assert detector.calls == [3, 1, 1, 1]  # the batch, then each image alone


def test_warnings_about_an_image_name_its_file(tmp_path):
    paths = [write(tmp_path, "dim.png", 100), write(tmp_path, "bright.png", 200)]
    with pytest.warns(ImageWarning) as record:
        results = list(score_files(MeanDetector(), paths))
    assert [str(w.message) for w in record] == [f"image file '{paths[1]}' is very bright"]
    assert record[0].message.source == str(paths[1])
    assert len(results) == 2


def test_maps_come_at_each_files_displayed_size(tmp_path):
    stored = Image.fromarray(np.full((4, 6), 120, np.uint8))
    exif = stored.getexif()
    exif[274] = 6  # displayed rotated: 6 high, 4 wide
    stored.save(tmp_path / "phone.jpg", exif=exif)
    paths = [tmp_path / "phone.jpg", write(tmp_path, "flat.png", 60, shape=(3, 5))]
    results = list(score_files(MeanDetector(), paths, return_maps=True))
    assert [r.anomaly_map.shape for r in results] == [(6, 4), (3, 5)]
    assert all(r.anomaly_map is None for r in score_files(MeanDetector(), paths))


def test_results_are_named_tuples_ready_for_a_table(tmp_path):
    result = next(score_files(MeanDetector(), [write(tmp_path, "a.png", 255)]))
    assert isinstance(result, FileScore)
    assert result._asdict() == {
        "path": str(tmp_path / "a.png"), "score": 1.0, "decision": 0.5, "verdict": "good", "error": None, "anomaly_map": None,
    }


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match=r"single path.*\['a.png'\]"):
        list(score_files(MeanDetector(), "a.png"))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        list(score_files(MeanDetector(), [], batch_size=0))
    assert list(score_files(MeanDetector(), [])) == []
