"""Batch-scoring throughput on a dask cluster against the plain command line, and peak memory.

Scores the same few hundred image files three ways, with the same model file:

- ``plain CLI``: ``skfastflow predict MODEL FOLDER --csv FILE`` in a subprocess, torch with
  its default thread count (one per core);
- ``dask, 1 worker`` and ``dask, 2 workers``: :func:`skfastflow.parallel.score_files_on_cluster`
  on ``connect("local:N")``, N spawned worker processes of one thread each (one torch
  thread per task), the results written to a CSV file in input order as the CLI does.

For each: the start-up (the CLI's interpreter, imports and model load, timed on one image,
the faster of two runs; the cluster's worker processes, until each has imported the
detector's modules), the scoring wall time and images/s (the CLI's total wall time less
its start-up; the cluster's from the call to the last result, which includes sending the
model to each worker and building it there), and the peak resident memory of each process
that scored (``ru_maxrss``: the CLI process, each worker). Then the checks: the two
cluster runs give identical scores (float equality), and the CLI's CSV equals the
cluster's scores written with the CLI's 6 decimals.

Targets: 2 workers at least 1.7 times as fast as 1 worker, identical scores. Run it on a
quiet machine; the figures of a busy one say nothing. From the repository root::

    python benchmarks/scaling.py              # 300 synthetic 256x256 images, resnet18 at 256 px
    python benchmarks/scaling.py --quick      # correctness only: 24 tiny images, tiny model
"""

from __future__ import annotations

import argparse
import csv
import importlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Benchmark the checkout this script lives in, not another installed copy.
sys.path.insert(0, str(REPO))

FULL = dict(images=300, image_size=256, backbone="resnet18", input_size=256, batch_size=16)
QUICK = dict(images=24, image_size=32, backbone="test_resnet", input_size=32, batch_size=4)
FIT_IMAGES = 16  # enough to fit a model; its quality does not matter for throughput


def write_images(folder: Path, n_images: int, image_size: int) -> list[str]:
    """Synthetic inspection images (half with a defect) as PNG files; their paths, sorted."""
    from PIL import Image

    from skfastflow.datasets import make_defect_images

    folder.mkdir(parents=True)
    data = make_defect_images(n_images, image_size=image_size, defect_fraction=0.5, random_state=0)
    paths = []
    for index, image in enumerate(data.images):
        paths.append(str(folder / f"{index:04d}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


def fit_model(path: Path, config: dict) -> Path:
    """A model file for the benchmark: random backbone weights (no download), one epoch."""
    from skfastflow import FastFlowDetector
    from skfastflow.datasets import make_defect_images
    from skfastflow.persistence import save

    good = make_defect_images(FIT_IMAGES, image_size=config["image_size"], defect_fraction=0.0, random_state=1)
    detector = FastFlowDetector(
        config["backbone"], pre_trained=False, input_size=config["input_size"], batch_size=config["batch_size"],
        max_iter=1, early_stopping=False, random_state=0,
    ).fit(good.images)  # fmt: skip
    save(detector, path)
    return path


def run_plain_cli(model: Path, folder: Path, first_image: str, out: Path) -> dict:
    """``skfastflow predict`` in a subprocess: start-up (one image), then the whole folder."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def predict(*inputs, csv_path):
        started = time.perf_counter()
        command = [sys.executable, "-m", "skfastflow", "predict", str(model), *map(str, inputs), "--csv", str(csv_path)]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"skfastflow predict failed:\n{done.stderr}")
        return time.perf_counter() - started

    # The faster of two one-image runs: a busy moment inflates one of them.
    start_up = min(predict(first_image, csv_path=out.with_suffix(".one.csv")) for _ in range(2))
    total = predict(folder, csv_path=out)
    # The largest child so far: the CLI runs before any worker process is started.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"start_up": start_up, "scoring": total - start_up, "peaks": [peak], "scores": read_scores(out)}


def run_cluster(model: Path, paths: list[str], n_workers: int, out: Path) -> dict:
    """``score_files_on_cluster`` on ``n_workers`` local worker processes, written to a CSV file."""
    from skfastflow.parallel import connect, score_files_on_cluster

    started = time.perf_counter()
    with connect(f"local:{n_workers}") as client:
        # Each worker imports the detector's modules (torch, timm) once, as the CLI does at start-up.
        client.run(importlib.import_module, "skfastflow.detector")
        start_up = time.perf_counter() - started
        started = time.perf_counter()
        with open(out, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "score", "decision", "verdict", "error"])
            scores = {}
            for result in score_files_on_cluster(model, paths, client):
                if result.error is not None:
                    raise RuntimeError(result.error)
                writer.writerow([result.path, f"{result.score:.6f}", f"{result.decision:.6f}", result.verdict, ""])
                scores[result.path] = result.score
        scoring = time.perf_counter() - started
        peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"start_up": start_up, "scoring": scoring, "peaks": sorted(peaks.values()), "scores": scores}


def read_scores(csv_path: Path) -> dict:
    with open(csv_path, newline="") as file:
        return {row["path"]: row["score"] for row in csv.DictReader(file)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny images and model: a correctness run, no figures")
    parser.add_argument("--images", type=int, default=None, help="images to score (default: 300, --quick 24)")
    args = parser.parse_args(argv)
    config = dict(QUICK if args.quick else FULL)
    if args.images:
        config["images"] = args.images

    import torch

    print(f"{config['images']} images of {config['image_size']} px, {config['backbone']} at {config['input_size']} px, "
          f"batch {config['batch_size']}; {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"(default {torch.get_num_threads()} threads)")
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        paths = write_images(root / "images", config["images"], config["image_size"])
        model = fit_model(root / "model.joblib", config)
        runs = {"plain CLI": run_plain_cli(model, root / "images", paths[0], root / "plain.csv")}
        for n_workers in (1, 2):
            runs[f"dask, {n_workers} worker{'s' if n_workers > 1 else ''}"] = run_cluster(
                model, paths, n_workers, root / f"dask{n_workers}.csv"
            )

    one_worker = runs["dask, 1 worker"]["scoring"]
    print(f"\n{'run':<16} {'start-up s':>10} {'scoring s':>10} {'images/s':>9} {'vs 1 worker':>11}  peak MiB per process")
    for name, run in runs.items():
        peaks = ", ".join(f"{peak:.0f}" for peak in run["peaks"])
        if run["scoring"] <= 0:  # the CLI's start-up varied by more than its scoring took
            print(f"{name:<16} {run['start_up']:>10.1f} {'n/a: score more images':>33}  {peaks}")
            continue
        print(f"{name:<16} {run['start_up']:>10.1f} {run['scoring']:>10.1f} {len(paths) / run['scoring']:>9.2f} "
              f"{one_worker / run['scoring']:>10.2f}x  {peaks}")

    one, two, plain = runs["dask, 1 worker"]["scores"], runs["dask, 2 workers"]["scores"], runs["plain CLI"]["scores"]
    identical = one == two and len(one) == len(paths)
    as_csv = {path: f"{score:.6f}" for path, score in two.items()}
    csv_mismatches = sum(plain.get(path) != text for path, text in as_csv.items())
    print(f"\nscores, 2 workers == 1 worker (float equality): {identical}")
    print(f"scores, plain CLI CSV == 2 workers at 6 decimals: {csv_mismatches} of {len(paths)} differ")
    speed_up = one_worker / runs["dask, 2 workers"]["scoring"]
    print(f"target 2 workers >= 1.7x 1 worker: {speed_up:.2f}x" + ("" if args.quick else (" met" if speed_up >= 1.7 else " MISSED")))
    return 0 if identical and csv_mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
