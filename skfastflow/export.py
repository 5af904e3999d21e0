"""Export a fitted detector's whole scoring path as one graph, for a line PC without torch.

The graph (ONNX, or OpenVINO's IR converted from it) holds the normalisation, the frozen
backbone, the flows, the anomaly map and the image score:

- input ``images``: float32 ``(N, 3, H, W)``, RGB in ``[0, 1]``, already resized to the
  detector's ``input_size`` ``(H, W)``; ``N`` is dynamic. Grey images are repeated to three
  channels. The graph itself subtracts the backbone's ``mean`` and divides by its ``std``,
  so a program in any language only has to resize;
- output ``anomaly_maps``: float32 ``(N, H, W)`` at ``input_size``, higher = more
  anomalous, in ``[-1, 0]``, as :meth:`~skfastflow.FastFlowDetector.predict_maps` gives them
  before resizing to each image's size (raw maps: with per-position tile flows it returns the
  stitched maps standardised, ``map_kind_``);
- output ``scores``: float32 ``(N,)``, ``score_samples`` under the fitted detector's
  image-score rule ``image_score_`` (higher = more normal), over the maps standardised per
  pixel by the detector's ``map_standardizer_`` (its statistics are constants of the graph)
  when it has one. With tiling the graph scores tiles; the runtime stitches their maps,
  standardises the stitched map and takes its score.

Everything else the detector applies when scoring travels as metadata (see
:func:`export_metadata`): ``offset_``, ``input_size``, ``mean``/``std``, the image-score rule,
the colour mode of the training images, the batch size, the package version and, when the
detector keeps them, the calibration scores of good images (held out or out of fold) for
conformal p-values.
:class:`skfastflow.runtime.RuntimeDetector` reads the file back and scores images the way
the torch detector does.

The graph computes in float32: it matches ``FastFlowDetector(inference_precision="float32")``
(maps within 1e-4, scores within 1e-5; ``tests/test_export.py``). A detector whose
``inference_precision`` ran the flows in bfloat16 (``"auto"`` on CPUs with native bfloat16)
set its ``offset_`` from bfloat16 scores, up to 4e-4 away from the float32 ones.

The ONNX file is written by torch's TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``). The ``torch.export``-based one gives the same graph (maps within 1e-6,
measured) but took 15 to 25 times as long (45 to 60 s instead of 2 to 4 s for a small
model) and needs the ``onnxscript`` package.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn import functional as F

from . import __version__
from .map_standardization import MapStandardizer
from .nn.anomaly_map import scores_by_rule
from .persistence import write_atomically
from .runtime import INPUT_NAME, METADATA_FORMAT, METADATA_KEY, OUTPUT_NAMES, encode_standardizer


class ScoringGraph(nn.Module):
    """The scoring path of a fitted ``FastflowModel`` as one module: what gets exported.

    Parameters
    ----------
    model : FastflowModel
        A fitted model, in eval mode.
    image_score : "max" or float
        The fitted detector's image-score rule, ``image_score_`` (see
        :func:`skfastflow.nn.anomaly_map.scores_by_rule`).
    standardizer : MapStandardizer or None, default=None
        The fitted detector's ``map_standardizer_`` (None with tiling, whose stitched maps
        the runtime standardises): the image score is taken over the maps standardised by
        it (its statistics at ``input_size``, as constants); the maps are returned raw.
    """

    def __init__(self, model, image_score: str | float, standardizer: MapStandardizer | None = None) -> None:
        super().__init__()
        self.model = model
        self.image_score = image_score
        extractor = model.feature_extractor
        self.register_buffer("mean", torch.tensor(extractor.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(extractor.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.standardized = standardizer is not None
        if self.standardized:
            map_mean, map_scale = standardizer.at_size(model.input_size)
            self.register_buffer("map_mean", torch.from_numpy(map_mean.copy()).view(1, 1, *model.input_size))
            self.register_buffer("map_scale", torch.from_numpy(map_scale.copy()).view(1, 1, *model.input_size))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(anomaly_maps (N, H, W), scores (N,))`` of RGB ``images`` ``(N, 3, H, W)`` in ``[0, 1]``."""
        # (x - mean) / std as the torch detector normalises (skfastflow.images), op for op.
        maps = self.model((images - self.mean) / self.std)
        scored = (maps - self.map_mean) / self.map_scale if self.standardized else maps
        return maps[:, 0], scores_by_rule(scored, (self.image_score,), self.model.input_size)[self.image_score]


