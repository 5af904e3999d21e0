"""The torch layer of skfastflow: knows nothing of scikit-learn.

Names follow anomalib's FastFlow so that its users feel at home.
"""

from .anomaly_map import AnomalyMapGenerator
from .backbone import FeatureExtractor, create_timm_model
from .coupling import AllInOneBlock, FastFlowBlock
from .loss import FastflowLoss
from .model import FastflowModel

__all__ = [
    "AllInOneBlock",
    "AnomalyMapGenerator",
    "FastFlowBlock",
    "FastflowLoss",
    "FastflowModel",
    "FeatureExtractor",
    "create_timm_model",
]
