"""FastFlow image anomaly detection as a scikit-learn estimator."""

__version__ = "0.1.0"
