"""Score images with an exported detector on a machine without torch: :class:`RuntimeDetector`.

This module imports numpy and Pillow, and onnxruntime (for ``.onnx`` files) or OpenVINO
(for ``.xml`` files) when a detector is created; never torch, timm or scikit-learn. A line
PC needs only those packages and skfastflow itself (``docs/deploy.md``).

:class:`RuntimeDetector` offers the scoring methods of
:class:`~skfastflow.FastFlowDetector` with the same signs, shapes and input rules, and
applies what the torch detector applies when scoring: the same resize, the image-score
rule, ``offset_`` and the colour check, all read from the file written by
:func:`skfastflow.export.export_onnx` or :func:`~skfastflow.export.export_openvino`.

Images are resized to ``input_size`` by Pillow's bilinear filter on float32 pixels, which is
the antialiased bilinear interpolation the torch detector uses (``align_corners=False``).
On the ``[0, 1]`` pixel scale the two differ by at most 4e-7 for ``input_size`` 256 (4000
random source sizes of 200 to 420 pixels, measured) and by up to 3e-5 for a few size pairs
elsewhere (300 to 297 pixels, for one), where torch computes the filter windows in
float32 and Pillow in float64 (Pillow's agree with a float64 reference within 3e-8).
Torch also ignores vertical upsampling when the output is one pixel wide, a size no
backbone takes. Maps return to each image's size by plain bilinear interpolation
(``align_corners=False``), computed here in float64 (torch: float32), within 1e-5 of the
torch detector's. ``tests/test_runtime.py`` checks both rules against torch.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from PIL import Image

from . import __version__
from .image_input import ImageInput
from .map_standardization import MapStandardizer, returned_map_kind
from .thresholds import conformal_p_values
from .verdicts import VerdictMixin
from .tiling import TileMapAssembler, resize_map, stitched_scores, tile_boxes

#: Layout of the metadata the exporter writes; files with a larger number are refused.
#: 2 added ``map_standardization`` of stitched maps, 3 ``tile_grid_size`` (per-position tile
#: flows); files without them are still written as 1.
METADATA_FORMAT = 3
#: Key of the metadata entry (ONNX ``metadata_props``; OpenVINO ``rt_info``).
METADATA_KEY = "skfastflow"
#: Names of the graph's input and outputs.
INPUT_NAME = "images"
OUTPUT_NAMES = ("anomaly_maps", "scores")

class RuntimeDetector(VerdictMixin):
    """A fitted FastFlow detector read from an exported graph, scored without torch.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`skfastflow.export.export_onnx` (``.onnx``, run by
        onnxruntime) or :func:`~skfastflow.export.export_openvino` (``.xml``, run by
        OpenVINO on the CPU, in float32).
    batch_size : int, default=None
        Images per run of the graph; None takes the exported detector's ``batch_size``.
    n_threads : int, default=None
        CPU threads of the runtime; None lets the runtime choose (all physical cores).

    Attributes
    ----------
    offset_ : float
        The exported detector's threshold: ``decision_function = score_samples - offset_``.
    input_size_ : tuple of int
        ``(height, width)`` images are resized to.
    image_score_ : "max" or float
        The exported detector's ``image_score`` rule (applied inside the graph; with
        tiling, to the stitched map).
    map_standardizer_ : MapStandardizer or None
        The exported detector's ``map_standardizer_``: the image score is taken over the
        maps standardised per pixel by it (inside the graph; with tiling, here, after
        stitching); the maps returned stay raw, except with per-position tile flows
        (``map_kind_``).
    map_kind_ : {"raw", "standardized"}
        The map :meth:`predict_maps` returns, as the exported detector's ``map_kind_``.
    tiling_ : ((int, int), (int, int)) or None
        The exported detector's tile size and stride (its ``tiling_``): images are cut,
        scored tile by tile and stitched as the torch detector does
        (:mod:`skfastflow.tiling`); None: whole images.
    tile_grid_size_ : (int, int) or None
        With per-position tile flows: the image size the exported detector was fitted on
        (its ``tile_grid_size_``); images of another size are refused. None otherwise.
    colour_mode_ : {"grey", "colour", "mixed"}
        Colour of the training images, which sets the colour check (as the torch detector's).
    calibration_scores_ : ndarray of shape (n_calibration,) or None
        Calibration scores of good images (held out or out of fold), for :meth:`p_values`;
        None when the exported detector kept none.
    metadata_ : dict
        Everything the file records (:func:`skfastflow.export.export_metadata`).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is not an skfastflow export, or one from a newer skfastflow.
    ImportError
        When the runtime for the file's kind is not installed (onnxruntime or openvino).

    Examples
    --------
    On the line PC, with a file exported by ``skfastflow export model.joblib --out model.onnx``::

        from skfastflow.runtime import RuntimeDetector
        detector = RuntimeDetector("model.onnx")
        labels = detector.predict(["part_0001.png", "part_0002.png"])  # +1 good, -1 defective
    """

    def __init__(self, path, *, batch_size: int | None = None, n_threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Model file {str(path)!r} does not exist; export one with: skfastflow export MODEL --out {path}")
        self.path = path
        self.n_threads = n_threads
        self._run, text = _open_graph(path, n_threads)
        self.metadata_ = _read_metadata(text, path)
        self.offset_ = float(self.metadata_["offset"])
        self.input_size_ = tuple(int(side) for side in self.metadata_["input_size"])
        self.image_score_ = self.metadata_["image_score"]
        self.colour_mode_ = self.metadata_["colour_mode"]
        tiling = self.metadata_.get("tiling")
        self.tiling_ = None if tiling is None else tuple(tuple(int(side) for side in pair) for pair in tiling)
        grid = self.metadata_.get("tile_grid_size")
        self.tile_grid_size_ = None if grid is None else tuple(int(side) for side in grid)
        standardization = self.metadata_.get("map_standardization")
        self.map_standardizer_ = None if standardization is None else decode_standardizer(standardization)
        self.map_kind_ = returned_map_kind(self.map_standardizer_, self.tile_grid_size_)
        calibration = self.metadata_.get("calibration_scores")
        self.calibration_scores_ = None if calibration is None else np.asarray(calibration, dtype=np.float64)
        self.batch_size = int(self.metadata_["batch_size"]) if batch_size is None else batch_size
        self._check_batch_size(self.batch_size)

    def __repr__(self) -> str:
        return f"RuntimeDetector({str(self.path)!r}, batch_size={self.batch_size}, n_threads={self.n_threads})"

    def set_params(self, *, batch_size: int) -> "RuntimeDetector":
        """Set the images per run of the graph (as ``FastFlowDetector.set_params(batch_size=...)``).

        Returns
        -------
        self : RuntimeDetector
        """
        self._check_batch_size(batch_size)
        self.batch_size = batch_size
        return self

    @staticmethod
    def _check_batch_size(batch_size) -> None:
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive whole number, got {batch_size!r}.")

    # ------------------------------------------------------------------ scoring

    def graph_input(self, X) -> np.ndarray:
        """What :meth:`score_samples` feeds the graph for images ``X``: read, checked and resized.

        For running the graph with other tools, or calibrating a quantised copy of it.

        Parameters
        ----------
        X : array-like or list
            Images, as for :meth:`score_samples`.

        Returns
        -------
        images : ndarray of shape (n_samples, 3, H, W), dtype float32
            RGB in ``[0, 1]`` at ``input_size_`` (grey images repeated to three channels),
            before the normalisation the graph applies itself.
        """
        return np.concatenate([batch for _, batch in self._graph_batches(X)])

    def _graph_batches(self, X):
        """Yield ``(original sizes, graph input (n, 3, H, W))`` of at most ``batch_size`` images.

        As the torch detector's batches: checked and read by the same
        :class:`~skfastflow.image_input.ImageInput`, each image shrunk to ``input_size`` before
        the next is read, the colour check once per batch.
        """
        images = ImageInput(X, fitted_colour_mode=self.colour_mode_)
        for start in range(0, len(images), self.batch_size):
            indices = np.arange(start, min(start + self.batch_size, len(images)))
            # Each image is written into its place in the batch: no list of copies to stack.
            batch = np.empty((len(indices), 3, *self.input_size_), dtype=np.float32)
            sizes, grey = [], np.empty(len(indices), dtype=bool)
            for position, index in enumerate(indices):
                image, grey[position] = images.load(int(index))
                sizes.append(image.shape[:2])
                _to_graph_input(image, self.input_size_, out=batch[position])
            images.check_colour(indices, grey)
            yield sizes, batch

    def _batches(self, X):
        """Yield ``(original sizes, maps, scores (n,))`` batch by batch.

        Maps are ``(n, H, W)`` at ``input_size`` for whole images; with tiling, a list of
        the stitched maps at the images' own sizes.
        """
        if self.tiling_ is not None:
            yield from self._stitched_batches(X)
            return
        for sizes, batch in self._graph_batches(X):
            maps, scores = self._run(batch)
            yield sizes, maps, scores

    def _stitched_batches(self, X):
        """Yield ``([size], [stitched map], score (1,))`` image by image, tiles run ``batch_size`` at a time.

        As the torch detector: each image cut by :func:`~skfastflow.tiling.tile_boxes`, each
        tile resized to ``input_size``, the tiles' maps returned to their boxes' sizes and
        stitched, the image score taken over the stitched map.
        """
        images = ImageInput(X, fitted_colour_mode=self.colour_mode_)
        pending: list[tuple[int, object, np.ndarray]] = []  # (image, box, graph input) not yet run
        assembler = TileMapAssembler()
        # Per-position flows take whole images' tiles in tile order: runs hold whole images.
        per_image = 1 if self.tile_grid_size_ is None else len(tile_boxes(self.tile_grid_size_, *self.tiling_))
        capacity = max(per_image, self.batch_size // per_image * per_image)

        def run_pending():
            maps, _ = self._run(np.stack([tile for _, _, tile in pending]))
            for (index, box, _), tile_map in zip(pending, maps):
                stitched = assembler.add(index, resize_map(tile_map, (box.height, box.width)), box)
                if stitched is not None:
                    # Whole images' scores come standardised from the graph; stitched maps, here.
                    scored = stitched if self.map_standardizer_ is None else self.map_standardizer_(stitched)
                    score = stitched_scores(scored, (self.image_score_,))[self.image_score_]
                    yield [stitched.shape], [scored if self.map_kind_ == "standardized" else stitched], np.array([score])
            pending.clear()

        for index in range(len(images)):
            image, grey = images.load(index)
            images.check_colour(np.array([index]), np.array([grey]))
            if self.tile_grid_size_ is not None and tuple(image.shape[:2]) != self.tile_grid_size_:
                height, width = self.tile_grid_size_
                raise ValueError(
                    f"X[{index}] is {image.shape[0]}x{image.shape[1]} pixels, but this model has per-position tile flows "
                    f"for images of {height}x{width}: its tiles would lie elsewhere. Crop or resize it to {height}x{width}."
                )
            boxes = tile_boxes(image.shape[:2], *self.tiling_)
            assembler.expect(index, image.shape[:2], len(boxes))
            for box in boxes:
                crop = image[box.top : box.top + box.height, box.left : box.left + box.width]
                pending.append((index, box, _to_graph_input(crop, self.input_size_)))
                if len(pending) + per_image > capacity and len(pending) % per_image == 0:
                    yield from run_pending()
        if pending:
            yield from run_pending()

    def score_samples(self, X) -> np.ndarray:
        """Image scores under the exported ``image_score`` rule; lower means more abnormal.

        Parameters
        ----------
        X : array-like or list
            Images as for :meth:`FastFlowDetector.fit <skfastflow.FastFlowDetector.fit>`: an
            array ``(N, H, W[, C])`` of uint8 0..255 (uint16 0..65535) or floats in
            ``[0, 1]``, or a list of such arrays, PIL images or file paths, of any sizes.

        Returns
        -------
        scores : ndarray of shape (n_samples,), dtype float64
            As the torch detector's (any real number with map standardisation, else in
            ``[0, 1]``); with ``inference_precision="float32"`` within 1e-5 of its scores, divided
            by the smallest scale of its ``map_standardizer_`` when it standardises maps.
        """
        return np.concatenate([scores for _, _, scores in self._batches(X)]).astype(np.float64)

    def predict_maps(self, X, *, return_scores: bool = False):
        """Per-pixel anomaly maps at each image's original resolution (higher = more anomalous).

        Parameters
        ----------
        X : array-like or list
            Images, as for :meth:`score_samples`.
        return_scores : bool, default=False
            Also return :meth:`score_samples` of the same images, from the same run.

        Returns
        -------
        maps : ndarray of shape (n_samples, H, W) or list of ndarray
            float32, an array when all images have the same size, else a list of
            ``(H_i, W_i)`` arrays: the map ``map_kind_`` names, as the torch detector's
            (raw, in ``[-1, 0]``; with per-position tile flows and map standardisation, the
            standardised map the score is taken over).
        scores : ndarray of shape (n_samples,), dtype float64
            Only with ``return_scores=True``: exactly ``score_samples(X)``.
        """
        maps, scores = [], []
        for sizes, batch_maps, batch_scores in self._batches(X):
            maps.extend(resize_map(anomaly_map, size) for anomaly_map, size in zip(batch_maps, sizes))
            scores.append(batch_scores)
        if len({anomaly_map.shape for anomaly_map in maps}) == 1:
            maps = np.stack(maps)
        if return_scores:
            return maps, np.concatenate(scores).astype(np.float64)
        return maps

    def p_values(self, X) -> np.ndarray:
        """Split-conformal p-values of the images' scores against the held-out good scores.

        ``p = (1 + #{calibration scores <= score}) / (n_calibration + 1)``: for a good image
        exchangeable with the held-out good images, ``P(p <= alpha) <= alpha`` at every
        level ``alpha`` (Bates et al. 2023, *Testing for outliers with conformal p-values*).
        Flag the images with ``p <= alpha`` for a false-alarm rate of at most ``alpha``.

        Parameters
        ----------
        X : array-like or list
            Images, as for :meth:`score_samples`.

        Returns
        -------
        p_values : ndarray of shape (n_samples,), dtype float64
            In ``[1 / (n_calibration + 1), 1]``; small means abnormal.

        Raises
        ------
        ValueError
            When the exported detector kept no calibration scores (exported by an
            skfastflow that did not record them): export it again with a current one.
        """
        if self.calibration_scores_ is None:
            raise ValueError(
                f"{str(self.path)!r} holds no calibration scores (exported by skfastflow "
                f"{self.metadata_['skfastflow_version']} from a detector without calibration_scores_), so it cannot give "
                "p-values; export the detector again with a current skfastflow."
            )
        return conformal_p_values(self.score_samples(X), self.calibration_scores_)


# ---------------------------------------------------------------------------- the graph


def _open_graph(path: Path, n_threads: int | None):
    """``(run, metadata text)``: ``run(images (n, 3, H, W) float32) -> (maps, scores)`` for the file's runtime."""
    if path.suffix.lower() == ".xml":
        return _open_openvino(path, n_threads)
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"Running {str(path)!r} needs onnxruntime: pip install onnxruntime ({error}).") from error
    options = onnxruntime.SessionOptions()
    if n_threads is not None:
        options.intra_op_num_threads = n_threads
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for foreign or damaged files
        raise ValueError(
            f"Cannot read {str(path)!r} as an ONNX model ({type(error).__name__}: {error}); export it again with skfastflow export."
        ) from error

    def run(images: np.ndarray):
        return session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})

    return run, session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)


