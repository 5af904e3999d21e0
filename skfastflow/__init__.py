"""FastFlow image anomaly detection as a scikit-learn estimator.

The estimator is :class:`FastFlowDetector`; the torch layer (:class:`FastflowModel`,
:class:`FastflowLoss`, :class:`AnomalyMapGenerator`) keeps anomalib's names.

The public names load torch on first use, not on ``import skfastflow``, so that the
torch-free modules (:mod:`skfastflow.files`, :mod:`skfastflow.batch_scoring`) can be used
where torch is not installed.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the submodule that defines it; imported on first access (PEP 562).
_LAZY_NAMES = {
    "FastFlowDetector": "detector",
    "AnomalyMapGenerator": "nn",
    "FastflowLoss": "nn",
    "FastflowModel": "nn",
}

__all__ = ["AnomalyMapGenerator", "FastFlowDetector", "FastflowLoss", "FastflowModel", "__version__"]


def __getattr__(name):
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
        globals()[name] = value  # later accesses skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY_NAMES])
