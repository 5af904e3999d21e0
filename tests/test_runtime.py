"""The torch-free runtime: it imports no torch, reads and resizes images as the torch
detector does, and its command line runs where torch cannot be imported."""

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torch.nn import functional as F

from skfastflow import FastFlowDetector
from skfastflow.cli import main
from skfastflow.export import export_onnx
from skfastflow.images import ImageCollection
from skfastflow.persistence import save
from skfastflow.runtime import RuntimeDetector, _to_graph_input
from skfastflow.tiling import resize_map

REPO = Path(__file__).resolve().parents[1]
# Importing any of these fails in the "line PC" subprocesses below.
FULL_INSTALL_ONLY = ("torch", "timm", "sklearn", "scipy", "torchvision", "joblib")
BLOCK = f"import sys\nfor name in {FULL_INSTALL_ONLY!r}:\n    sys.modules[name] = None\n"


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python in which importing torch, timm, scikit-learn, ... fails."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def detector():
    X = np.random.default_rng(0).integers(80, 170, size=(8, 40, 32, 3), dtype=np.uint8)
    return FastFlowDetector(
        "test_resnet", pre_trained=False, input_size=32, flow_steps=1, max_iter=1, inference_precision="float32", random_state=0
    ).fit(X)


@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory):
    return export_onnx(detector, tmp_path_factory.mktemp("export") / "detector.onnx")


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    paths = []
    for index, (height, width) in enumerate(rng.integers(20, 90, (5, 2))):
        path = folder / f"part_{index}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_runtime_scores_files_in_a_python_without_torch(detector, exported, image_files):
    code = (
        "import json\nfrom skfastflow.runtime import RuntimeDetector\n"
        f"detector = RuntimeDetector({str(exported)!r})\n"
        f"paths = {[str(path) for path in image_files]!r}\n"
        "maps, scores = detector.predict_maps(paths, return_scores=True)\n"
        "print(json.dumps({'scores': scores.tolist(), 'shapes': [list(m.shape) for m in maps],"
        " 'labels': detector.predict(paths).tolist(), 'torch': 'torch' in sys.modules and sys.modules['torch'] is not None}))\n"
    )
    process = run_without_torch(code)
    assert process.returncode == 0, process.stderr
    result = json.loads(process.stdout)
    assert result["torch"] is False
    paths = [str(path) for path in image_files]
    np.testing.assert_allclose(result["scores"], detector.score_samples(paths), rtol=0, atol=1e-5)
    assert result["shapes"] == [list(np.asarray(Image.open(path)).shape[:2]) for path in image_files]
    assert result["labels"] == detector.predict(paths).tolist()


def test_cli_exports_then_predicts_where_torch_cannot_be_imported(detector, image_files, tmp_path, capsys):
    model = tmp_path / "model.joblib"
    save(detector, model)
    assert main(["export", str(model)]) == 0
    assert f"Exported to {tmp_path / 'model.onnx'}" in capsys.readouterr().out
    out_csv, maps = tmp_path / "scores.csv", tmp_path / "maps"
    folder = str(image_files[0].parent)  # listed, read and drawn without torch too
    argv = ["predict", str(tmp_path / "model.onnx"), folder, "--csv", str(out_csv), "--maps", str(maps), "--threads", "1"]
    process = run_without_torch(f"from skfastflow.cli import main\nsys.exit(main({argv!r}))")
    assert process.returncode == 0, process.stderr
    rows = list(csv.DictReader(out_csv.open()))
    expected = detector.score_samples([str(path) for path in image_files])
    assert [row["path"] for row in rows] == [str(path) for path in image_files]
    np.testing.assert_allclose([float(row["score"]) for row in rows], expected, rtol=0, atol=1e-5)
    assert [row["verdict"] for row in rows] == ["defective" if score < detector.offset_ else "good" for score in expected]
    assert len(process.stdout.splitlines()) == len(image_files)
    assert sorted(path.name for path in maps.iterdir()) == sorted(path.name for path in image_files)


def test_cli_fit_without_torch_says_what_to_install(tmp_path):
    process = run_without_torch(f"from skfastflow.cli import main\nsys.exit(main(['fit', {str(tmp_path)!r}]))")
    assert process.returncode == 2
    assert "needs torch, which is not installed" in process.stderr and "pip install skfastflow" in process.stderr
    assert "Traceback" not in process.stderr


