"""FastFlow image anomaly detection as a scikit-learn estimator.

The estimator is :class:`FastFlowDetector`; the torch layer (:class:`FastflowModel`,
:class:`FastflowLoss`, :class:`AnomalyMapGenerator`) keeps anomalib's names.

These names are imported on first use, so that ``import skfastflow`` imports neither torch
nor scikit-learn: the runtime detector (:mod:`skfastflow.runtime`) runs on a line PC that has
neither installed.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_LAZY_NAMES = {
    "AnomalyMapGenerator": ".nn",
    "FastFlowDetector": ".detector",
    "FastflowLoss": ".nn",
    "FastflowModel": ".nn",
}

__all__ = ["AnomalyMapGenerator", "FastFlowDetector", "FastflowLoss", "FastflowModel", "__version__"]


def __getattr__(name: str):
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY_NAMES[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))
