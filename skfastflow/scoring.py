"""Pixel-level scorers for model selection, built with scikit-learn's scorer API.

Image-level model selection needs nothing from this module: with labels ``y`` (1 good,
-1 defective), scikit-learn's ``scoring="roc_auc"`` scores :meth:`decision_function`
(higher = more normal, so the label 1 is the positive class) and is the image AUROC. To
select by how well the detector *localises* defects, pass pixel masks as ``y`` and one of
these scorers as ``scoring``:

- :data:`pixel_roc_auc_scorer`: :func:`~skfastflow.metrics.pixel_roc_auc_score` of
  :meth:`~skfastflow.FastFlowDetector.predict_maps` (every defect pixel weighs the same);
- :data:`pixel_aupro_scorer`: :func:`~skfastflow.metrics.aupro_score` (every defect region
  weighs the same, up to a false positive rate of 0.3), MVTec AD's localisation metric.

Masks are ``(N, H, W)`` arrays or lists of 2-D arrays of each image's own size, 1 (or True)
on defect pixels. The detector's ``fit`` accepts the same masks as ``y`` and trains on the
images whose mask is empty, so ``GridSearchCV(detector, grid, scoring=pixel_roc_auc_scorer)
.fit(X, masks)`` needs nothing else. Every validation fold must hold a defect pixel and a
defect-free one.

The scorers call ``predict_maps`` of the estimator they are given, so they apply to a
:class:`FastFlowDetector` itself, not to a :class:`~sklearn.pipeline.Pipeline` (whose
transformers may crop or resize the images away from their masks).

Examples
--------
>>> import numpy as np
>>> from sklearn.model_selection import GridSearchCV, KFold
>>> from skfastflow import FastFlowDetector
>>> from skfastflow.datasets import make_defect_images
>>> from skfastflow.scoring import pixel_roc_auc_scorer
>>> data = make_defect_images(24, image_size=32, defect_fraction=0.5, random_state=0)
>>> search = GridSearchCV(
...     FastFlowDetector("test_resnet", pre_trained=False, input_size=32, flow_steps=1,
...                      max_iter=1, random_state=0),
...     {"hidden_ratio": [0.5, 1.0]}, scoring=pixel_roc_auc_scorer,
...     cv=KFold(2, shuffle=True, random_state=0),
... ).fit(data.images, data.masks)
>>> round(float(search.best_score_), 2)  # pixel AUROC of the better setting, held out
0.99
"""

from __future__ import annotations

from sklearn.metrics import make_scorer

from .metrics import aupro_score, pixel_roc_auc_score

# A list, not a string: scikit-learn's string options name only its own response methods,
# while a list names methods in order of preference, and predict_maps is the only one here.
_MAPS = ["predict_maps"]

#: Pixel AUROC of ``predict_maps`` against pixel masks ``y``; higher is better.
pixel_roc_auc_scorer = make_scorer(pixel_roc_auc_score, response_method=_MAPS)

#: Area under the per-region-overlap curve up to FPR 0.3 of ``predict_maps``; higher is better.
pixel_aupro_scorer = make_scorer(aupro_score, response_method=_MAPS)