@given(
    source=st.tuples(st.integers(1, 120), st.integers(1, 120), st.sampled_from([1, 3])),
    # Not width 1: torch's antialiased kernel then ignores vertical upsampling (torch 2.14),
    # and no backbone takes images one pixel wide.
    target=st.tuples(st.integers(1, 64), st.integers(2, 64)),
    seed=st.integers(0, 2**16),
)
def test_images_are_resized_as_the_torch_detector_resizes_them(source, target, seed):
    height, width, channels = source
    image = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    # mean 0 and std 1: the torch detector's batch is then the resized pixels themselves.
    expected = next(ImageCollection(image[None]).batches(1, target, (0.0,) * 3, (1.0,) * 3)).tensor[0].numpy()
    resized = _to_graph_input(image.astype(np.float32) / np.float32(255), target)
    assert resized.shape == (3, *target)
    # Within 4e-7 at common sizes; up to 3e-5 where torch's float32 filter windows round
    # differently from Pillow's float64 ones (300 -> 297 pixels, for one).
    np.testing.assert_allclose(resized, expected, rtol=0, atol=5e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_images_at_input_size_reach_the_graph_unchanged(channels):
    image = np.random.default_rng(channels).integers(0, 256, (24, 40, channels), dtype=np.uint8)
    pixels = image.astype(np.float32) / np.float32(255)
    expected = next(ImageCollection(image[None]).batches(1, (24, 40), (0.0,) * 3, (1.0,) * 3)).tensor[0].numpy()
    out = np.full((3, 24, 40), np.nan, dtype=np.float32)
    assert _to_graph_input(pixels, (24, 40), out=out) is out
    np.testing.assert_array_equal(out, np.broadcast_to(np.moveaxis(pixels, 2, 0), (3, 24, 40)))
    np.testing.assert_array_equal(out, expected)


@given(
    source=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    target=st.tuples(st.integers(1, 100), st.integers(1, 100)),
    seed=st.integers(0, 2**16),
)
def test_maps_return_to_the_image_size_as_the_torch_detector_returns_them(source, target, seed):
    anomaly_map = -np.random.default_rng(seed).random(source, dtype=np.float32)
    expected = F.interpolate(torch.from_numpy(anomaly_map)[None, None], size=target, mode="bilinear", align_corners=False)[0, 0]
    resized = resize_map(anomaly_map, target)
    assert resized.dtype == np.float32
    np.testing.assert_allclose(resized, expected.numpy(), rtol=0, atol=1e-5)  # torch finds the taps in float32


def test_runtime_refuses_files_it_cannot_use(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; export one with"):
        RuntimeDetector(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("not a graph")
    with pytest.raises(ValueError, match="Cannot read .* as an ONNX model"):
        RuntimeDetector(text)
    model = onnx.load(str(exported))
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "foreign.onnx")
    with pytest.raises(ValueError, match="not a model exported by skfastflow"):
        RuntimeDetector(tmp_path / "foreign.onnx")
    metadata = json.loads({p.key: p.value for p in onnx.load(str(exported)).metadata_props}["skfastflow"])
    onnx.helper.set_model_props(model, {"skfastflow": json.dumps({**metadata, "format": 99, "skfastflow_version": "7.0.0"})})
    onnx.save(model, tmp_path / "future.onnx")
    with pytest.raises(ValueError, match=r"newer .* `pip install skfastflow>=7\.0\.0`"):
        RuntimeDetector(tmp_path / "future.onnx")
    with pytest.raises(ValueError, match="batch_size must be a positive whole number"):
        RuntimeDetector(exported, batch_size=0)


def test_p_values_need_calibration_scores(detector, tmp_path):
    uncalibrated = copy.deepcopy(detector)
    del uncalibrated.calibration_scores_  # as pickled before detectors kept them
    runtime = RuntimeDetector(export_onnx(uncalibrated, tmp_path / "uncalibrated.onnx"))
    assert runtime.calibration_scores_ is None
    with pytest.raises(ValueError, match="holds no calibration scores .* export the detector again"):
        runtime.p_values(np.zeros((1, 32, 32, 3), np.uint8))