class StaticSamePadding(nn.Module):
    """A convolution with TensorFlow's "same" padding for one input size, the padding as constants.

    timm's ``Conv2dSame`` (the stride-2 convolutions of the ``tf_`` EfficientNets) computes
    its padding from the input's shape at every call; traced, that becomes Shape, Gather,
    arithmetic and a Pad whose amounts are only known at run time, which onnxruntime and
    OpenVINO can neither fold into the convolution nor keep in their blocked layouts. The
    graph's input size is fixed, so the padding is too: the same zeros, as a constant Pad
    that they fuse into the convolution (same arithmetic, same results).

    Parameters
    ----------
    conv : torch.nn.Conv2d
        The convolution (its own ``padding`` is ignored, as ``Conv2dSame`` ignores it).
    input_size : tuple of int
        ``(h, w)`` of its input in the exported graph.
    """

    def __init__(self, conv: nn.Conv2d, input_size: tuple[int, int]) -> None:
        from timm.layers import get_same_padding  # the amounts Conv2dSame computes at run time

        super().__init__()
        self.conv = conv
        height, width = (
            get_same_padding(size, kernel, stride, dilation)
            for size, kernel, stride, dilation in zip(input_size, conv.kernel_size, conv.stride, conv.dilation)
        )
        # F.pad's order: left, right, top, bottom; the odd pixel goes right and below, as in TensorFlow.
        self.padding = (width // 2, width - width // 2, height // 2, height - height // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        return F.conv2d(F.pad(x, self.padding), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def with_static_padding(model):
    """``model`` (a FastflowModel, changed in place) with its ``Conv2dSame`` layers as :class:`StaticSamePadding`.

    Each layer's input size is read from one pass over a blank batch at ``input_size``.
    """
    from timm.layers import Conv2dSame

    sizes = {}
    hooks = [
        module.register_forward_pre_hook(lambda module, args: sizes.__setitem__(module, tuple(args[0].shape[-2:])))
        for module in model.modules()
        if isinstance(module, Conv2dSame)
    ]
    try:
        model.extract_features(torch.zeros(1, 3, *model.input_size))
    finally:
        for hook in hooks:
            hook.remove()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child in sizes:
                setattr(parent, name, StaticSamePadding(child, sizes[child]))
    return model


def export_metadata(detector) -> dict:
    """What a runtime needs besides the graph to score as ``detector`` does.

    Parameters
    ----------
    detector : FastFlowDetector
        A fitted detector.

    Returns
    -------
    metadata : dict
        JSON-serialisable: ``format`` (:data:`skfastflow.runtime.METADATA_FORMAT`), ``skfastflow_version``,
        ``backbone``, ``input_size`` ``[H, W]``, ``mean`` and ``std`` (per RGB channel, on
        the ``[0, 1]`` scale; applied inside the graph), ``resize`` (the rule that brings
        an image to ``input_size``), ``image_score`` (``image_score_``, the rule in effect:
        ``"max"`` or the top fraction),
        ``offset`` (``offset_``), ``colour_mode`` (``colour_mode_``), ``batch_size``, and
        ``calibration_scores``: the calibration scores of good images (the detector's
        ``calibration_scores_``, for conformal p-values), or None when it has none
        (a detector pickled before skfastflow kept them), ``tiling``: the detector's
        ``tiling_`` as ``[[tile_h, tile_w], [stride_h, stride_w]]``, or None, and
        ``map_standardization``: the detector's ``map_standardizer_``
        (:func:`skfastflow.runtime.encode_standardizer`: its size and its float32 ``mean``
        and ``scale`` in base64), or None. ``format`` is 1 for files without map
        standardisation of stitched maps (whole-image graphs standardise inside the graph),
        which older runtimes read as before, and 2 with it, which they refuse rather than
        score tiled images by raw maps.

    With per-position tile flows, ``tile_grid_size``: the detector's ``tile_grid_size_``
    ``[H, W]`` (the graph then takes whole images' tiles in tile order), else None.
    ``format`` is 3 for those, which older runtimes refuse rather than feed tiles out of
    order.
    """
    check_is_fitted(detector)
    model = detector.model_
    calibration = getattr(detector, "calibration_scores_", None)
    standardizer = getattr(detector, "map_standardizer_", None)  # None in detectors pickled before it existed
    tiling = _tiling_of(detector)
    grid = getattr(detector, "tile_grid_size_", None)  # None in detectors pickled before per-position flows
    return {
        "format": 3 if grid is not None else 2 if standardizer is not None and tiling is not None else 1,
        "skfastflow_version": __version__,
        "backbone": detector.backbone,
        "input_size": list(model.input_size),
        "mean": list(model.feature_extractor.mean),
        "std": list(model.feature_extractor.std),
        "resize": "bilinear, antialiased, align_corners=False (torch.nn.functional.interpolate; PIL's BILINEAR on float32)",
        "image_score": detector.image_score_,
        "offset": float(detector.offset_),
        "colour_mode": detector.colour_mode_,
        "batch_size": int(detector.batch_size),
        "calibration_scores": None if calibration is None else [float(score) for score in calibration],
        "tiling": tiling,
        "tile_grid_size": None if grid is None else [int(side) for side in grid],
        "map_standardization": None if standardizer is None else encode_standardizer(standardizer),
    }


def _tiling_of(detector):
    # Detectors pickled before tiling existed have no tiling_: they resize whole images.
    tiling = getattr(detector, "tiling_", None)
    return None if tiling is None else [list(tiling[0]), list(tiling[1])]


def export_onnx(detector, path, *, opset: int = 17) -> Path:
    """Write ``detector``'s scoring path as an ONNX file (see the module docstring for the graph).

    Parameters
    ----------
    detector : FastFlowDetector
        A fitted detector. It is left untouched (a CPU copy of its model is exported).
    path : str or path-like
        Destination, usually ``*.onnx``; its folder must exist. Written atomically: an
        interrupted export leaves any previous file intact.
    opset : int, default=17
        ONNX opset; 17 is the first with ``LayerNormalization`` (onnxruntime 1.14 and later
        run it).

    Returns
    -------
    path : Path
        The file written. Its ``metadata_props`` hold :func:`export_metadata` as JSON under
        the key ``"skfastflow"``.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        When ``detector`` is not fitted.
    FileNotFoundError
        When the destination folder does not exist.
    ValueError
        When ``path`` ends with ``.xml``, which the runtime reads as an OpenVINO model.
    ImportError
        When the ``onnx`` package is missing (``pip install skfastflow[onnx]``).

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> from skfastflow import FastFlowDetector
    >>> from skfastflow.export import export_onnx
    >>> from skfastflow.runtime import RuntimeDetector
    >>> X = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    >>> detector = FastFlowDetector("test_resnet", pre_trained=False, input_size=32, flow_steps=1,
    ...                             max_iter=1, inference_precision="float32", random_state=0).fit(X)
    >>> path = export_onnx(detector, os.path.join(tempfile.mkdtemp(), "detector.onnx"))
    >>> runtime = RuntimeDetector(path)
    >>> bool(np.allclose(runtime.score_samples(X), detector.score_samples(X), atol=1e-5))
    True
    """
    import onnx  # torch's exporter needs it; named here so that a missing one says so

    metadata = export_metadata(detector)
    path = _checked_destination(path, "export")
    if path.suffix.lower() == ".xml":
        raise ValueError(f"{str(path)!r}: the runtime reads .xml files as OpenVINO models; name the ONNX file e.g. {path.stem}.onnx.")
    model = with_static_padding(copy.deepcopy(detector.model_).cpu().eval())
    # Tiled maps are standardised after stitching, by the runtime (metadata), not per tile by the graph.
    standardizer = getattr(detector, "map_standardizer_", None) if _tiling_of(detector) is None else None
    graph = ScoringGraph(model, detector.image_score_, standardizer).eval()
    # Two images (two grids of tiles): a batch of one could let the tracer treat the batch axis as a constant 1.
    example = torch.zeros(2 * model.n_positions, 3, *graph.model.input_size)
    with tempfile.TemporaryDirectory(prefix=".", dir=path.parent) as folder:
        traced = Path(folder) / "graph.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter announces its own deprecation, and the shape checks of
            # FastflowModel (Python comparisons of a traced shape) warn that they are not
            # recorded; the graph is only valid at input_size, which is what they check.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                graph,
                (example,),
                str(traced),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            )
        model = onnx.load(str(traced))
        _drop_empty_optional_inputs(model.graph, "Pad")
        onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
        onnx.checker.check_model(model)
        write_atomically(path, lambda file: file.write(model.SerializeToString()), "export")
    return path


