"""Which label-free thresholds could meet the verdict targets at all: from the scores ``verdicts.py --save-scores`` kept.

Usage::

    python benchmarks/threshold_windows.py SCORES_DIR/*.npz

For each saved fit (the default image score, top 1 %), every threshold between the lowest
calibration score and their median is tried on the test scores, and those that meet both
targets of the verdicts (at most 10 % of the good test images flagged, recall at least 0.85
of the yardstick, the best recall at 5 % false alarms on the test images themselves) form
the fit's *window*. It is printed as ``z = (threshold - median) / MAD`` of the calibration
scores (MAD: 1.4826 median absolute deviations), with the number of calibration images it
flags, beside two label-free rules:

- ``robust_offset``: the default (``contamination="auto"``), whose cap flags at most
  ``max(1, floor(0.05 n))`` of the ``n`` calibration images;
- a conformal cap: the same, capped instead at the split-conformal threshold for 5 %
  (``conformal_offset(scores, 0.05)``, flagging at most ``floor(0.05 (n + 1)) - 1`` of them,
  at least the lowest one), which promises at most 5 % false alarms on new good images when
  they are exchangeable with the calibration images.

A window no wider than the gap between two calibration scores is one no rule that sees only
the calibration scores can aim at; the rules' own columns say where they land.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from skfastflow.metrics import recall_at_false_alarm_rates
from skfastflow.thresholds import DEFAULT_IMAGE_SCORE, conformal_offset, robust_offset

MOST_FALSE_ALARMS = 0.10
LEAST_RECALL_RATIO = 0.85
YARDSTICK_FALSE_ALARMS = 0.05


def conformal_capped_offset(calibration: np.ndarray) -> float:
    """``robust_offset`` of sorted ``calibration``, capped at the conformal 5 % threshold (never below the second-lowest score)."""
    return min(robust_offset(calibration), max(conformal_offset(calibration, 0.05), float(calibration[1])))


def verdict(y_test, test, offset, yardstick):
    """``(share of good test images flagged, recall / yardstick)`` at ``offset``."""
    flagged = test < offset
    return flagged[y_test == 1].mean(), flagged[y_test == -1].mean() / yardstick


def meets_targets(false_alarms, recall_ratio) -> bool:
    return false_alarms <= MOST_FALSE_ALARMS and recall_ratio >= LEAST_RECALL_RATIO


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scores", nargs="+", type=Path, help="files written by benchmarks/verdicts.py --save-scores")
    args = parser.parse_args(argv)
    key = str(DEFAULT_IMAGE_SCORE)
    print("| fit | calibration images | window: z (calibration images flagged) | robust_offset: z, false alarms, recall / yardstick | conformal cap: z, false alarms, recall / yardstick |")
    print("|---|---:|---|---|---|")
    for path in args.scores:
        saved = np.load(path)
        y_test, calibration, test = saved["y_test"], np.sort(saved[f"calibration_{key}"]), saved[f"test_{key}"]
        median = np.median(calibration)
        mad = 1.4826 * np.median(np.abs(calibration - median))
        yardstick = recall_at_false_alarm_rates(y_test, test, [YARDSTICK_FALSE_ALARMS])[0]
        grid = np.linspace(calibration[0], median, 20001)
        feasible = [offset for offset in grid if meets_targets(*verdict(y_test, test, offset, yardstick))]
        if feasible:
            low, high = min(feasible), max(feasible)
            window = (
                f"{(low - median) / mad:.2f} to {(high - median) / mad:.2f} ({np.sum(calibration < low)} to "
                f"{np.sum(calibration < high)})"
            )
        else:
            window = "none"
        cells = []
        for offset in (robust_offset(calibration), conformal_capped_offset(calibration)):
            false_alarms, ratio = verdict(y_test, test, offset, yardstick)
            cells.append(f"{(offset - median) / mad:.2f}, {false_alarms:.3f}, {ratio:.2f}")
        print(f"| {path.stem} | {calibration.size} | {window} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