def _open_openvino(path: Path, n_threads: int | None):
    try:
        import openvino
    except ImportError as error:
        raise ImportError(f"Running {str(path)!r} needs OpenVINO: pip install openvino ({error}).") from error
    core = openvino.Core()
    try:
        model = core.read_model(path)
    except Exception as error:  # OpenVINO raises RuntimeError and its own types
        raise ValueError(
            f"Cannot read {str(path)!r} as an OpenVINO model, with its weights in {str(path.with_suffix('.bin'))!r} "
            f"({type(error).__name__}: {error}); export it again with skfastflow export --format openvino."
        ) from error
    text = model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info([METADATA_KEY]) else None
    # OpenVINO would compute in bfloat16 on CPUs that have it; the scores must be float32's.
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if n_threads is not None:
        config["INFERENCE_NUM_THREADS"] = n_threads
    compiled = core.compile_model(model, "CPU", config)
    outputs = [compiled.output(name) for name in OUTPUT_NAMES]

    def run(images: np.ndarray):
        result = compiled(images)
        return [result[output] for output in outputs]

    return run, text


def encode_standardizer(standardizer: MapStandardizer) -> dict:
    """A :class:`~skfastflow.map_standardization.MapStandardizer` as JSON-serialisable metadata.

    Returns
    -------
    dict
        ``size`` ``[H, W]``, and ``mean`` and ``scale``: the float32 arrays' little-endian
        bytes in base64 (a fifth of the size of JSON numbers, and exact).
    """
    return {
        "size": list(standardizer.size),
        "mean": base64.b64encode(standardizer.mean.astype("<f4").tobytes()).decode("ascii"),
        "scale": base64.b64encode(standardizer.scale.astype("<f4").tobytes()).decode("ascii"),
    }


