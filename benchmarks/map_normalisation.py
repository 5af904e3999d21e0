"""Image AUROC with anomaly maps normalised per pixel by good images' maps: a measurement, not a feature.

Usage::

    python benchmarks/map_normalisation.py DATA_DIR [--train 100] [--norm 60] [--configs resize,tiles]

FastFlow's map is the per-pixel likelihood; where good images' maps run hot as a matter of
course (a rim, an edge of the fixture, a tile border), the image score (mean of the top 1 %
of the map) picks that up in every image. Here: one fit on ``--train`` good training images
(evenly spaced; ``max_iter=10``, held-out calibration only), the maps of ``--norm`` other good
training images give a per-pixel mean and standard deviation, and each test image's map is
scored raw, centred (minus the mean) and standardised (``(map - mean) / (std + median(std))``,
the median keeping flat pixels from dominating), each by its top 1 % and its maximum. Maps of
images of several sizes are compared at 256x256 (``skfastflow.runtime.resize_map``).
``tf_efficientnet_lite0`` with the offline ImageNet weights; ``tiles`` is ``tile_size=256``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from skfastflow import FastFlowDetector
from skfastflow.cli import offline_pretrained_backbone
from skfastflow.datasets import load_mvtec
from skfastflow.runtime import resize_map
from skfastflow.tiling import stitched_scores

COMMON_SIZE = (256, 256)


def image_auroc(defective: np.ndarray, maps, rule) -> float:
    """Image AUROC of the maps' image scores under ``rule`` (:func:`skfastflow.tiling.stitched_scores`)."""
    return roc_auc_score(defective, [-stitched_scores(m, (rule,))[rule] for m in maps])


def maps_of(detector, images) -> np.ndarray:
    maps = []
    for start in range(0, len(images), 16):  # bounded memory
        maps.extend(np.asarray(m, dtype=np.float32) for m in detector.predict_maps(images[start : start + 16]))
    if len({m.shape for m in maps}) > 1:
        maps = [resize_map(m, COMMON_SIZE) for m in maps]
    return np.stack(maps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--train", type=int, default=100, help="good images trained on (default: %(default)s)")
    parser.add_argument("--norm", type=int, default=60, help="other good images whose maps give the statistics (default: %(default)s)")
    parser.add_argument("--configs", default="resize", help="comma-separated: resize, tiles (default: %(default)s)")
    args = parser.parse_args(argv)
    data = load_mvtec(args.data_dir, lazy=True)
    train_all = list(data.X_train)
    if args.train + args.norm > len(train_all):
        parser.error(f"{args.data_dir} has {len(train_all)} good training images, fewer than --train + --norm")
    trained = np.linspace(0, len(train_all) - 1, args.train).round().astype(int)
    others = np.setdiff1d(np.arange(len(train_all)), trained)
    normalising = others[np.linspace(0, len(others) - 1, args.norm).round().astype(int)]
    backbone, weights = offline_pretrained_backbone()
    print("| set | configuration | fit s | top 1 %: raw / centred / standardised | max: raw / standardised |")
    print("|---|---|---:|---|---|")
    for config in args.configs.split(","):
        params = dict(backbone=backbone, weights=weights, max_iter=10, calibration_cv=None, random_state=0)
        if config == "tiles":
            params["tile_size"] = 256
        started = time.perf_counter()
        detector = FastFlowDetector(**params).fit([train_all[i] for i in trained])
        fit_seconds = time.perf_counter() - started
        good = maps_of(detector, [train_all[i] for i in normalising])
        mean, std = good.mean(axis=0), good.std(axis=0)
        std = std + np.median(std)
        test = maps_of(detector, list(data.X_test))
        defective = data.y_test == -1
        standardised_maps = [(m - mean) / std for m in test]
        raw, centred, standardised = (image_auroc(defective, maps, 0.01) for maps in (test, [m - mean for m in test], standardised_maps))
        max_raw, max_standardised = (image_auroc(defective, maps, "max") for maps in (test, standardised_maps))
        print(
            f"| {args.data_dir.rstrip('/').split('/')[-1]} | {config} | {fit_seconds:.0f} | {raw:.3f} / {centred:.3f} / {standardised:.3f} | "
            f"{max_raw:.3f} / {max_standardised:.3f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
