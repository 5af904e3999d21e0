"""The verdict methods every skfastflow detector shares, from its ``score_samples`` and ``offset_``.

scikit-learn's outlier-detector conventions (as :class:`~sklearn.ensemble.IsolationForest`):
``decision_function = score_samples - offset_``, negative for outliers; ``predict`` is -1
where it is negative, +1 elsewhere. One home for both, shared by the torch detector
(:class:`~skfastflow.FastFlowDetector`) and the torch-free runtime detector
(:class:`~skfastflow.runtime.RuntimeDetector`), which imports nothing but numpy from here.
"""

from __future__ import annotations

import numpy as np


class VerdictMixin:
    """``decision_function`` and ``predict`` of a detector with ``score_samples(X)`` and ``offset_``."""

    def decision_function(self, X) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers, positive for inliers.

        Parameters
        ----------
        X : array-like or list
            Images, as for ``score_samples``.

        Returns
        -------
        decision : ndarray of shape (n_samples,), dtype float64
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """Label each image: +1 good (inlier), -1 defective (outlier, ``decision_function < 0``).

        Parameters
        ----------
        X : array-like or list
            Images, as for ``score_samples``.

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype int
        """
        return np.where(self.decision_function(X) < 0, -1, 1)
