"""FastFlow image anomaly detection as a scikit-learn estimator.

The estimator is :class:`FastFlowDetector`; the torch layer (:class:`FastflowModel`,
:class:`FastflowLoss`, :class:`AnomalyMapGenerator`) keeps anomalib's names.
"""

__version__ = "0.1.0"

from .detector import FastFlowDetector  # noqa: E402  (needs __version__ for pickles)
from .nn import AnomalyMapGenerator, FastflowLoss, FastflowModel  # noqa: E402

__all__ = ["AnomalyMapGenerator", "FastFlowDetector", "FastflowLoss", "FastflowModel", "__version__"]
