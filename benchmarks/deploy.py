"""Scoring speed on a line PC: the torch detector against its exported graph, and install sizes.

In one process, on the same images, with each thread count asked for (default: 1 and 2):

- ``torch``: ``FastFlowDetector.predict_maps(X, return_scores=True)`` at its default
  ``inference_precision`` (``"auto"``);
- ``torch float32``: the same detector with ``inference_precision="float32"`` (what
  ``"auto"`` runs on CPUs without bfloat16 instructions), to tell the runtime's gain from
  the arithmetic's;
- ``onnxruntime``: :class:`skfastflow.runtime.RuntimeDetector` on the file of
  :func:`skfastflow.export.export_onnx` (float32);
- ``openvino``: the same on :func:`skfastflow.export.export_openvino`'s IR, when the
  ``openvino`` package is installed (float32);
- ``int8`` (only with ``--int8``): the ONNX graph after onnxruntime's static quantization
  of its convolutions (QDQ, per-channel int8 weights, uint8 activations), calibrated on
  the good training images. An experiment, not a feature: its scores shift, so the
  detector's ``offset_`` does not fit them; the table gives the largest score change
  against float32 and, with ``--data``, the image AUROC.

Images/s counts every image over the whole call (reading arrays, resizing, the graph,
resizing maps back), the best of ``--repeats`` calls after one warm-up call; engines are
interleaved so that a change in the machine's load hits them alike. Wall and CPU time (all
threads of this process) are both given; on a shared machine CPU time is the steadier.
For each engine against torch: the largest score difference and the verdicts that differ.

Install sizes: the files of the installed distributions (from their ``RECORD``) of the full
install (skfastflow's dependencies and onnxruntime, each with its own dependencies) against
the runtime-only install (numpy, Pillow and onnxruntime, with theirs); skfastflow itself in
both. Measured in this environment, so the full install is this environment's torch build.

Run from the repository root::

    python benchmarks/deploy.py                                   # synthetic 256 px, EfficientNet-Lite0
    python benchmarks/deploy.py --data ../shared/datasets/glass --int8
    python benchmarks/deploy.py --runtime-batch-size 4             # graph runs of 4 images
    python benchmarks/deploy.py --input-size 64 --images 8 --repeats 1   # a quick correctness run
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

# Benchmark the checkout this script lives in, not another installed copy.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

FULL_INSTALL = ["skfastflow", "onnxruntime"]
# skfastflow's wheel goes in with --no-deps on a line PC (docs/deploy.md).
RUNTIME_INSTALL = ["numpy", "pillow", "onnxruntime"]


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="MVTec-layout category: fit on train/good, score test/ (default: synthetic images)")
    parser.add_argument("--backbone", default=None, help="timm backbone (default: tf_efficientnet_lite0 with offline weights, else resnet18)")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=64, help="synthetic test images (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs: speed does not depend on them (default: %(default)s)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per engine and thread count (default: %(default)s)")
    parser.add_argument("--int8", action="store_true", help="also time an int8 statically quantised ONNX graph")
    parser.add_argument(
        "--runtime-batch-size",
        type=int,
        default=None,
        help="images per graph run of the exported models (default: the detector's batch_size, 32); the torch "
        "detector cuts its batches into cache-sized backbone passes itself, the runtimes do not",
    )
    return parser.parse_args(argv)


def load_images(args):
    """``(good training images, test images, test labels or None)``."""
    from skfastflow.datasets import load_mvtec, make_defect_images

    if args.data:
        data = load_mvtec(args.data)
        return data.X_train, data.X_test, data.y_test
    train = make_defect_images(32, image_size=args.input_size, defect_fraction=0.0, random_state=0)
    test = make_defect_images(args.images, image_size=args.input_size, defect_fraction=0.5, random_state=1)
    return train.images, test.images, None


def fit_detector(args, X_train):
    from skfastflow import FastFlowDetector
    from skfastflow.cli import offline_pretrained_backbone

    offline = offline_pretrained_backbone()
    backbone = args.backbone or (offline[0] if offline else "resnet18")
    weights = offline[1] if offline and backbone == offline[0] else None
    return FastFlowDetector(
        backbone, weights=weights, pre_trained=weights is not None, input_size=args.input_size, max_iter=args.epochs, random_state=0
    ).fit(X_train)


def quantise(onnx_path, int8_path, calibration):
    """onnxruntime static int8 quantization of the convolutions, calibrated on ``calibration`` (n, 3, H, W)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 8)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    quantize_static(
        onnx_path, int8_path, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )
    # The runtime reads its settings from the metadata, which the quantizer may not carry over.
    model, original = onnx.load(int8_path), onnx.load(onnx_path)
    onnx.helper.set_model_props(model, {prop.key: prop.value for prop in original.metadata_props})
    onnx.save(model, int8_path)