def export_openvino(detector, path, *, opset: int = 17) -> Path:
    """Write ``detector``'s scoring path as an OpenVINO IR (``.xml`` and ``.bin`` beside it).

    The ONNX graph of :func:`export_onnx`, converted by OpenVINO and kept in float32 (OpenVINO
    would otherwise store the weights in float16).

    Parameters
    ----------
    detector : FastFlowDetector
        A fitted detector.
    path : str or path-like
        Destination ``*.xml``; the weights go to the same name with ``.bin``.
    opset : int, default=17
        ONNX opset of the intermediate graph.

    Returns
    -------
    path : Path
        The ``.xml`` file written; its ``rt_info`` holds :func:`export_metadata` as JSON
        under the key ``"skfastflow"``.

    Raises
    ------
    ValueError
        When ``path`` does not end with ``.xml``.
    ImportError
        When the ``openvino`` package is missing (``pip install openvino``).
    """
    import openvino

    path = _checked_destination(path, "export")
    if path.suffix.lower() != ".xml":
        raise ValueError(f"An OpenVINO model is an .xml file (weights in a .bin beside it), got {str(path)!r}; name it e.g. {path.stem}.xml.")
    with tempfile.TemporaryDirectory(prefix=".", dir=path.parent) as folder:
        onnx_path = export_onnx(detector, Path(folder) / "graph.onnx", opset=opset)
        model = openvino.convert_model(onnx_path)
        model.set_rt_info(json.dumps(export_metadata(detector)), [METADATA_KEY])
        staged = Path(folder) / path.name
        openvino.save_model(model, staged, compress_to_fp16=False)
        # Two files cannot be replaced at once: the old .xml goes first, so that an
        # interruption leaves no model rather than an .xml beside weights not its own.
        path.unlink(missing_ok=True)
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)
    return path


def _drop_empty_optional_inputs(graph, op_type: str) -> None:
    """Remove the empty trailing optional inputs of ``op_type`` nodes (the same node for ONNX).

    torch writes ``Pad`` with an empty third input (no ``constant_value``: zeros);
    onnxruntime's Pad fusion refuses a Pad with such an input, so the constant padding of
    :class:`StaticSamePadding` would stay a separate pass in plain layout instead of
    joining its convolution (measured: 4 Pad nodes and 3 pairs of layout reorders in
    ``tf_efficientnet_lite0``).
    """
    for node in graph.node:
        if node.op_type == op_type:
            while node.input and not node.input[-1]:
                node.input.pop()


def _checked_destination(path, verb: str) -> Path:
    path = Path(path).absolute()
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Cannot {verb} to {str(path)!r}: folder {str(path.parent)!r} does not exist; create it first.")
    return path
