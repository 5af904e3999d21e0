"""Raw against standardised anomaly maps (``standardize_maps``), from the same fit: image AUROC, pixel AUROC, AUPRO.

Usage::

    python benchmarks/map_standardization.py DATA_DIR [DATA_DIR ...] [--train 100] [--epochs 10] [--seeds 0] [--configs resize,aspect,tiles]
        [--save-maps DIR | --load-maps DIR]

Per folder, configuration and seed: one fit with ``standardize_maps=True`` (the default) on up
to ``--train`` good training images (evenly spaced over ``train/good``), ``--epochs`` epochs,
``tf_efficientnet_lite0`` with the offline ImageNet weights, every other parameter at its
default; ``aspect`` is ``input_size=aspect_input_size(median training image size)``
(``aspect:N``: with ``short_side=N``, e.g. near native resolution),
``tiles`` is ``tile_size=256`` (native resolution) with one flow shared by every tile
position, ``positions`` the same with one flow per position (``tile_flows``); ``tiles:N`` and
``positions:N`` cut N-pixel tiles instead, each resized to the 256-pixel input (N below 256
magnifies the image, for marks only a few pixels wide). All of ``test/`` is scored once;
``predict_maps`` returns the raw maps, and the standardised ones are computed from them
through the fitted ``map_standardizer_`` (the statistics at each map's size), so both
columns come from the same flows; with per-position tiles it returns the standardised maps
(``map_kind_``), and the raw ones are computed back from them (``mean + scale * map``). Image AUROC is taken from the top 1 % of
each map at the image's own size (:func:`skfastflow.tiling.stitched_scores`) for both, and
for the standardised maps under every rule of ``IMAGE_SCORE_RULES`` (last column); pixel
AUROC and AUPRO at each image's own resolution (sets with masks only). The verdict's view of
the standardised image scores (top 1 %): recall at 0 % and 5 % false alarms on the test
images themselves (``recall_at_false_alarm_rates``, a yardstick, not a threshold).
``--save-maps DIR`` keeps every test map, raw and standardised (float16,
``DIR/<set>_<config>_<seed>.npz``), with the labels; ``--load-maps DIR`` prints the table
again from such files without fitting (fit seconds then "-"), e.g. after adding a column.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from skfastflow import FastFlowDetector
from skfastflow.cli import offline_pretrained_backbone
from skfastflow.datasets import load_mvtec
from skfastflow.files import read_image_size, read_mask
from skfastflow.metrics import aupro_score, pixel_roc_auc_score, recall_at_false_alarm_rates
from skfastflow.thresholds import IMAGE_SCORE_RULES
from skfastflow.tiling import aspect_input_size, stitched_scores

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdicts import rule_name  # noqa: E402  (benchmarks/ is not a package)

RULE = 0.01
YARDSTICK_FALSE_ALARMS = (0.0, 0.05)


def metrics(y_test, masks, maps) -> dict:
    """Image AUROC (top 1 % of each map, and per rule of ``IMAGE_SCORE_RULES``), and pixel AUROC and AUPRO when every defect has a mask."""
    scores = [stitched_scores(m, IMAGE_SCORE_RULES) for m in maps]
    by_rule = {rule: float(roc_auc_score(y_test == -1, -np.array([s[rule] for s in scores]))) for rule in IMAGE_SCORE_RULES}
    row = {"image_auroc": by_rule[RULE], "image_auroc_by_rule": by_rule}
    row["recall"] = recall_at_false_alarm_rates(y_test, [s[RULE] for s in scores], YARDSTICK_FALSE_ALARMS)
    if masks is not None:
        row["pixel_auroc"] = float(pixel_roc_auc_score(masks, maps))
        row["aupro"] = float(aupro_score(masks, maps))
    return row


def maps_file(folder: Path, root: Path, config: str, seed: int) -> Path:
    return folder / f"{root.name}_{config.replace(':', '-')}_{seed}.npz"


def fit_and_score(config: str, seed: int, epochs: int, train, X_test) -> tuple:
    """``(raw maps, standardised maps, input size, fit seconds)`` of one fit of ``config``."""
    backbone, weights = offline_pretrained_backbone()
    # calibration_cv=None: the maps come from the fitted flows, which cross-fitting (after them,
    # for offset_ only) leaves as they are; skipping it saves up to four more trainings per fit.
    params = dict(weights=weights, max_iter=epochs, random_state=seed, calibration_cv=None)
    kind, _, size = config.partition(":")  # "aspect:N", "tiles:N", "positions:N": N sets the size
    if kind == "aspect":  # "aspect" (short side 256) or "aspect:N" (short side N)
        sizes = np.array([read_image_size(item) for item in train])
        params["input_size"] = aspect_input_size(tuple(int(v) for v in np.median(sizes, axis=0)), short_side=int(size or 256))
    elif kind in ("tiles", "positions"):  # one flow for every tile position, or one per position
        # N-pixel tiles, each resized to the 256-pixel input (N < 256 magnifies)
        params.update(tile_size=int(size or 256), tile_flows="shared" if kind == "tiles" else "per_position")
    started = time.perf_counter()
    detector = FastFlowDetector(backbone, **params).fit(train)
    fit_seconds = time.perf_counter() - started
    standardizer = detector.map_standardizer_
    standardised, raw = [], []
    for start in range(0, len(X_test), 16):  # bounded memory: maps of large images are large
        for anomaly_map in detector.predict_maps(X_test[start : start + 16]):
            if detector.map_kind_ == "standardized":
                mean, scale = standardizer.at_size(anomaly_map.shape)
                raw.append(mean + scale * anomaly_map)
                standardised.append(anomaly_map)
            else:
                raw.append(anomaly_map)
                standardised.append(standardizer(anomaly_map))
    return raw, standardised, detector.model_.input_size, fit_seconds


def run(root: Path, config: str, seed: int, n_train: int, epochs: int, save_maps: Path | None = None, load_maps: Path | None = None) -> dict:
    data = load_mvtec(root, lazy=True)
    train = list(data.X_train)
    if n_train < len(train):
        train = [train[i] for i in np.linspace(0, len(train) - 1, n_train).round().astype(int)]
    masks = None
    if all(path is not None for path, label in zip(data.masks_test, data.y_test) if label == -1):
        masks = [np.zeros(read_image_size(image), bool) if path is None else read_mask(path) for image, path in zip(data.X_test, data.masks_test)]
    if load_maps is not None:
        saved = np.load(maps_file(load_maps, root, config, seed))
        raw, standardised = ([saved[f"{kind}_{i}"].astype(np.float32) for i in range(len(data.y_test))] for kind in ("raw", "standardised"))
        input_size, fit_seconds = "(saved maps)", float("nan")
    else:
        raw, standardised, input_size, fit_seconds = fit_and_score(config, seed, epochs, train, list(data.X_test))
    if save_maps is not None:
        save_maps.mkdir(parents=True, exist_ok=True)
        arrays = {f"raw_{i}": m.astype(np.float16) for i, m in enumerate(raw)}
        arrays.update({f"standardised_{i}": m.astype(np.float16) for i, m in enumerate(standardised)})
        np.savez(maps_file(save_maps, root, config, seed), y_test=data.y_test, **arrays)
    return {
        "set": root.name, "config": config, "input_size": input_size, "seed": seed, "n_train": len(train), "fit_s": fit_seconds,
        "raw": metrics(data.y_test, masks, raw), "standardised": metrics(data.y_test, masks, standardised),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dirs", nargs="+", type=Path)
    parser.add_argument("--train", type=int, default=100, help="most good images trained on (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default: %(default)s)")
    parser.add_argument("--seeds", default="0", help="comma-separated random seeds (default: %(default)s)")
    parser.add_argument("--configs", default="resize", help="comma-separated: resize, aspect, aspect:N (short side N), tiles, positions, tiles:N, positions:N (N-pixel tiles) (default: %(default)s)")
    maps = parser.add_mutually_exclusive_group()
    maps.add_argument("--save-maps", type=Path, default=None, help="folder to keep every test map in, raw and standardised (float16)")
    maps.add_argument("--load-maps", type=Path, default=None, help="folder of --save-maps files: the table from them, without fitting")
    args = parser.parse_args(argv)
    rules = " / ".join(map(rule_name, IMAGE_SCORE_RULES))
    print(
        f"| set | configuration | seed | fit s | image AUROC raw / std. | pixel AUROC raw / std. | AUPRO raw / std. | std. image AUROC {rules} "
        "| std. recall at 0 / 5 % false alarms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for root in args.data_dirs:
        for config in args.configs.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                row = run(root, config, seed, args.train, args.epochs, args.save_maps, args.load_maps)
                raw, standardised = row["raw"], row["standardised"]
                cells = [f"{raw[key]:.3f} / {standardised[key]:.3f}" if key in raw else "- / -" for key in ("image_auroc", "pixel_auroc", "aupro")]
                cells.append(" / ".join(f"{value:.3f}" for value in standardised["image_auroc_by_rule"].values()))
                cells.append(" / ".join(f"{value:.3f}" for value in standardised["recall"]))
                fit = "-" if np.isnan(row["fit_s"]) else f"{row['fit_s']:.0f}"
                print(f"| {row['set']} ({row['n_train']}) | {config} {row['input_size']} | {seed} | {fit} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
