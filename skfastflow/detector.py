"""``FastFlowDetector``: FastFlow image anomaly detection as a scikit-learn outlier detector."""

from __future__ import annotations

import copy
import functools
import math
import os
import warnings
from collections import Counter
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, column_or_1d

from .features import CachedFeatures, FeatureSubset, StreamedFeatures, batches_in_order
from .heap import reuse_freed_memory
from .images import ImageBatch, ImageCollection, TileView, resize_maps
from .map_standardization import GoodMapStatistics, MapStandardizer, returned_map_kind, statistics_size
from .metrics import _as_boolean_mask, _as_image_list
from .nn import FastflowLoss, FastflowModel
from .nn.anomaly_map import scores_by_rule
from .nn.model import as_size_pair
from .persistence import PicklableModel
from .threads import refresh as refresh_threads
from .threads import torch_threads
from .tiling import TileMapAssembler, check_tiling, stitched_scores, tile_boxes
from .verdicts import VerdictMixin
from .thresholds import (
    AUTO_CALIBRATION_FOLDS,
    AUTO_CROSS_FIT_BELOW,
    AUTO_FALSE_ALARM_RATE,
    DEFAULT_IMAGE_SCORE,
    IMAGE_SCORE_RULES,
    choose_image_score,
    conformal_p_values,
    labelled_offset,
    quantile_offset,
    robust_offset,
)

_LOG_2PI = math.log(2.0 * math.pi)