def decode_standardizer(metadata: dict) -> MapStandardizer:
    """The :class:`~skfastflow.map_standardization.MapStandardizer` that :func:`encode_standardizer` wrote."""
    size = tuple(int(side) for side in metadata["size"])
    mean, scale = (np.frombuffer(base64.b64decode(metadata[key]), dtype="<f4").reshape(size) for key in ("mean", "scale"))
    return MapStandardizer(mean, scale)


def _read_metadata(text: str | None, path: Path) -> dict:
    if text is None:
        raise ValueError(f"{str(path)!r} is not a model exported by skfastflow (it has no {METADATA_KEY!r} metadata); export one with skfastflow export.")
    metadata = json.loads(text)
    if metadata.get("format", 0) > METADATA_FORMAT:
        raise ValueError(
            f"{str(path)!r} was exported by skfastflow {metadata.get('skfastflow_version')} in metadata format "
            f"{metadata['format']}, newer than skfastflow {__version__} reads ({METADATA_FORMAT}); upgrade with "
            f"`pip install skfastflow>={metadata.get('skfastflow_version')}`."
        )
    return metadata


# ---------------------------------------------------------------------------- pixels


def _to_graph_input(image: np.ndarray, input_size: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """An image ``(H, W, C)``, C in {1, 3}, float32 in [0, 1] -> ``(3, *input_size)`` float32 (into ``out`` if given).

    Pillow's BILINEAR filter on float32 ("F" mode) images is the antialiased bilinear
    interpolation (a triangle filter widened by the downscaling factor) of the torch
    detector; grey becomes RGB after resizing, as there. An image already at
    ``input_size`` is copied as it is (Pillow's resize to the same size is a copy too).
    """
    height, width = input_size
    out = np.empty((3, height, width), dtype=np.float32) if out is None else out
    if image.shape[:2] == (height, width):
        out[...] = np.moveaxis(image, 2, 0)  # a grey channel broadcasts to all three
        return out
    for channel in range(image.shape[2]):
        resized = Image.fromarray(np.ascontiguousarray(image[:, :, channel])).resize((width, height), Image.BILINEAR)
        out[channel] = np.asarray(resized)
    if image.shape[2] == 1:
        out[1:] = out[0]
    return out
