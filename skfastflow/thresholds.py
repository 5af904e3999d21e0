"""From image scores to a verdict: thresholds, conformal p-values, and the choice of image-score rule.

numpy only (no torch), so that the torch-free runtime detector applies the same rules.

Scores follow scikit-learn's sign: higher = more normal (:meth:`FastFlowDetector.score_samples`).
An image is flagged (``predict == -1``) when its score lies strictly below the threshold
``offset_``; a score equal to ``offset_`` is an inlier, as in scikit-learn.

The *calibration scores* are the scores of good images the flows were not trained on (the
held-out images of ``fit``, and with cross-fitting the out-of-fold scores of the training
images: ``FastFlowDetector(calibration_cv=...)``). Three ways turn them into ``offset_``:

- :func:`robust_offset`, the label-free default (``contamination="auto"``): a normal tail
  from the median and the median absolute deviation, so that one atypical good image
  among them cannot drag the threshold down;
- :func:`quantile_offset`, ``contamination=c``: the ``c`` quantile, scikit-learn's meaning;
- :func:`labelled_offset`, when ``fit`` is given a few defective images: the threshold that
  separates them from the good ones best (maximum F1), or reaches a stated recall.

:func:`conformal_p_values` gives each score its split-conformal p-value against the
calibration scores (Bates, Candès, Lei, Romano and Sesia 2023, "Testing for outliers with
conformal p-values", Ann. Statist. 51(1)), and :func:`conformal_offset` the threshold
whose false-alarm rate is at most a chosen level for exchangeable good images.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

#: The image-score rules among which ``image_score="auto"`` chooses: the map's maximum
#: (the FastFlow paper's) and the mean of its highest 0.1 %, 1 % and 5 % of pixels.
IMAGE_SCORE_RULES = ("max", 0.001, 0.01, 0.05)

#: The rule ``image_score="auto"`` takes when ``fit`` has no labelled defects
#: (``docs/quality.md``, *Image score*).
DEFAULT_IMAGE_SCORE = 0.01

#: The share of good images that ``contamination="auto"`` aims to flag.
AUTO_FALSE_ALARM_RATE = 0.02

#: The largest share of the calibration images themselves that :func:`robust_offset` flags
#: (at least one image): the cap on its normal tail.
CALIBRATION_FLAG_CAP = 0.05

#: ``calibration_cv="auto"`` cross-fits when fewer good images than this are held out. The
#: threshold aims at 2 % of good images and is capped at the calibration scores' 5 % order
#: statistic: below 100 scores both rest on the lowest one to five images, a guess. Measured
#: on magnetic_tile (40 held out): 12.5 % false alarms at one seed from the held-out scores,
#: 5 to 6.2 % at three seeds cross-fitted (``docs/quality.md``, *Verdicts*).
AUTO_CROSS_FIT_BELOW = 100

#: Folds of ``calibration_cv="auto"`` (scikit-learn's usual ``cv=5``).
AUTO_CALIBRATION_FOLDS = 5

# 1.4826 * MAD estimates the standard deviation of a normal sample (1 / Phi^-1(3/4)).
_MAD_TO_STD = 1.482602218505602


def _check_scores(scores, name: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of image scores, got shape {scores.shape}.")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} holds NaN or infinite scores; score the images with a working detector.")
    return scores


def _check_rate(rate, name: str) -> float:
    if not isinstance(rate, Real) or not 0.0 < rate < 1.0:
        raise ValueError(f"{name}={rate!r} must be a number in (0, 1).")
    return float(rate)


def _normal_upper_quantile(rate: float) -> float:
    """``z`` with ``P(Z > z) = rate`` for a standard normal ``Z``."""
    from scipy.special import ndtri  # scipy comes with scikit-learn

    return float(-ndtri(rate))


def robust_offset(calibration_scores, false_alarm_rate: float = AUTO_FALSE_ALARM_RATE) -> float:
    """Label-free threshold: ``median - z * 1.4826 * MAD`` of the calibration scores, capped at their 5 % order statistic.

    ``z`` is the normal quantile with upper tail ``false_alarm_rate`` (2.054 for 2 %, the default). The
    median and the median absolute deviation (MAD) ignore up to half of the scores, so an
    atypical good image among them moves the threshold by at most one rank, unlike the
    minimum or the standard deviation.

    Good images' scores are bounded and often skewed, or form a second, lower mode (on the
    glass set a sixth of the good images do): a normal tail fitted to the bulk would flag
    that whole mode. So the threshold never exceeds the ``k``-th lowest score with
    ``k = max(2, floor(0.05 n) + 1)`` (:data:`CALIBRATION_FLAG_CAP`): it flags at most 5 % of
    the calibration images, and at least the lowest one may be flagged, so a single atypical
    image still cannot drag it down. With fewer than 3 scores, whose spread cannot be
    estimated, the threshold is their minimum. Measured on the four real sets:
    ``docs/quality.md``, *Verdicts*.

    Parameters
    ----------
    calibration_scores : array-like of shape (n,)
        Scores of good images the flows were not trained on (higher = more normal).
    false_alarm_rate : float in (0, 1), default=0.02
        Share of good images meant to be flagged if their scores were normal.

    Returns
    -------
    offset : float
        Flag images whose score is strictly below it.

    Raises
    ------
    ValueError
        If the scores are empty or not finite, or the rate is outside (0, 1).

    Examples
    --------
    >>> scores = [0.5] * 19 + [0.3]  # one atypical good image
    >>> round(robust_offset(scores), 6)  # no spread among the others: their common score
    0.5
    """
    scores = _check_scores(calibration_scores, "calibration_scores")
    rate = _check_rate(false_alarm_rate, "false_alarm_rate")
    if scores.size < 3:
        return float(scores.min())
    median = float(np.median(scores))
    spread = _MAD_TO_STD * float(np.median(np.abs(scores - median)))
    cap = float(np.sort(scores)[max(1, math.floor(CALIBRATION_FLAG_CAP * scores.size))])
    return min(median - _normal_upper_quantile(rate) * spread, cap)


def quantile_offset(calibration_scores, contamination: float) -> float:
    """scikit-learn's threshold: the ``contamination`` quantile of the calibration scores.

    As :class:`~sklearn.ensemble.IsolationForest` sets ``offset_`` (linear interpolation,
    ``numpy.percentile``'s default).

    Parameters
    ----------
    calibration_scores : array-like of shape (n,)
    contamination : float in (0, 0.5]

    Returns
    -------
    offset : float
    """
    scores = _check_scores(calibration_scores, "calibration_scores")
    return float(np.percentile(scores, 100.0 * contamination))


def conformal_p_values(scores, calibration_scores) -> np.ndarray:
    """Split-conformal p-values of ``scores`` against good ``calibration_scores``.

    ``p(s) = (1 + #{i : c_i <= s}) / (n + 1)``, with lower scores more abnormal (Bates et al.
    2023, eq. (2), with their conformity score taken as our score). When the calibration
    images and a new good image are exchangeable (same source, the flows trained on
    neither), ``P(p <= alpha) <= alpha`` for every ``alpha``: flagging the images with
    ``p <= alpha`` flags at most a share ``alpha`` of good images, on average over
    calibration sets. Small p-values mean "unlike every good image seen".

    Parameters
    ----------
    scores : array-like of shape (m,)
        Image scores to test (higher = more normal).
    calibration_scores : array-like of shape (n,)
        Scores of held-out good images.

    Returns
    -------
    p_values : ndarray of shape (m,), dtype float64
        Values in ``{1/(n+1), 2/(n+1), ..., 1}``.

    Examples
    --------
    >>> conformal_p_values([0.1, 0.45, 0.9], [0.4, 0.5, 0.6, 0.7])
    array([0.2, 0.4, 1. ])
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    calibration = np.sort(_check_scores(calibration_scores, "calibration_scores"))
    at_or_below = np.searchsorted(calibration, scores, side="right")
    return (1.0 + at_or_below) / (calibration.size + 1.0)


def conformal_offset(calibration_scores, false_alarm_rate: float) -> float:
    """Threshold that flags exactly the images with conformal p-value ``<= false_alarm_rate``.

    The ``k``-th lowest calibration score, ``k = floor(false_alarm_rate * (n + 1))``; when
    ``k = 0`` (fewer than ``1 / false_alarm_rate - 1`` calibration scores) no threshold
    keeps that promise except one that flags nothing, and the result is ``-inf``.

    Parameters
    ----------
    calibration_scores : array-like of shape (n,)
    false_alarm_rate : float in (0, 1)

    Returns
    -------
    offset : float
        ``predict`` flags scores strictly below it.

    Examples
    --------
    >>> conformal_offset(np.arange(1, 20) / 20, 0.1)  # 19 scores: flag below the 2nd lowest
    0.1
    """
    calibration = np.sort(_check_scores(calibration_scores, "calibration_scores"))
    rate = _check_rate(false_alarm_rate, "false_alarm_rate")
    k = math.floor(rate * (calibration.size + 1) + 1e-9)
    return float(calibration[k - 1]) if k >= 1 else -math.inf


def labelled_offset(good_scores, defect_scores, *, target_recall: float | None = None) -> float:
    """Threshold placed with a few labelled defects (never trained on).

    With ``target_recall=None`` the threshold maximises the F1 score of flagging defects
    (anomalib's adaptive threshold; ties broken towards fewer flagged good images), but is
    never lower than the label-free :func:`robust_offset` of the good scores: labelled
    defects only ever make the threshold catch more. (With 5 labelled defects against 59
    held-out good images, F1 alone placed pitting's threshold where it passed more defects
    than the label-free one: recall 0.58 against 0.72; ``docs/quality.md``, *Verdicts*.)
    With a ``target_recall`` it is the highest threshold that flags at least that share of
    the labelled defects. The threshold sits halfway between the two scores it separates,
    so that neither image lies on it.

    Parameters
    ----------
    good_scores : array-like of shape (n_good,)
        Scores of held-out good images.
    defect_scores : array-like of shape (n_defects,)
        Scores of labelled defective images.
    target_recall : float in (0, 1] or None, default=None

    Returns
    -------
    offset : float

    Examples
    --------
    >>> labelled_offset([0.5, 0.6, 0.7], [0.1, 0.2, 0.55])  # all 3 defects and 1 false alarm: F1 6/7
    0.575
    >>> labelled_offset([0.5, 0.6, 0.7], [0.1, 0.2, 0.55], target_recall=0.5)  # 2 of 3 defects
    0.35
    """
    good = _check_scores(good_scores, "good_scores")
    defects = _check_scores(defect_scores, "defect_scores")
    candidates = np.unique(np.concatenate([good, defects]))
    # Thresholds halfway between consecutive distinct scores, plus one above them all.
    thresholds = np.append((candidates[:-1] + candidates[1:]) / 2.0, candidates[-1] + 1.0)
    caught = np.searchsorted(np.sort(defects), thresholds, side="left")  # defects strictly below
    false_alarms = np.searchsorted(np.sort(good), thresholds, side="left")
    if target_recall is not None:
        if not isinstance(target_recall, Real) or not 0.0 < target_recall <= 1.0:
            raise ValueError(f"target_recall={target_recall!r} must be a number in (0, 1].")
        enough = np.flatnonzero(caught >= math.ceil(target_recall * defects.size - 1e-9))
        return float(thresholds[enough[0]])
    f1 = 2.0 * caught / (caught + false_alarms + defects.size)
    best = np.flatnonzero(f1 == f1.max())
    return max(float(thresholds[best[0]]), robust_offset(good))


def choose_image_score(good_scores_by_rule: dict, defect_scores_by_rule: dict):
    """The rule whose scores separate labelled defects from good images best (AUROC).

    Ties go to the rule listed first in :data:`IMAGE_SCORE_RULES` order of the dicts'
    keys, so that a few labelled defects that every rule separates perfectly keep the
    first (default-ordered) rule.

    Parameters
    ----------
    good_scores_by_rule, defect_scores_by_rule : dict
        ``{rule: scores}`` for the same rules.

    Returns
    -------
    rule : "max" or float
    """
    from sklearn.metrics import roc_auc_score

    best_rule, best_auc = None, -1.0
    for rule, good in good_scores_by_rule.items():
        defects = defect_scores_by_rule[rule]
        labels = np.r_[np.zeros(len(good)), np.ones(len(defects))]
        auc = roc_auc_score(labels, -np.r_[good, defects])
        if auc > best_auc + 1e-12:
            best_rule, best_auc = rule, auc
    return best_rule