def resolve_device(device: str) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` into a usable device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'.") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but CUDA is not available here; use device='cpu' or 'auto'.")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} was asked for, but MPS is not available here; use device='cpu' or 'auto'.")
    return resolved


def _in_torch_threads(method):
    """Run a public method with torch's threads chosen by ``n_threads`` (:func:`skfastflow.threads.torch_threads`)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with torch_threads(self.n_threads):
            return method(self, *args, **kwargs)

    return run


class FastFlowDetector(VerdictMixin, PicklableModel, OutlierMixin, BaseEstimator):
    """Unsupervised image anomaly detection and localisation with FastFlow.

    A frozen pretrained CNN (or vision transformer) turns each image into feature maps;
    one 2D normalizing flow per feature scale learns the distribution of the features of
    good images. New images are scored by how unlikely their features are, pixel by
    pixel: :meth:`predict_maps` shows where a defect is, :meth:`score_samples` rates the
    whole image by its most anomalous pixels.

    Parameters
    ----------
    backbone : str, default="resnet18"
        timm model name of the feature extractor (``resnet18``, ``wide_resnet50_2``,
        ``tf_efficientnet_lite0``, ``cait_m48_448``, ``deit_base_distilled_patch16_384``, or
        any timm CNN with ``features_only``).
    pre_trained : bool, default=True
        Use pretrained backbone weights, downloaded by timm unless ``weights`` is given.
    weights : str or path-like, default=None
        Local file with the backbone's weights (timm state-dict naming, or the same tensors
        in timm's order), for machines without internet.
    input_size : int or tuple of int, default=256
        (height, width) to which every image (or every tile, with ``tile_size``) is resized
        before the backbone. For non-square images,
        :func:`skfastflow.tiling.aspect_input_size` gives one that keeps their aspect ratio.
    tile_size : int, tuple of int or None, default=None
        Cut images into tiles of this (height, width) in pixels of the image's own
        resolution, and resize each tile, not the image, to ``input_size``: ``tile_size =
        input_size`` keeps the native resolution, so defects a few pixels wide survive in
        large images. The flows train on the tiles of the good images; scoring stitches the
        tiles' maps back to the image's size (:mod:`skfastflow.tiling`, averaged where
        tiles overlap) and takes the image score over the stitched map (``tile_flows``: one
        flow for every tile position, or one per position). None: no tiling, each image is
        resized whole. Costs about as many times the compute as an image has tiles;
        ``docs/quality.md`` (*Tiling*) says when it pays.
    tile_stride : int, tuple of int or None, default=None
        Step between tiles in pixels, at most ``tile_size``; None: ``tile_size`` (tiles
        side by side, the last row and column flush with the image's edge). A smaller
        stride overlaps tiles: smoother maps, more compute.
    tile_flows : {"auto", "per_position", "shared"}, default="auto"
        With ``tile_size``: ``"per_position"`` trains one set of LayerNorms and flows per
        tile position, each on the tiles cut at that place of the good images (a part in a
        fixture looks different at every position), behind the one backbone; it needs
        images of one size, and refuses others when fitting and scoring. ``"shared"`` trains
        one set on every tile, wherever it lies (textures, sheets, webs; any image sizes).
        ``"auto"``: per position when the good images all have one size, else shared.
        Measured (``docs/quality.md``, *Tiling*): per position beat shared on both real sets
        of one image size, by 0.11 and 0.18 image AUROC and 0.06 and 0.15 AUPRO (pitting,
        tire; one seed). The same compute either way; the model
        holds ``n_positions`` times the flows. With per-position flows and
        ``standardize_maps``, :meth:`predict_maps` returns standardised maps (``map_kind_``):
        each position's raw maps lie at a level of their own. Ignored without tiling.
    flow_steps : int, default=8
        Coupling blocks per flow.
    conv3x3_only : bool, default=False
        Use 3x3 convolutions in every coupling subnet (else alternate 3x3 and 1x1).
    hidden_ratio : float, default=1.0
        Ratio of hidden to input channels in the coupling subnets.
    max_iter : int, default=20
        Maximum number of training epochs. The held-out likelihood of small training
        sets keeps improving long after the anomaly maps stop improving (see
        ``docs/quality.md``), so this bound, not early stopping, usually ends training on
        them.
    batch_size : int, default=32
        Images per optimisation step and per inference batch.
    learning_rate_init : float, default=1e-3
        Adam's learning rate.
    weight_decay : float, default=1e-5
        Adam's weight decay.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the good images, stop when their
        log-likelihood has not improved by ``tol`` for ``n_iter_no_change`` epochs, keep
        the best epoch's weights, and set ``offset_`` from their scores. When False, as
        in scikit-learn's MLP, nothing is held out: the flows train on every good image
        for ``max_iter`` epochs and ``offset_`` comes from the training images' own scores
        (as :class:`~sklearn.ensemble.IsolationForest` does). Those images were fitted, so
        they score as more normal than unseen good images: the threshold is tighter, and
        more good images are flagged than ``contamination`` says.
    validation_fraction : float, default=0.1
        Fraction of the (inlier) training images held out from flow training when
        ``early_stopping`` is True (at least one image); unused otherwise.
    n_iter_no_change : int, default=5
        Epochs without improvement before early stopping.
    tol : float, default=1e-3
        Minimum improvement of the held-out log-likelihood per dimension (nats).
    image_score : "auto", "max" or float, default="auto"
        How an anomaly map (at ``input_size``) becomes the image score of
        :meth:`score_samples`, :meth:`decision_function`, :meth:`predict` and ``offset_``:
        a float ``q`` in ``(0, 0.5]``, the mean of the map's highest ``round(q * H * W)``
        values (at least one), or ``"max"``, the map's maximum as in the paper. ``"auto"``
        chooses among :data:`skfastflow.thresholds.IMAGE_SCORE_RULES` (max, top 0.1 %, 1 %,
        5 %): the rule that best separates labelled defects given to ``fit`` from the
        calibration scores of good images (highest AUROC), or without labelled defects the mean of the top
        1 %, the rule within 0.01 image AUROC of the best one on every real set measured
        (``docs/quality.md``, *Image score*). The rule in effect is ``image_score_``.
    standardize_maps : bool, default=True
        Standardise each pixel of the anomaly map by the maps of the good images the flows
        trained on, ``(map - mean) / (std + median(std))`` per pixel
        (:mod:`skfastflow.map_standardization`), before the image score: a pixel scores by
        how unusual its value is *there*, so the places where good images' maps run hot as
        a matter of course (a rim, the edge of a fixture) stop drowning the defects.
        :meth:`predict_maps` still returns the raw maps, which localise better on whole
        images (with per-position tile flows, the standardised ones: ``map_kind_``). Measured on
        the four real sets (``docs/quality.md``, *Maps standardised per pixel*): image AUROC
        of default fits up by 0.03 to 0.17 on tire and magnetic_tile, level on pitting and
        glass, recall at ``offset_`` up; but more good images flagged where they drift from
        the training session (tire: 16 % at two of three seeds; recalibrate with
        :meth:`set_threshold` ``(good=...)``), and standardised maps localise worse on tire. The statistics come from the
        training images' maps (one more pass of the flows over the cached features, no
        backbone pass); cross-fitting standardises each fold by its own flows. False: the
        paper's and anomalib's image score, over the raw map, in ``[0, 1]``.
    contamination : "auto" or float, default="auto"
        Sets ``offset_`` from the scores of good images the flows did not train on,
        ``calibration_scores_`` (held-out images and out-of-fold scores, see
        ``calibration_cv``). With a float ``c``, ``offset_``
        is the ``c`` quantile of those scores (scikit-learn's meaning: about a share ``c`` of
        good images flagged). With ``"auto"`` and no labelled defects,
        ``offset_ = median - 2.054 * 1.4826 * MAD`` of those scores, but never above the
        score that flags 5 % of them (at least their lowest) when good scores are skewed or
        form a second mode (:func:`skfastflow.thresholds.robust_offset`): it aims at 2 %
        of good images flagged, and an atypical good image among them cannot drag it down, as it dragged
        the former rule (their minimum); with ``"auto"`` and labelled defects, the
        threshold that separates them from those good images best (maximum
        F1), but never one that flags less than the label-free threshold
        (:func:`skfastflow.thresholds.labelled_offset`; see ``target_recall``).
    target_recall : float in (0, 1] or None, default=None
        Only with labelled defects at ``fit`` and ``contamination="auto"``: place
        ``offset_`` to flag at least this share of them; None maximises their F1 score
        instead (anomalib's adaptive threshold). Defects are never trained on.
    calibration_cv : "auto", int >= 2 or None, default="auto"
        Cross-fitting for the calibration scores that set ``offset_`` and the p-values. With
        an int ``K``, the training images are split into ``K`` folds, and for each fold new
        flows train (as many epochs as the fitted model, on the cached features, so no
        second backbone pass) on the other folds and score it: every good image gets an
        out-of-fold score, and ``calibration_scores_`` holds those of all of them (with the
        held-out ones) instead of the held-out ones alone. It costs about ``K - 1`` extra
        trainings of the flows. ``"auto"``: 5 folds when fewer than 100 good images are held
        out (fewer than about 1000 good images at ``validation_fraction=0.1``), where the
        held-out scores' lowest few decide the good-score tail; none otherwise. None: the
        held-out images alone (the training images' own scores without
        ``early_stopping``). The fitted flows are the same either way; only
        the calibration changes (``docs/quality.md``, *Verdicts*). A model search whose
        scorer ignores ``offset_`` (likelihood, AUROC) runs faster with None.
    cache_features : bool, default=True
        Compute each training image's backbone features once and reuse them in every
        epoch (exact, since the backbone is frozen). Switch off when the features do not
        fit in memory. The cache is kept as float32 in memory when it fits a budget of
        ``min(4 GiB, half the available memory)``, else as float16 (relative rounding
        at most 5e-4), else in a memory-mapped temporary file (exact); see
        :mod:`skfastflow.features`.
    inference_precision : {"auto", "float32", "bfloat16"}, default="auto"
        Arithmetic of the convolutions when scoring (:meth:`score_samples`,
        :meth:`predict_maps`, ...), and when ``fit`` scores the good images that set
        ``offset_``; maps, scores and every other operation stay float32. ``"auto"`` runs the
        flows' convolutions in bfloat16 on CPUs with native bfloat16 (AVX512-BF16 or AMX),
        as ``training_precision="auto"`` trains them, and the backbone in float32: resnet18
        scores about 1.2 times as fast as in float32 (tf_efficientnet_lite0, whose flows
        are small, about as fast), image scores of raw maps move by at most 4e-4 from
        float32's (mean 6e-5; those scores lie in [0, 1]; standardised maps divide these
        differences by their per-pixel scale, as they divide every score) and the measured
        detection metrics by at most 2e-4 (``docs/quality.md``). Elsewhere (other CPUs, GPUs) it is float32. ``"float32"``
        gives the same scores on every machine, up to float32 rounding (about 1e-7).
        ``"bfloat16"`` runs the backbone's convolutions in bfloat16 too, everywhere
        (emulated, hence slow, on CPUs without native bfloat16): about 1.6 times as fast
        as float32, but the backbone's rounding costs detection quality, the more the
        longer the flows were trained (magnetic_tile AUPRO -0.004 on average after 10
        epochs, -0.012 to -0.016 after 20; pixel AUROC -0.007 to -0.011). In every
        precision an image's score does not depend on the batch it is scored in. A
        detector fitted where ``"auto"`` meant bfloat16 and used where it means float32 (or
        the reverse) scores up to the amounts above differently against its ``offset_``.
    training_precision : {"auto", "float32", "bfloat16"}, default="auto"
        Arithmetic of the flows' convolutions during ``fit``; every other operation, the
        loss, the held-out scores and the weights stay float32 (mixed precision).
        ``"auto"`` uses bfloat16 on CPUs with native bfloat16 (AVX512-BF16 or AMX), where it
        trains 1.2 to 1.5 times faster with the same detection quality (glass and
        magnetic_tile: AUROCs within 0.001 of float32, ``docs/quality.md``), and float32
        elsewhere (other CPUs, GPUs). ``"float32"`` gives the same weights on every
        machine up to float rounding. Either way, the feature cache stays exact.
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    n_threads : int or None, default=None
        CPU threads torch computes with during each call (``fit`` and every scoring
        method); torch's own setting is restored when the call returns or raises. None
        chooses by itself (:mod:`skfastflow.threads`): one thread per core that other
        programs leave idle, at least 1 and at most torch's setting, measured when the call
        starts and again between batches. On a quiet machine that is torch's setting; with
        a busy neighbour fewer threads, which then do not wait for a thread that shares
        the neighbour's core (2 cores, a busy loop on one: torch's 2 threads ran at 0.35
        times their quiet speed). An explicit torch setting wins over None and is kept:
        ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment, or
        ``torch.set_num_threads(k)`` called after importing skfastflow with a ``k`` other
        than torch's default. Without ``/proc/stat`` (macOS, Windows) None keeps torch's
        setting. An int fixes the count for the call. This is not scikit-learn's
        ``n_jobs`` (parallel jobs, processes): it is the number of threads inside each
        torch operation. Thread counts change float rounding only (image scores
        within 2e-8 measured between 1 and 2 threads); fix ``n_threads`` for bit-identical
        runs whatever the machine's load.
    random_state : int, RandomState instance or None, default=None
        Controls weight initialisation, the held-out split and the batch order. Torch's
        global generator is left untouched. Two fits with the same ``random_state`` give
        bit-identical models when they compute with the same number of threads: with
        ``n_threads=None`` that number follows the machine's load, so they may differ by
        float rounding (scores by about 1e-7); fix ``n_threads`` for bit-identical refits.
    verbose : int, default=0
        Show a progress bar with the training loss when positive.

    Attributes
    ----------
    model_ : FastflowModel
        The trained torch model (in eval mode).
    offset_ : float
        Threshold on ``score_samples``: ``decision_function = score_samples - offset_``.
    loss_curve_ : list of float
        Mean FastFlow training loss of each epoch, unnormalised as in the paper and
        anomalib (it grows with the number of feature dimensions, so only its trend means
        something).
    loss_per_dimension_curve_ : list of float
        The same loss as a negative log-likelihood per feature dimension in nats
        (``loss / D + 0.5 * log(2 * pi)``): comparable across backbones and input sizes,
        and directly with ``-validation_scores_``. Divide by ``log(2)`` for bits per
        dimension.
    validation_scores_ : list of float or None
        Held-out mean log-likelihood per feature dimension after each epoch; None
        without ``early_stopping``.
    best_validation_score_ : float or None
        Best value of ``validation_scores_``, whose epoch's weights are kept; None
        without ``early_stopping``.
    best_epoch_ : int
        Epoch (1-based) whose weights the model holds.
    n_iter_ : int
        Number of epochs run.
    n_train_samples_ : int
        Images the flow was trained on.
    n_validation_samples_ : int
        Held-out good images (0 without ``early_stopping``).
    device_ : torch.device
        Device the model runs on.
    image_score_ : "max" or float
        The image-score rule in effect (``image_score`` with ``"auto"`` resolved).
    tiling_ : ((int, int), (int, int)) or None
        Tile size and stride the flows were trained with and that scoring uses
        (``tile_size``, ``tile_stride`` as (height, width) pairs); None without tiling.
    tile_grid_size_ : (int, int) or None
        With per-position flows (``tile_flows``): the ``(height, width)`` of the images whose
        tile positions they model; images of another size are refused. None otherwise.
    map_standardizer_ : MapStandardizer or None
        Per-pixel mean and scale of the training images' maps
        (:class:`skfastflow.map_standardization.MapStandardizer`; at ``input_size``, or with
        tiling at the training images' most common size, resized to each map's size), which
        standardise every map before its image score (``map_standardizer_(m)`` for a map ``m``
        of any size); None without ``standardize_maps``.
    map_kind_ : {"raw", "standardized"}
        The map :meth:`predict_maps` returns: the standardised one with per-position tile
        flows and ``map_standardizer_`` (their raw maps have a seam of level at every tile
        border), else the raw one.
    calibration_folds_ : int or None
        Folds of the cross-fitting behind ``calibration_scores_`` (``calibration_cv``
        resolved); None without.
    calibration_scores_ : ndarray of shape (n_calibration,), dtype float64
        Scores (``image_score_``) of good images by flows that never trained on them, which
        set ``offset_``: the held-out images' (``n_validation_samples_``), and with
        cross-fitting (``calibration_folds_``) the out-of-fold scores of the training images
        too (``n_calibration = n_train_samples_ + n_validation_samples_``). Without
        either, the training images' own scores. :meth:`p_values` compares new scores with
        them; ``thresholds.conformal_offset(calibration_scores_, rate)`` is the threshold for
        another false-alarm rate, and :meth:`set_threshold` changes the rule or the
        operating point, without retraining the flows.
    defect_scores_ : ndarray of shape (n_labelled_defects,), dtype float64, or None
        Scores of the labelled defects given to ``fit`` (``y == -1``), never trained on;
        None without them.
    colour_mode_ : {"grey", "colour", "mixed"}
        Whether the good training images were all grey (one channel, or three equal
        channels), all colour, or both. A detector fitted on grey images scores colour
        images and warns about each (colour on a grey part is a defect to flag); one
        fitted on colour images warns about grey images. The warnings are
        :class:`~skfastflow.files.ImageWarning` s naming the image's position in ``X``.

    See Also
    --------
    sklearn.ensemble.IsolationForest : Same conventions, for tabular data.

    Notes
    -----
    The image score is the mean of the top 1 % of the anomaly map at ``input_size`` (or
    another fraction, or its maximum: ``image_score``), negated so that lower means more
    abnormal, as in scikit-learn. With ``standardize_maps`` (the default) the map is first
    put in units of the good images' spread at each pixel (``map_standardizer_``): about 0
    where a pixel is as usual, a few units at the good images' hottest pixels, tens at clear
    defects; the scores are their negated top values, so good images score around -1 to -5
    and defects lower (no fixed range). Without it, ``score_samples`` lies in ``[0, 1]``.
    Maps (:meth:`predict_maps`) are raw either way, in ``[-1, 0]``, except with per-position
    tile flows (``map_kind_``); ``map_standardizer_(m)`` gives the standardised map behind the
    score of a raw map ``m``.

    Labelled defects (``y == -1`` in :meth:`fit`) are scored, never trained on: they only
    choose the image-score rule (``image_score="auto"``) and place the threshold
    (``contamination="auto"``), as anomalib's adaptive threshold does, but from fit data.
    Changing the rule or the operating point after ``fit`` needs no retraining:
    :meth:`set_threshold`.

    References
    ----------
    Yu, J. et al. (2021). FastFlow: Unsupervised Anomaly Detection and Localization via 2D
    Normalizing Flows. arXiv:2111.07677.

    Examples
    --------
    >>> import numpy as np
    >>> from skfastflow import FastFlowDetector
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(100, 140, size=(8, 64, 64, 3), dtype=np.uint8)
    >>> detector = FastFlowDetector("test_resnet", pre_trained=False, input_size=64,
    ...                             max_iter=2, random_state=0).fit(X)
    >>> detector.predict(X[:2]).shape
    (2,)
    """

    _parameter_constraints: dict = {
        "backbone": [str],
        "pre_trained": ["boolean"],
        "weights": [str, os.PathLike, None],
        "input_size": [Interval(Integral, 1, None, closed="left"), tuple],
        "tile_size": [Interval(Integral, 1, None, closed="left"), tuple, None],
        "tile_stride": [Interval(Integral, 1, None, closed="left"), tuple, None],
        "tile_flows": [StrOptions({"auto", "per_position", "shared"})],
        "flow_steps": [Interval(Integral, 1, None, closed="left")],
        "conv3x3_only": ["boolean"],
        "hidden_ratio": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "image_score": [StrOptions({"auto", "max"}), Interval(Real, 0, 0.5, closed="right")],
        "standardize_maps": ["boolean"],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "target_recall": [Interval(Real, 0, 1, closed="right"), None],
        "calibration_cv": [StrOptions({"auto"}), Interval(Integral, 2, None, closed="left"), None],
        "cache_features": ["boolean"],
        "inference_precision": [StrOptions({"auto", "float32", "bfloat16"})],
        "training_precision": [StrOptions({"auto", "float32", "bfloat16"})],
        "device": [str],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        backbone="resnet18",
        *,
        pre_trained=True,
        weights=None,
        input_size=256,
        tile_size=None,
        tile_stride=None,
        tile_flows="auto",
        flow_steps=8,
        conv3x3_only=False,
        hidden_ratio=1.0,
        max_iter=20,
        batch_size=32,
        learning_rate_init=1e-3,
        weight_decay=1e-5,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=5,
        tol=1e-3,
        image_score="auto",
        standardize_maps=True,
        contamination="auto",
        target_recall=None,
        calibration_cv="auto",
        cache_features=True,
        inference_precision="auto",
        training_precision="auto",
        device="auto",
        n_threads=None,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.pre_trained = pre_trained
        self.weights = weights
        self.input_size = input_size
        self.tile_size = tile_size
        self.tile_stride = tile_stride
        self.tile_flows = tile_flows
        self.flow_steps = flow_steps
        self.conv3x3_only = conv3x3_only
        self.hidden_ratio = hidden_ratio
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.weight_decay = weight_decay
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.image_score = image_score
        self.standardize_maps = standardize_maps
        self.contamination = contamination
        self.target_recall = target_recall
        self.calibration_cv = calibration_cv
        self.cache_features = cache_features
        self.inference_precision = inference_precision
        self.training_precision = training_precision
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting

    @_fit_context(prefer_skip_nested_validation=True)
    @_in_torch_threads
    def fit(self, X, y=None):
        """Learn the feature distribution of good images.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W[, C]) or list
            Images: a uint8 (0..255) or float (0..1) array, or a list of arrays, PIL
            images or file paths of any sizes. Grey images are repeated to RGB. Files
            and PIL images are read as an image viewer shows them
            (:func:`skfastflow.files.read_image`: EXIF orientation, colour profile...).
        y : array-like of shape (n_samples,) or pixel masks, default=None
            Optional labels, 1 for good (inlier) and -1 for defective (outlier) images.
            The flows train on inliers only. Outliers are scored with the trained model
            and only choose the image-score rule (``image_score="auto"``) and place
            ``offset_`` (``contamination="auto"``, ``target_recall``). Lets
            ``cross_val_score`` with labelled folds train on good images only. Pixel masks
            ((n_samples, H, W) or a list of 2-D arrays, 1 = defect) are accepted too, as for
            the pixel scorers of :mod:`skfastflow.scoring`: images whose mask is empty are
            the good ones.

        Returns
        -------
        self : FastFlowDetector
            The fitted detector.

        Raises
        ------
        ValueError, TypeError
            For unusable images or labels; the message names the problem and the fix.
        FloatingPointError
            When the training loss or the held-out scores become NaN or infinite.

        Notes
        -----
        The new model is built aside and replaces the old one only when training ends, so an
        error or a ``KeyboardInterrupt`` leaves a previously fitted detector unchanged.
        """
        input_size = self._check_input_size()
        tiling = check_tiling(self.tile_size, self.tile_stride)
        images = ImageCollection(X)
        inliers, outliers = self._labelled_indices(y, len(images))
        device = resolve_device(self.device)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        train_indices, validation_indices = self._split(inliers, rng)

        # Everything is built in locals and assigned at the end, so that an error or a
        # KeyboardInterrupt leaves a previously fitted detector as it was.
        train_items = _training_items(images, train_indices, tiling)
        validation_items = _training_items(images, validation_indices, tiling) if self.early_stopping else None
        tile_grid_size = self._tile_grid_size(tiling, train_items[0], None if validation_items is None else validation_items[0])
        model = self._new_model(input_size, seed, tiling, tile_grid_size)
        if all(height == 1 and width == 1 for _, height, width in model.feature_shapes):
            raise ValueError(
                f"input_size={input_size} is too small for backbone {self.backbone!r}: every feature map is 1x1, so "
                "anomaly maps would be constant. Use a larger input_size (256 is usual; source images of any size "
                "are resized to it)."
            )
        model.to(device)
        train_features = self._feature_source(model, *train_items, device)
        validation_features = (
            CachedFeatures(StreamedFeatures(model, *validation_items, device), self.batch_size) if validation_items is not None else None
        )
        with reuse_freed_memory():
            history = self._train(model, train_features, validation_features, rng)

        model.eval()
        standardizer = None
        if self.standardize_maps:
            standardizer = _standardizer_or_none(self._good_map_statistics(model, train_features, device, train_items[0] if tiling is not None else None))
        # offset_ comes from good images the flows did not train on: out-of-fold scores of the
        # training images (cross-fitting) and the held-out ones; without either, (as
        # IsolationForest does) from the training images themselves.
        n_folds = self._n_calibration_folds(len(validation_indices), len(train_indices))
        parts = []
        if n_folds is not None:
            parts.append(
                self._cross_fit(
                    n_folds, history["best_epoch"], input_size, tile_grid_size, images, train_indices, train_items[0], train_features, device, tiling, rng, standardizer
                )
            )
        if len(validation_indices):
            parts.append(self._threshold_scores(model, images, validation_indices, validation_features, device, tiling, standardizer))
        if not parts:
            parts.append(self._threshold_scores(model, images, train_indices, train_features, device, tiling, standardizer))
        calibration = _concatenate_by_rule(parts)
        defect_scores = self._rule_scores(model, images, device, outliers, tiling=tiling, standardizer=standardizer) if len(outliers) else None
        if not all(np.isfinite(scores).all() for scores in calibration.values()):
            # A model that scores NaN would silently call every image an inlier.
            raise FloatingPointError(
                f"The trained model gives non-finite scores to good images (epoch {history['best_epoch']}); "
                f"lower learning_rate_init (now {self.learning_rate_init}) or check the images for constant or corrupt content."
            )
        self.model_ = model
        self._fitted_model_config = self._model_config(input_size, model.n_positions)
        self.tiling_ = tiling
        self.tile_grid_size_ = tile_grid_size
        self.map_standardizer_ = standardizer
        self.device_ = device
        self.loss_curve_ = history["loss_curve"]
        self.loss_per_dimension_curve_ = history["loss_per_dimension_curve"]
        self.validation_scores_ = history["validation_scores"] if self.early_stopping else None
        self.best_validation_score_ = history["best_validation_score"] if self.early_stopping else None
        self.best_epoch_ = history["best_epoch"]
        self.n_iter_ = len(history["loss_curve"])
        self.n_train_samples_ = len(train_indices)
        self.n_validation_samples_ = len(validation_indices)
        self.calibration_folds_ = n_folds
        self._calibration_by_rule, self._defect_scores_by_rule = calibration, defect_scores
        self._set_operating_point()
        self.colour_mode_ = images.colour_mode
        return self

    def _tile_grid_size(self, tiling, *tile_views) -> tuple[int, int] | None:
        """The image size whose tile positions get flows of their own (``tile_flows``), or None for one shared flow.

        ``tile_views``: the :class:`TileView` of the training and held-out images (None: absent).
        """
        if tiling is None or self.tile_flows == "shared":
            return None
        sizes = Counter(size for view in tile_views if view is not None for size in view.image_sizes.values())
        if len(sizes) == 1:
            (size,) = sizes
            # One tile per image: its one position's flows are the shared ones, for images of any size.
            return size if len(tile_boxes(size, *tiling)) > 1 else None
        if self.tile_flows == "per_position":
            common = ", ".join(f"{height}x{width} ({count} images)" for (height, width), count in sizes.most_common(3))
            raise ValueError(
                f"tile_flows='per_position' needs good images of one size, whose tiles lie at the same positions; got "
                f"{len(sizes)} sizes: {common}{', ...' if len(sizes) > 3 else ''}. Crop or resize the images to one size, "
                "or pass tile_flows='shared' (one flow for every tile, any image size)."
            )
        return None

    def _new_model(self, input_size: tuple[int, int], seed: int, tiling=None, tile_grid_size=None) -> FastflowModel:
        """A FastflowModel of this configuration, its flows initialised from ``seed``: one set, or one
        per tile position of an image of ``tile_grid_size`` cut by ``tiling``."""
        n_positions = 1 if tile_grid_size is None else len(tile_boxes(tile_grid_size, *tiling))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = FastflowModel(
                input_size,
                self.backbone,
                pre_trained=self.pre_trained,
                flow_steps=self.flow_steps,
                conv3x3_only=self.conv3x3_only,
                hidden_ratio=self.hidden_ratio,
                weights=self.weights,
                n_positions=n_positions,
            )
        model.tile_grid_size = tile_grid_size
        return model

    def _n_calibration_folds(self, n_held_out: int, n_train: int) -> int | None:
        """Folds of cross-fitting (``calibration_cv``), None for none."""
        if self.calibration_cv is None:
            return None
        if self.calibration_cv == "auto":
            return min(AUTO_CALIBRATION_FOLDS, n_train) if n_held_out < AUTO_CROSS_FIT_BELOW and n_train >= 2 else None
        if self.calibration_cv > n_train:
            raise ValueError(
                f"calibration_cv={self.calibration_cv} needs at least as many training images, got {n_train}; "
                "lower calibration_cv or pass calibration_cv=None (held-out images only)."
            )
        return self.calibration_cv

    def _cross_fit(self, n_folds, n_epochs, input_size, tile_grid_size, images, train_indices, train_items, train_features, device, tiling, rng, standardizer) -> dict:
        """Out-of-fold ``{rule: scores}`` of the training images (``train_indices``, in fold order).

        The training images fall into ``n_folds`` folds at random; for each fold, fresh
        flows train for ``n_epochs`` epochs (those of the fitted model) on the cached
        features of the other folds, then score the fold's images as :meth:`score_samples`
        would: with the fitted flows' ``standardizer`` (None: raw maps), their maps are
        standardised by the fold's flows' maps of the other folds (by ``standardizer`` itself
        when those give no spread). Every image is thus scored by flows that never saw it.
        Tiles stay with their image's fold.
        """
        if self.verbose:
            print(f"Cross-fitting {n_folds} folds for the calibration scores (calibration_cv)")
        fold_of_image = rng.permutation(len(train_indices)) % n_folds
        # Training items are the images themselves, or their tiles (TileView.owners: the image of each tile).
        item_images = np.searchsorted(train_indices, train_items.owners) if tiling is not None else np.arange(len(train_indices))
        parts = []
        for fold in range(n_folds):
            model = self._new_model(input_size, int(rng.randint(np.iinfo(np.int32).max)), tiling, tile_grid_size).to(device)
            outside = FeatureSubset(train_features, np.flatnonzero(fold_of_image[item_images] != fold))
            with reuse_freed_memory():
                self._train(model, outside, None, rng, n_epochs=n_epochs, monitored=False)
            model.eval()
            # Each fold's maps are standardised by its own flows' maps of its own training images, as the fitted flows' are.
            fold_standardizer = None
            if standardizer is not None:
                try:
                    fold_standardizer = self._good_map_statistics(model, outside, device, train_items if tiling is not None else None).result()
                except ValueError:  # the fold's images give no spread (copies of one image): the fitted flows' statistics
                    fold_standardizer = standardizer
            held = np.flatnonzero(fold_of_image == fold)
            # Tiled images are scored through the scoring path (stitched maps), not from tile features.
            held_features = FeatureSubset(train_features, held) if tiling is None else None
            parts.append(self._threshold_scores(model, images, train_indices[held], held_features, device, tiling, fold_standardizer))
        return _concatenate_by_rule(parts)

    def _check_input_size(self) -> tuple[int, int]:
        if isinstance(self.input_size, tuple):
            if len(self.input_size) != 2 or not all(isinstance(v, Integral) and v > 0 for v in self.input_size):
                raise ValueError(f"input_size={self.input_size!r} must be an int or a pair of positive ints (height, width).")
        return as_size_pair(self.input_size)

    @staticmethod
    def _labelled_indices(y, n_images: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the good (``y == 1``) and of the defective (``y == -1``) images."""
        if y is None:
            return np.arange(n_images), np.arange(0)
        if _holds_pixel_masks(y):
            # Pixel masks, the y of the pixel scorers in skfastflow.scoring: an image is good
            # when its mask marks no defect pixel. Lets GridSearchCV fit with masks as y.
            masks = _as_image_list(y, "y")
            y = np.array([-1 if np.any(_as_boolean_mask(mask, index)) else 1 for index, mask in enumerate(masks)])
        y = column_or_1d(y, warn=True)
        if len(y) != n_images:
            raise ValueError(f"y has {len(y)} labels but X has {n_images} images; pass one label per image.")
        unknown = set(np.unique(y).tolist()) - {1, -1}
        if unknown:
            raise ValueError(f"y may only hold 1 (good) and -1 (defective), got also {sorted(unknown)}.")
        inliers = np.flatnonzero(y == 1)
        if len(inliers) == 0:
            raise ValueError("y marks no image as good (1); the detector learns from good images.")
        return inliers, np.flatnonzero(y == -1)

    def _split(self, indices: np.ndarray, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        """Hold out ``validation_fraction`` of the good images (at least one) when early stopping needs them.

        Without early stopping every good image is trained on, as in scikit-learn's MLP.
        """
        if not self.early_stopping:
            return np.sort(indices), indices[:0]
        if len(indices) < 2:
            raise ValueError(
                f"FastFlowDetector with early_stopping=True needs at least 2 good images (one to train on, one held "
                f"out to stop training and set offset_), got {len(indices)}; add good images or pass early_stopping=False."
            )
        n_validation = min(max(1, math.ceil(self.validation_fraction * len(indices))), len(indices) - 1)
        shuffled = rng.permutation(indices)
        return np.sort(shuffled[n_validation:]), np.sort(shuffled[:n_validation])

    def _feature_source(self, model, images, indices, device):
        """Training features: cached once (default) or recomputed every epoch."""
        source = StreamedFeatures(model, images, indices, device)
        return CachedFeatures(source, self.batch_size) if self.cache_features else source

    def _train(self, model, train_features, validation_features, rng, n_epochs=None, monitored=True) -> dict:
        """Run Adam over the flows (and LayerNorms) for up to ``n_epochs`` (``max_iter``); return the training history.

        ``monitored``: whether :meth:`_after_epoch` sees the epochs (not those of cross-fitting's folds).
        """
        n_epochs = self.max_iter if n_epochs is None else n_epochs
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=self.learning_rate_init, weight_decay=self.weight_decay)
        loss_function = FastflowLoss()
        history = {"loss_curve": [], "loss_per_dimension_curve": [], "validation_scores": [], "best_validation_score": -np.inf, "best_epoch": 0}
        best_state, epochs_without_improvement = None, 0
        progress = _progress_bar(n_epochs, self.verbose)
        for epoch in range(1, n_epochs + 1):
            model.train()
            order = rng.permutation(len(train_features))
            epoch_loss = 0.0
            for start in range(0, len(order), self.batch_size):
                positions = order[start : start + self.batch_size]
                refresh_threads()
                batch = train_features.batch(positions)  # outside autocast: the backbone stays float32
                with _autocast(self.training_precision, train_features.device):
                    hidden_variables, log_jacobians = model.encode(batch, _tile_positions(model, train_features, positions))
                loss = loss_function(hidden_variables, log_jacobians)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"The training loss became {loss.item()} in epoch {epoch}; lower learning_rate_init "
                        f"(now {self.learning_rate_init}) or check the images for constant or corrupt content."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch_loss += loss.item() * len(positions)
            history["loss_curve"].append(epoch_loss / len(order))
            history["loss_per_dimension_curve"].append(history["loss_curve"][-1] / _n_dimensions(model) + 0.5 * _LOG_2PI)

            model.eval()
            postfix = {"nll_per_dim": f"{history['loss_per_dimension_curve'][-1]:.4f}"}
            if validation_features is not None:  # None without early stopping: nothing held out
                validation_score = float(np.mean(self._log_likelihoods(model, validation_features)))
                history["validation_scores"].append(validation_score)
                if validation_score > history["best_validation_score"] + self.tol:
                    epochs_without_improvement = 0
                else:
                    epochs_without_improvement += 1
                if validation_score > history["best_validation_score"]:
                    history["best_validation_score"] = validation_score
                    history["best_epoch"] = epoch
                    best_state = copy.deepcopy({k: v for k, v in model.state_dict().items() if not k.startswith("feature_extractor.")})
                postfix["held_out_nll_per_dim"] = f"{-validation_score:.4f}"
            if monitored:
                self._after_epoch(epoch, model, train_features, validation_features, history)
            progress.set_postfix(**postfix)
            progress.update()
            if self.early_stopping and epochs_without_improvement >= self.n_iter_no_change:
                break
        progress.close()
        if self.early_stopping and best_state is not None:
            model.load_state_dict(best_state, strict=False)
        else:
            history["best_epoch"] = len(history["loss_curve"])
        return history

    def _after_epoch(self, epoch: int, model: FastflowModel, train_features, validation_features, history: dict) -> None:
        """Called after each epoch's validation with the model in eval mode; does nothing.

        ``validation_features`` is None without early stopping.

        A hook for monitoring the training trajectory without a second fit:
        ``benchmarks/quality.py`` overrides it to measure test metrics epoch by epoch.
        """

    def _candidate_rules(self) -> tuple:
        """The image-score rules ``fit`` scores its calibration images under: the documented
        set, plus ``image_score`` when it is another fraction."""
        extra = () if self.image_score in ("auto", *IMAGE_SCORE_RULES) else (self.image_score,)
        return (*IMAGE_SCORE_RULES, *extra)

    def _set_operating_point(self) -> None:
        """Set ``image_score_``, ``calibration_scores_``, ``defect_scores_`` and ``offset_`` from
        the stored per-rule scores of the calibration images and labelled defects."""
        defects = self._defect_scores_by_rule
        if self.image_score != "auto":
            rule = self.image_score
        elif defects is not None:
            rule = choose_image_score(
                {rule: self._calibration_by_rule[rule] for rule in IMAGE_SCORE_RULES},
                {rule: defects[rule] for rule in IMAGE_SCORE_RULES},
            )
        else:
            rule = DEFAULT_IMAGE_SCORE
        if rule not in self._calibration_by_rule:
            raise ValueError(
                f"image_score={rule!r} was not scored at fit time, which scored {list(self._calibration_by_rule)}; "
                "choose one of those, or refit the detector with this image_score."
            )
        good = self._calibration_by_rule[rule]
        if self.contamination != "auto":
            offset = quantile_offset(good, self.contamination)
        elif defects is not None:
            offset = labelled_offset(good, defects[rule], target_recall=self.target_recall)
        else:
            offset = robust_offset(good, AUTO_FALSE_ALARM_RATE)
        self.image_score_ = rule
        self.calibration_scores_ = good
        self.defect_scores_ = None if defects is None else defects[rule]
        self.offset_ = float(offset)

    @_in_torch_threads
    def set_threshold(self, *, image_score=None, contamination=None, target_recall="unchanged", good=None, defects=None):
        """Change the image-score rule or the operating point of a fitted detector, without retraining.

        Sets the given parameters (as :meth:`set_params` would) and recomputes
        ``image_score_``, ``calibration_scores_``, ``defect_scores_`` and ``offset_`` from
        the scores ``fit`` kept of its held-out good images and labelled defects, exactly
        as ``fit`` would have set them with these parameters. The flows are untouched:
        labelled defects never influence them, so ``fit(X, y)`` and ``fit(X_good)`` followed
        by ``set_threshold(defects=X_defective)`` give the same detector.

        Parameters
        ----------
        image_score : "auto", "max" or float, default=None
            A rule from :data:`skfastflow.thresholds.IMAGE_SCORE_RULES`, or the fraction the
            detector was fitted with; None keeps the current one.
        contamination : "auto" or float in (0, 0.5], default=None
            None keeps the current one. A float is the share of good images to flag.
        target_recall : float in (0, 1] or None, default="unchanged"
            With labelled defects at fit; see the class parameters.
        good : array-like or list, default=None
            Good images the flows were not trained on (as ``X`` of :meth:`fit`), which
            replace the held-out images as ``calibration_scores_``: recalibrate the
            threshold and the p-values on images from the line as it is now (new lighting,
            a new batch of parts) without retraining. They must not be training images,
            whose scores are too normal.
        defects : array-like or list, default=None
            Images of defective parts (as ``X`` of :meth:`fit`) that replace the labelled
            defects given to ``fit``; they are scored, never trained on.

        Returns
        -------
        self : FastFlowDetector

        Raises
        ------
        ValueError
            For a rule that ``fit`` did not score, or an invalid value.

        Examples
        --------
        Flag about 5 % of good images from now on (``contamination=0.05``), or choose the
        threshold from the conformal p-values instead::

            detector.set_threshold(contamination=0.05)
            detector.offset_ = thresholds.conformal_offset(detector.calibration_scores_, 0.05)
        """
        check_is_fitted(self)
        if good is not None:
            self._calibration_by_rule = self._scores_of_every_rule(good, "good")
        if defects is not None:
            self._defect_scores_by_rule = self._scores_of_every_rule(defects, "defects")
        changes = {"image_score": image_score, "contamination": contamination}
        changes = {name: value for name, value in changes.items() if value is not None}
        if target_recall != "unchanged":
            changes["target_recall"] = target_recall
        previous = self.get_params(deep=False)
        self.set_params(**changes)
        try:
            self._validate_params()
            self._set_operating_point()
        except ValueError:
            self.set_params(**{name: previous[name] for name in changes})
            raise
        return self

    # ------------------------------------------------------------------ scoring core

    def _log_likelihoods(self, model: FastflowModel, features) -> np.ndarray:
        """Per-image log-likelihood per feature dimension (nats) of cached features."""
        dimensions = _n_dimensions(model)
        values = []
        with torch.inference_mode():
            for start, batch in enumerate(batches_in_order(features, self.batch_size)):
                items = np.arange(start * self.batch_size, start * self.batch_size + len(batch[0]))
                hidden_variables, log_jacobians = model.encode(batch, _tile_positions(model, features, items))
                negative_log_likelihood = sum(
                    0.5 * torch.sum(z**2, dim=(1, 2, 3)) - log_jacobian for z, log_jacobian in zip(hidden_variables, log_jacobians)
                )
                values.append((-negative_log_likelihood / dimensions - 0.5 * _LOG_2PI).double().cpu().numpy())
        return np.concatenate(values)

    def _threshold_scores(self, model: FastflowModel, images: ImageCollection, indices: np.ndarray, features, device: torch.device, tiling, standardizer) -> dict:
        """``{rule: scores}`` of the good images that set ``offset_``, exactly as :meth:`score_samples` gives them.

        ``features`` holds those images' backbone features (in the same order). A float32
        scoring backbone computes the same features to the bit (whatever the batch), so
        the flows run on them when they are exact; a bfloat16 backbone rounds differently
        and a float16 cache is rounded, so then the images take the scoring path itself
        (one more backbone pass over them), lest a good image score differently in ``fit``
        than in :meth:`score_samples`. With tiling, ``features`` are the tiles' and the
        images' scores come from their stitched maps: the scoring path too.
        """
        if tiling is not None or _backbone_precision(self.inference_precision) == "bfloat16" or not features.exact:
            return self._rule_scores(model, images, device, indices, tiling=tiling, standardizer=standardizer)
        rules = self._candidate_rules()
        with torch.inference_mode():
            parts = [
                _scores_by_rule(_standardized(self._flow_maps(model, batch, device), standardizer), rules)
                for batch in batches_in_order(features, self.batch_size)
            ]
        return _concatenate_by_rule(parts)

    def _scores_of_every_rule(self, X, name: str) -> dict:
        """``{rule: scores}`` of images ``X`` under every rule ``fit`` scored its calibration images with."""
        images = ImageCollection(X, name=name, fitted_colour_mode=self.colour_mode_)
        scores = self._rule_scores(
            self.model_, images, self.device_, np.arange(len(images)), tuple(self._calibration_by_rule), self.tiling_, self.map_standardizer_
        )
        if not all(np.isfinite(values).all() for values in scores.values()):
            raise FloatingPointError(f"The model gives non-finite scores to the images of {name}; check them for corrupt content.")
        return scores

    def _rule_scores(
        self, model: FastflowModel, images: ImageCollection, device: torch.device, indices: np.ndarray, rules=None, tiling=None, standardizer=None
    ) -> dict:
        """``{rule: scores}`` of the images at ``indices`` through the scoring path, for every candidate rule."""
        rules = self._candidate_rules() if rules is None else rules
        return _concatenate_by_rule(
            [_scores_by_rule(_standardized(maps, standardizer), rules) for _, maps in self._image_maps(model, images, device, indices, tiling)]
        )

    def _image_scores(self, maps) -> torch.Tensor:
        """``score_samples`` of anomaly maps (see :meth:`_image_maps`) under ``image_score_``: the one rule."""
        return _scores_by_rule(_standardized(maps, self.map_standardizer_), (self.image_score_,))[self.image_score_]

    def _good_map_statistics(self, model: FastflowModel, features, device: torch.device, tiles: TileView | None) -> GoodMapStatistics:
        """The per-pixel :class:`~skfastflow.map_standardization.GoodMapStatistics` of the maps of
        the good images whose features are ``features`` (the flows' own training images).

        From the cached features, so without a second backbone pass. With tiling, ``features``
        are tiles of ``tiles`` (a ``FeatureSubset``'s positions, else all of them; each image's
        tiles consecutive), whose maps are stitched image by image.
        """
        with torch.inference_mode():
            if tiles is None:
                statistics = GoodMapStatistics(statistics_size([model.input_size]))
                for batch in batches_in_order(features, self.batch_size):
                    for anomaly_map in self._flow_maps(model, batch, device)[:, 0].float().cpu().numpy():
                        statistics.add(anomaly_map)
                return statistics
            positions = features.positions if isinstance(features, FeatureSubset) else np.arange(len(tiles))
            owners, boxes = tiles.owners[positions].tolist(), [tiles.boxes[p] for p in positions]
            tiles_per_image = Counter(owners)
            statistics = GoodMapStatistics(statistics_size(tiles.image_sizes[owner] for owner in tiles_per_image))
            assembler = TileMapAssembler()
            for owner, n_tiles in tiles_per_image.items():
                assembler.expect(owner, tiles.image_sizes[owner], n_tiles)
            done = 0
            for batch in batches_in_order(features, self.batch_size):
                maps = self._flow_maps(model, batch, device, _tile_positions(model, features, np.arange(done, done + len(batch[0]))))
                batch_boxes = boxes[done : done + len(maps)]
                tile_maps = resize_maps(maps, [(box.height, box.width) for box in batch_boxes])
                for owner, box, tile_map in zip(owners[done : done + len(maps)], batch_boxes, tile_maps):
                    stitched = assembler.add(owner, tile_map, box)
                    if stitched is not None:
                        statistics.add(stitched)
                done += len(maps)
        return statistics

    def _anomaly_maps(self, X):
        """Iterator of ``(ImageBatch, maps)`` of ``X`` (see :meth:`_image_maps`)."""
        check_is_fitted(self)
        images = ImageCollection(X, fitted_colour_mode=self.colour_mode_)
        return self._image_maps(self.model_, images, self.device_, tiling=self.tiling_)

    def _image_maps(self, model: FastflowModel, images: ImageCollection, device: torch.device, indices: np.ndarray | None = None, tiling=None):
        """Yield ``(ImageBatch, maps)`` of ``images`` (or of those at ``indices``): the one scorer.

        Without tiling, ``maps`` is a tensor ``(n, 1, *input_size)`` of the batch's images;
        with tiling, a list holding the stitched map ``(H, W)`` (float32 ndarray, the image's
        own size) of the one image of the batch. Raw maps: the image scores standardise them
        (:func:`_standardized`).
        """
        if tiling is not None:
            yield from self._stitched_maps(model, images, device, indices, tiling)
            return
        extractor = model.feature_extractor
        with torch.inference_mode():
            for batch in images.batches(self.batch_size, model.input_size, extractor.mean, extractor.std, indices=indices):
                refresh_threads()
                yield batch, self._tensor_maps(model, batch.tensor, device)

    def _tensor_maps(self, model: FastflowModel, tensor: torch.Tensor, device: torch.device, positions=None) -> torch.Tensor:
        """Anomaly maps ``(n, 1, *input_size)`` of normalised images (or tiles at tile ``positions``) ``(n, 3, *input_size)``."""
        with _autocast(_backbone_precision(self.inference_precision), device):  # never yield inside: autocast is global state
            features = model.extract_features(tensor.to(device))
        return self._flow_maps(model, features, device, positions)

    def _stitched_maps(self, model: FastflowModel, images: ImageCollection, device: torch.device, indices, tiling):
        """Yield ``(ImageBatch of one image, [stitched map])`` image by image, tiles scored ``batch_size`` at a time."""
        extractor = model.feature_extractor
        assembler, grey = TileMapAssembler(), {}
        with torch.inference_mode():
            for batch in images.tile_batches(self.batch_size, model.input_size, extractor.mean, extractor.std, tiling, indices=indices):
                refresh_threads()
                for index, size, is_grey, n_tiles in batch.images:
                    _check_tile_grid(model, size)
                    assembler.expect(index, size, n_tiles)
                    grey[index] = is_grey
                maps = self._tensor_maps(model, batch.tensor, device, batch.tile_numbers if model.n_positions > 1 else None)
                box_sizes = [(box.height, box.width) for box in batch.boxes]
                for index, box, tile_map in zip(batch.owners.tolist(), batch.boxes, resize_maps(maps, box_sizes)):
                    stitched = assembler.add(index, tile_map, box)
                    if stitched is not None:
                        single = ImageBatch(np.array([index]), None, [stitched.shape], np.array([grey.pop(index)]))
                        yield single, [stitched]

    def _flow_maps(self, model: FastflowModel, features: list[torch.Tensor], device: torch.device, positions=None) -> torch.Tensor:
        """Anomaly maps ``(n, 1, H, W)`` of backbone features (of tiles at tile ``positions`` for per-position flows), the flows' convolutions in ``inference_precision``."""
        with _autocast(self.inference_precision, device):
            hidden_variables, _ = model.encode(features, positions)
        return model.anomaly_map_generator(hidden_variables)

    # ------------------------------------------------------------------ public predictions

    @_in_torch_threads
    def score_samples(self, X):
        """Image scores: the negated mean of the anomaly map's top values (``image_score``).

        Lower means more abnormal.

        Parameters
        ----------
        X : array-like or list
            Images, as for :meth:`fit`.

        Returns
        -------
        scores : ndarray of shape (n_samples,), dtype float64
            Minus the rule's top values of the (standardised) map: in ``[0, 1]``
            without ``standardize_maps``, any real number with it.
        """
        scores = [self._image_scores(maps) for _, maps in self._anomaly_maps(X)]
        return torch.cat(scores).double().cpu().numpy()

    @_in_torch_threads
    def predict_maps(self, X, *, return_scores=False):
        """Per-pixel anomaly maps at each image's original resolution (higher = more anomalous).

        Parameters
        ----------
        X : array-like or list
            Images, as for :meth:`fit`.
        return_scores : bool, default=False
            Also return :meth:`score_samples` of the same images, from the same backbone
            and flow pass (half the work of calling both).

        Returns
        -------
        maps : ndarray of shape (n_samples, H, W) or list of ndarray
            An array when all images have the same size, else a list of ``(H_i, W_i)``
            arrays, float32. The map ``map_kind_`` names: raw, in ``[-1, 0]`` (the image
            score standardises it first with ``standardize_maps``, see
            ``map_standardizer_``), or, with per-position tile flows and
            ``standardize_maps``, the standardised map the image score is taken over (any
            real number; about 0 where a pixel is as usual for good images).
        scores : ndarray of shape (n_samples,), dtype float64
            Only with ``return_scores=True``: exactly ``score_samples(X)``. The image score
            is taken from the map at ``input_size``, before resizing.

        Examples
        --------
        Score and localise a stream of image files with bounded memory, one batch of
        ``batch_size`` files per call::

            for start in range(0, len(paths), detector.batch_size):
                maps, scores = detector.predict_maps(paths[start : start + detector.batch_size], return_scores=True)
                flagged = scores - detector.offset_ < 0

        An unreadable file fails its whole call; for one result per file, errors
        included, use :func:`skfastflow.batch_scoring.score_files`.
        """
        standardized = self.map_kind_ == "standardized"
        maps, scores = [], []
        for batch, batch_maps in self._anomaly_maps(X):
            if isinstance(batch_maps, list):  # tiled: stitched maps, at the images' sizes already
                maps.extend([self.map_standardizer_(m) for m in batch_maps] if standardized else batch_maps)
            else:
                maps.extend(resize_maps(batch_maps, batch.original_sizes))
            if return_scores:
                scores.append(self._image_scores(batch_maps))
        if len({m.shape for m in maps}) == 1:
            maps = np.stack(maps)
        if return_scores:
            return maps, torch.cat(scores).double().cpu().numpy()
        return maps

    @property
    def map_kind_(self) -> str:
        """Which map :meth:`predict_maps` returns: ``"raw"`` or ``"standardized"``.

        ``"standardized"`` with per-position tile flows (``tile_grid_size_``) and
        ``map_standardizer_``, whose positions' raw maps lie at levels of their own (a seam
        at every tile border); else ``"raw"``. See
        :func:`skfastflow.map_standardization.returned_map_kind`.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before :meth:`fit` (an ``AttributeError``: ``hasattr`` says False).
        """
        check_is_fitted(self)
        return returned_map_kind(self.map_standardizer_, self.tile_grid_size_)

    @_in_torch_threads
    def p_values(self, X):
        """Split-conformal p-values of the images against the calibration scores of good images.

        ``p = (1 + #{calibration scores <= score}) / (n + 1)`` with ``n`` good images the
        flows did not train on (``calibration_scores_``; Bates et al. 2023, "Testing for
        outliers with conformal p-values", Ann. Statist.). For a good image exchangeable with
        the held-out ones, ``P(p <= alpha) <= alpha``: flagging ``p <= alpha`` flags at most
        a share ``alpha`` of good images. Out-of-fold scores (``calibration_cv``) come from
        flows trained on fewer images, which score unseen good images a little lower than
        the fitted flows do: their p-values err on the large side (the cross-conformal
        p-values of Vovk 2015). Without ``early_stopping`` and cross-fitting the
        calibration images were trained on, so the promise does not hold (the p-values are
        too small).

        Parameters
        ----------
        X : array-like or list
            Images, as for :meth:`fit`.

        Returns
        -------
        p_values : ndarray of shape (n_samples,), dtype float64
            Values in ``{1/(n+1), ..., 1}``; smaller = more abnormal.
        """
        return conformal_p_values(self.score_samples(X), self.calibration_scores_)

    @_in_torch_threads
    def score(self, X, y=None):
        """Mean log-likelihood per feature dimension (nats) of the good images of ``X``; higher is better.

        Lets :class:`~sklearn.model_selection.GridSearchCV` tune the detector without a
        ``scoring``. ``y`` is read as :meth:`fit` reads it: only good images count, so a
        model is never rewarded for finding defects likely.

        Parameters
        ----------
        X : array-like or list
            Images, as for :meth:`fit`.
        y : array-like of shape (n_samples,) or pixel masks, default=None
            As for :meth:`fit`: images labelled -1 (or with a non-empty mask) are left out.

        Returns
        -------
        score : float
            Mean over the good images of their log-likelihood per feature dimension (nats).

        Raises
        ------
        ValueError
            If ``y`` marks no image as good.
        """
        check_is_fitted(self)
        images = ImageCollection(X, fitted_colour_mode=self.colour_mode_)
        inliers, _ = self._labelled_indices(y, len(images))
        items = _training_items(images, inliers, self.tiling_)
        for size in getattr(items[0], "image_sizes", {}).values():
            _check_tile_grid(self.model_, size)
        features = StreamedFeatures(self.model_, *items, self.device_)
        return float(np.mean(self._log_likelihoods(self.model_, features)))

    # ------------------------------------------------------------------ scikit-learn hooks

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Images, not tables: stacks are 3-D (N, H, W) or 4-D (N, H, W, C), and lists may
        # hold file paths (strings). Pixels are uint8 0..255 or floats in [0, 1], so
        # negative values are refused, as are NaN and sparse matrices.
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.input_tags.positive_only = True
        return tags

    # ------------------------------------------------------------------ persistence

    def __setstate__(self, state):
        # Model files of format 1 written before n_threads existed load with its default;
        # fitted ones written before tiling or cross-fitting existed scored whole images and
        # calibrated on the held-out images alone.
        state = {"n_threads": None, "calibration_cv": None, "tile_flows": "shared", **state}
        if "_model_state" in state and "tiling_" not in state:
            state["tiling_"] = None
        if "_model_state" in state and "tile_grid_size_" not in state:
            state["tile_grid_size_"] = None
        if "standardize_maps" not in state:
            # Written before maps were standardised: they scored raw maps and set offset_ from them.
            state["standardize_maps"] = False
            if "_model_state" in state:
                state["map_standardizer_"] = None
        if "_model_state" in state and "calibration_folds_" not in state:
            state["calibration_folds_"] = None
        super().__setstate__(state)
        if hasattr(self, "model_"):
            self.model_.tile_grid_size = self.tile_grid_size_  # a plain attribute: not in the model's state_dict

    def _model_config(self, input_size: tuple[int, int], n_positions: int) -> dict:
        """What rebuilds the fitted model's architecture (see :mod:`skfastflow.persistence`)."""
        return dict(
            input_size=input_size,
            backbone=self.backbone,
            flow_steps=self.flow_steps,
            conv3x3_only=self.conv3x3_only,
            hidden_ratio=self.hidden_ratio,
            n_positions=n_positions,
        )


def _scores_by_rule(maps, rules) -> dict:
    """``{rule: image scores (n,)}`` of anomaly maps: a tensor ``(n, 1, H, W)`` at ``input_size``
    (:func:`~skfastflow.nn.anomaly_map.scores_by_rule`), or a list of stitched maps
    (:func:`~skfastflow.tiling.stitched_scores`, which the runtime detector applies too)."""
    if isinstance(maps, list):
        per_map = [stitched_scores(stitched, rules) for stitched in maps]
        return {rule: torch.tensor([scores[rule] for scores in per_map], dtype=torch.float64) for rule in rules}
    return scores_by_rule(maps, rules, tuple(maps.shape[2:]))


def _standardizer_or_none(statistics: GoodMapStatistics) -> MapStandardizer | None:
    """The standardiser of the accumulated maps, or None with a warning when they give no spread."""
    try:
        return statistics.result()
    except ValueError as error:
        warnings.warn(
            f"standardize_maps: {error} With the {statistics.count} good image(s) trained on, the image scores "
            "are taken over raw maps (map_standardizer_ is None).",
            UserWarning,
            stacklevel=5,
        )
        return None


def _standardized(maps, standardizer: MapStandardizer | None):
    """Anomaly maps (a tensor ``(n, 1, H, W)`` or a list of stitched ``(H, W)`` arrays) standardised per pixel by ``standardizer``; unchanged for None."""
    if standardizer is None:
        return maps
    if isinstance(maps, list):
        return [standardizer(anomaly_map) for anomaly_map in maps]
    mean, scale = (torch.from_numpy(values).to(maps.device) for values in standardizer.at_size(tuple(maps.shape[2:])))
    return (maps - mean) / scale


def _check_tile_grid(model: FastflowModel, image_size: tuple[int, int]) -> None:
    """Refuse an image of another size than the one whose tile positions ``model``'s flows model."""
    grid = model.tile_grid_size
    if grid is not None and tuple(image_size) != tuple(grid):
        raise ValueError(
            f"an image of {image_size[0]}x{image_size[1]} pixels reached a detector with per-position tile flows for "
            f"images of {grid[0]}x{grid[1]} (tile_flows, tile_grid_size_): its tiles would lie elsewhere. Crop or resize "
            f"it to {grid[0]}x{grid[1]}, or refit with tile_flows='shared'."
        )


def _tile_positions(model: FastflowModel, features, items: np.ndarray) -> np.ndarray | None:
    """The tile positions of ``features``' items ``items`` for per-position flows; None for one set of flows."""
    return None if model.n_positions == 1 else features.tile_numbers[np.asarray(items)]


def _training_items(images: ImageCollection, indices: np.ndarray, tiling):
    """``(items, positions)`` whose backbone features the flows train on: the images at ``indices``, or their tiles."""
    if tiling is None:
        return images, indices
    tiles = TileView(images, indices, tiling)
    return tiles, np.arange(len(tiles))


def _concatenate_by_rule(parts: list) -> dict:
    """Join ``{rule: scores}`` dicts (tensors or arrays) into ``{rule: float64 ndarray}``."""
    return {rule: np.concatenate([torch.as_tensor(part[rule]).double().cpu().numpy() for part in parts]) for rule in parts[0]}


def _holds_pixel_masks(y) -> bool:
    """Whether ``y`` is pixel masks (an (N, H, W) array or a list of 2-D arrays), not labels."""
    if isinstance(y, np.ndarray):
        return y.ndim == 3
    return isinstance(y, (list, tuple)) and len(y) > 0 and np.ndim(y[0]) == 2


def _n_dimensions(model: FastflowModel) -> int:
    """Feature dimensions ``D`` the flows model per image (all scales): the loss's normaliser."""
    return sum(math.prod(shape) for shape in model.feature_shapes)


def _bfloat16_is_native(device: torch.device) -> bool:
    """Whether ``device`` is a CPU with native bfloat16 arithmetic (AVX512-BF16 or AMX).

    Elsewhere, CPU bfloat16 is emulated and slower than float32.
    """
    if device.type != "cpu":
        return False
    # Private torch helpers (torch >= 2.3); a torch without them gets float32.
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)


def _uses_bfloat16(precision: str, device: torch.device) -> bool:
    """Whether a ``training_precision`` or ``inference_precision`` value means bfloat16 on ``device``."""
    return precision == "bfloat16" or (precision == "auto" and _bfloat16_is_native(device))


def _backbone_precision(inference_precision: str) -> str:
    """The backbone's share of ``inference_precision``: bfloat16 only when asked for outright.

    ``"auto"`` keeps the backbone in float32: its bfloat16 rounding, not the flows', is what
    costs detection quality (``docs/quality.md``).
    """
    return "bfloat16" if inference_precision == "bfloat16" else "float32"


def _autocast(precision: str, device: torch.device):
    """bfloat16 autocast (convolutions and matrix products only) when ``precision`` means it on ``device``."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=_uses_bfloat16(precision, device))


def _progress_bar(total: int, verbose: int):
    """A tqdm bar over epochs when ``verbose``, else a silent stand-in."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="FastFlow epochs", unit="epoch", disable=not verbose)