def timed(function, repeats):
    """``(result, best wall seconds, CPU seconds of that call)`` of ``repeats`` calls after a warm-up."""
    result = function()
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return result, best[0], best[1]


def installed_size(names, without_dependencies=()):
    """Bytes of the installed files of ``names`` and of everything they require (no extras),
    and the distributions counted; ``without_dependencies`` count without what they require."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen, pending, total = set(), [*names, *without_dependencies], 0
    while pending:
        name = pending.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        requirements = [] if name in without_dependencies else distribution.requires or []
        for requirement in map(Requirement, requirements):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
        for file in distribution.files or []:
            path = file.locate()
            if os.path.isfile(path):
                total += os.path.getsize(path)
    return total, sorted(seen)


def main(argv=None):
    args = parse_arguments(argv)
    import torch

    from skfastflow.export import export_onnx, export_openvino
    from skfastflow.runtime import RuntimeDetector

    X_train, X_test, y_test = load_images(args)
    detector = fit_detector(args, X_train)
    print(
        f"{detector.backbone} at {args.input_size} px, {len(X_test)} test images, inference_precision="
        f"{detector.inference_precision!r}, runtime batch size {args.runtime_batch_size or detector.batch_size}"
    )
    float32_detector = copy.deepcopy(detector).set_params(inference_precision="float32")
    folder = tempfile.mkdtemp(prefix="skfastflow_deploy_")
    files = {"onnxruntime": export_onnx(detector, os.path.join(folder, "detector.onnx"))}
    try:
        files["openvino"] = export_openvino(detector, os.path.join(folder, "detector.xml"))
    except ImportError:
        print("openvino: not installed, skipped (pip install openvino)")
    if args.int8:
        files["int8"] = os.path.join(folder, "detector_int8.onnx")
        calibration = RuntimeDetector(files["onnxruntime"]).graph_input(X_train)
        quantise(str(files["onnxruntime"]), files["int8"], calibration)

    rows = []
    for threads in [int(value) for value in args.threads.split(",")]:
        torch.set_num_threads(threads)
        engines = {"torch": detector, "torch float32": float32_detector}
        engines.update(
            (name, RuntimeDetector(path, batch_size=args.runtime_batch_size, n_threads=threads)) for name, path in files.items()
        )
        reference = None
        for name, engine in engines.items():
            (maps, scores), wall, cpu = timed(lambda: engine.predict_maps(X_test, return_scores=True), args.repeats)
            reference = scores if reference is None else reference
            row = dict(threads=threads, engine=name, images_per_s=len(X_test) / wall, cpu_ms_per_image=1000 * cpu / len(X_test))
            row["max_score_difference"] = float(np.max(np.abs(scores - reference)))
            row["verdicts_differing"] = int(np.sum((scores < detector.offset_) != (reference < detector.offset_)))
            if y_test is not None:
                from sklearn.metrics import roc_auc_score

                row["image_auroc"] = float(roc_auc_score(y_test == -1, -scores))
            rows.append(row)
    header = ["threads", "engine", "images_per_s", "cpu_ms_per_image", "max_score_difference", "verdicts_differing"]
    header += ["image_auroc"] if y_test is not None else []
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{row[key]:.4g}" if isinstance(row[key], float) else str(row[key]) for key in header) + " |")
    speedups = {(row["threads"], row["engine"]): row["images_per_s"] for row in rows}
    for threads, engine in speedups:
        if engine != "torch":
            print(f"{engine} / torch at {threads} thread(s): {speedups[threads, engine] / speedups[threads, 'torch']:.2f}x")

    full, full_names = installed_size(FULL_INSTALL)
    runtime, runtime_names = installed_size(RUNTIME_INSTALL, without_dependencies=("skfastflow",))
    print(f"Installed files, full install ({len(full_names)} distributions): {full / 2**20:.0f} MiB")
    print(f"Installed files, runtime-only install ({', '.join(runtime_names)}): {runtime / 2**20:.0f} MiB "
          f"({100 * runtime / full:.1f} % of the full one)")


if __name__ == "__main__":
    main()
