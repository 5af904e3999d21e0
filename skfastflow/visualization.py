"""Pictures for inspecting anomaly maps: heatmap overlays and image grids.

Both functions return RGB ``uint8`` arrays of shape ``(height, width, 3)`` and need only
numpy and Pillow. To save one as PNG, use Pillow::

    from PIL import Image
    Image.fromarray(overlay).save("overlay.png")

Images follow the package's pixel rules (see :mod:`skfastflow.images`): grey ``(H, W)``
or ``(H, W, 1)``, RGB ``(H, W, 3)`` or RGBA (alpha dropped); ``uint8`` 0..255, ``uint16``
or floats in [0, 1]; PIL images are accepted too, read as the detector reads them (the
picture a viewer shows, :func:`skfastflow.files.image_to_array`). To overlay a map from
``predict_maps`` on an image file, read the file with :func:`skfastflow.files.read_image`:
both then have the displayed size and orientation.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .files import image_to_array
from .image_input import _channels_last_rgb, _pixel_scale

# Perceptually uniform colormaps (lightness rises steadily from low to high scores),
# given by nine evenly spaced anchor colours and interpolated linearly between them.
_COLORMAP_ANCHORS = {
    "inferno": (
        "000004", "1b0c41", "4a0c6b", "781c6d", "a52c60",
        "cf4446", "ed6925", "fb9b06", "fcffa4",
    ),
    "viridis": (
        "440154", "472d7b", "3b528b", "2c728e", "21918c",
        "28ae80", "5ec962", "addc30", "fde725",
    ),
}


def _lookup_table(name):
    """256 RGB colours interpolated from a colormap's anchors, as a (256, 3) uint8 array."""
    anchors = np.array([[int(code[i : i + 2], 16) for i in (0, 2, 4)] for code in _COLORMAP_ANCHORS[name]])
    levels = np.linspace(0.0, 1.0, 256)
    anchor_levels = np.linspace(0.0, 1.0, len(anchors))
    channels = [np.interp(levels, anchor_levels, anchors[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=1)).astype(np.uint8)


def overlay_heatmap(
    image,
    anomaly_map,
    *,
    threshold=None,
    score=None,
    alpha=0.5,
    vmin=None,
    vmax=None,
    colormap="inferno",
    contour_color=(0, 255, 255),
):
    """Blend a colour-coded anomaly map over its image.

    Parameters
    ----------
    image : ndarray of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
        The inspected image, ``uint8`` 0..255, ``uint16`` or float in [0, 1].
        Grey images become RGB.
    anomaly_map : ndarray of shape (h, w)
        Higher means more anomalous. Resized bilinearly to ``(H, W)`` if its size differs.
    threshold : float, optional
        If given, the region where the (resized) map exceeds ``threshold`` is outlined:
        its pixels that have a 4-neighbour outside the region, or lie on the image's
        edge, take ``contour_color``. Typically the detector's pixel threshold.
    score : float, optional
        If given, written as ``score <value>`` in the top-left corner, white on a black
        box so it stays readable on any image (very small images crop the text).
    alpha : float, default=0.5
        Weight of the heatmap in [0, 1]; 0 returns the image unchanged.
    vmin, vmax : float, optional
        Map values drawn with the lowest and highest colours; values beyond are clipped.
        Default: the map's minimum and maximum (fix both to compare several images).
        If the range is empty (a constant map), values above it get the highest colour
        and the rest the lowest.
    colormap : {"inferno", "viridis"}, default="inferno"
        Perceptually uniform colour scale from low (dark) to high (bright) scores.
    contour_color : tuple of 3 ints, default=(0, 255, 255)
        RGB colour of the outline; cyan stands out against both colormaps.

    Returns
    -------
    overlay : ndarray of shape (H, W, 3), dtype uint8

    Examples
    --------
    >>> import numpy as np
    >>> from skfastflow.visualization import overlay_heatmap
    >>> image = np.full((32, 32), 128, dtype=np.uint8)
    >>> anomaly_map = np.zeros((8, 8))
    >>> anomaly_map[2:4, 2:4] = 1.0
    >>> overlay = overlay_heatmap(image, anomaly_map, threshold=0.5, score=0.93)
    >>> overlay.shape, overlay.dtype
    ((32, 32, 3), dtype('uint8'))
    """
    rgb = _as_rgb_uint8(image, "image")
    height, width = rgb.shape[:2]
    anomaly_map = _check_anomaly_map(anomaly_map)
    if anomaly_map.shape != (height, width):
        anomaly_map = np.asarray(
            Image.fromarray(anomaly_map.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
        )
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1] (0: image only, 1: heatmap only), got {alpha!r}.")
    if colormap not in _COLORMAP_ANCHORS:
        raise ValueError(f"colormap must be one of {sorted(_COLORMAP_ANCHORS)}, got {colormap!r}.")
    contour_color = _check_color(contour_color, "contour_color")

    levels = _normalise(anomaly_map, vmin, vmax)
    colours = _lookup_table(colormap)[np.rint(levels * 255).astype(np.intp)]
    overlay = np.rint((1.0 - alpha) * rgb + alpha * colours).astype(np.uint8)

    if threshold is not None:
        threshold = _check_finite_number(threshold, "threshold")
        overlay[_outline(anomaly_map > threshold)] = contour_color
    if score is not None:
        overlay = _draw_score(overlay, _check_finite_number(score, "score"))
    return overlay


def make_grid(images, *, n_cols=None, padding=2, background=255):
    """Tile several images, of any sizes, into one picture.

    Every cell has the height of the tallest image and the width of the widest; each image
    sits centred in its cell (offset ``(cell - size) // 2``). Cells fill rows left to
    right, top to bottom, with ``padding`` pixels of ``background`` around and between them.

    Parameters
    ----------
    images : sequence of ndarray
        Images as accepted by :func:`overlay_heatmap` (grey or RGB, uint8 or float in
        [0, 1]), e.g. the overlays themselves.
    n_cols : int, optional
        Number of columns. Default: ``ceil(sqrt(len(images)))``, a near-square grid.
        More columns than images are reduced to the number of images.
    padding : int, default=2
        Pixels around and between cells.
    background : int or tuple of 3 ints, default=255
        Grey level or RGB colour of the padding and of unfilled cell area.

    Returns
    -------
    grid : ndarray of shape (rows * cell_h + (rows + 1) * padding, cols * cell_w + (cols + 1) * padding, 3), dtype uint8

    Examples
    --------
    >>> import numpy as np
    >>> from skfastflow.visualization import make_grid
    >>> grid = make_grid([np.zeros((10, 20)), np.ones((16, 8))], n_cols=2, padding=1)
    >>> grid.shape
    (18, 43, 3)
    """
    if isinstance(images, np.ndarray) and images.dtype != object:
        images = list(images)
    if isinstance(images, (str, bytes)) or not hasattr(images, "__len__") or len(images) == 0:
        raise ValueError("images must be a non-empty list of image arrays.")
    tiles = [_as_rgb_uint8(image, f"images[{index}]") for index, image in enumerate(images)]
    if n_cols is None:
        n_cols = math.ceil(math.sqrt(len(tiles)))
    if isinstance(n_cols, bool) or not isinstance(n_cols, numbers.Integral) or n_cols < 1:
        raise ValueError(f"n_cols must be a positive integer, got {n_cols!r}.")
    if isinstance(padding, bool) or not isinstance(padding, numbers.Integral) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}.")
    background = _check_color(background, "background")

    n_cols = min(int(n_cols), len(tiles))
    n_rows = math.ceil(len(tiles) / n_cols)
    cell_height = max(tile.shape[0] for tile in tiles)
    cell_width = max(tile.shape[1] for tile in tiles)
    grid = np.empty(
        (n_rows * cell_height + (n_rows + 1) * padding, n_cols * cell_width + (n_cols + 1) * padding, 3),
        dtype=np.uint8,
    )
    grid[...] = background
    for index, tile in enumerate(tiles):
        row, col = divmod(index, n_cols)
        top = padding + row * (cell_height + padding) + (cell_height - tile.shape[0]) // 2
        left = padding + col * (cell_width + padding) + (cell_width - tile.shape[1]) // 2
        grid[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    return grid


def _as_rgb_uint8(image, where):
    """Any accepted image as an (H, W, 3) uint8 array (grey channels repeated)."""
    if isinstance(image, Image.Image):
        image = image_to_array(image)
    array = _channels_last_rgb(np.asarray(image), where)
    scale = _pixel_scale(array, where)
    if array.dtype != np.uint8:
        array = np.rint(array.astype(np.float64) * (255.0 / scale)).astype(np.uint8)
    return np.broadcast_to(array, (*array.shape[:2], 3))


def _check_anomaly_map(anomaly_map):
    anomaly_map = np.asarray(anomaly_map)
    if anomaly_map.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D (height, width), got shape {anomaly_map.shape}.")
    if anomaly_map.dtype.kind not in "biuf":
        raise TypeError(f"anomaly_map has dtype {anomaly_map.dtype}; it must hold real numbers.")
    anomaly_map = anomaly_map.astype(np.float64)
    if not np.isfinite(anomaly_map).all():
        raise ValueError("anomaly_map contains NaN or infinite values; replace them (e.g. np.nan_to_num).")
    return anomaly_map


def _check_finite_number(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def _check_color(color, name):
    """An RGB triple of 0..255 integers, from a grey level or a triple."""
    values = np.asarray(color)
    if values.ndim == 0:
        values = np.repeat(values, 3)
    if (
        values.shape != (3,)
        or values.dtype.kind not in "iu"
        or values.min() < 0
        or values.max() > 255
    ):
        raise ValueError(f"{name} must be a grey level or an RGB triple of integers in 0..255, got {color!r}.")
    return values.astype(np.uint8)


def _normalise(anomaly_map, vmin, vmax):
    """Map values scaled to [0, 1] between vmin and vmax, clipped."""
    for value, name in ((vmin, "vmin"), (vmax, "vmax")):
        if value is not None:
            _check_finite_number(value, name)
    if vmin is not None and vmax is not None and vmin > vmax:
        raise ValueError(f"vmin ({vmin}) must not exceed vmax ({vmax}).")
    # A default bound never crosses a given one, so an explicit vmin or vmax alone works.
    low = vmin if vmin is not None else min(anomaly_map.min(), anomaly_map.max() if vmax is None else vmax)
    high = vmax if vmax is not None else max(anomaly_map.max(), low)
    if high > low:
        return np.clip((anomaly_map - low) / (high - low), 0.0, 1.0)
    return (anomaly_map > high).astype(np.float64)


def _outline(region):
    """Pixels of ``region`` with a 4-neighbour outside it; outside the image counts as outside."""
    padded = np.pad(region, 1, constant_values=False)
    interior = (
        region
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )
    return region & ~interior


def _draw_score(overlay, score):
    """Write the score in the top-left corner, white on a black box."""
    picture = Image.fromarray(overlay)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    margin = 2
    text = f"score {score:.4g}"
    _, _, right, bottom = draw.textbbox((margin, margin), text, font=font)
    draw.rectangle((0, 0, right + margin, bottom + margin), fill=(0, 0, 0))
    draw.text((margin, margin), text, fill=(255, 255, 255), font=font)
    return np.asarray(picture).copy()


def _verdict_figure(title):
    """A matplotlib figure and axes drawn off-screen (the Agg canvas: no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if title:
        axes.set_title(title)
    return figure, axes


def _good_and_defect_scores(y_true, scores):
    y_true = np.asarray(y_true).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y_true.shape != scores.shape or not np.isin(y_true, (1, -1)).all():
        raise ValueError("y_true must hold one label per score, 1 (good) or -1 (defective).")
    good, defects = scores[y_true == 1], scores[y_true == -1]
    if good.size == 0 or defects.size == 0:
        raise ValueError("the plot needs good (1) and defective (-1) images.")
    return good, defects


def plot_roc_curve(y_true, scores, path, *, offset=None, title=None):
    """Save the image-level ROC curve as a PNG: defects caught against good images flagged.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        1 for good, -1 for defective images.
    scores : array-like of shape (n_samples,)
        :meth:`~skfastflow.FastFlowDetector.score_samples` (lower = more abnormal).
    path : str or path-like
        PNG file to write (its folder must exist).
    offset : float, default=None
        The detector's threshold ``offset_``: its operating point is marked.
    title : str, default=None

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    ValueError
        Without both classes, or with labels other than 1 / -1.
    """
    from pathlib import Path

    from sklearn.metrics import roc_auc_score, roc_curve

    good, defects = _good_and_defect_scores(y_true, scores)
    labels = np.r_[np.zeros(good.size), np.ones(defects.size)]
    false_alarms, recall, _ = roc_curve(labels, -np.r_[good, defects])
    figure, axes = _verdict_figure(title)
    axes.plot(false_alarms, recall, color="#3b528b", label=f"ROC (AUROC {roc_auc_score(labels, -np.r_[good, defects]):.3f})")
    axes.plot([0, 1], [0, 1], color="0.7", linestyle=":", label="chance")
    if offset is not None:
        point = (np.mean(good < offset), np.mean(defects < offset))
        axes.plot(*point, "o", color="#cf4446", label=f"threshold offset_={offset:.4f}")
    axes.set_xlabel("good images flagged (false-alarm rate)")
    axes.set_ylabel("defective images flagged (recall)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.legend(loc="lower right")
    figure.savefig(path)
    return Path(path)


def plot_score_histogram(y_true, scores, path, *, offset=None, title=None):
    """Save histograms of the good and the defective images' scores, with the threshold, as a PNG.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        1 for good, -1 for defective images.
    scores : array-like of shape (n_samples,)
        :meth:`~skfastflow.FastFlowDetector.score_samples` (lower = more abnormal).
    path : str or path-like
        PNG file to write (its folder must exist).
    offset : float, default=None
        The threshold ``offset_``, drawn as a vertical line (images left of it are flagged).
    title : str, default=None

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    ValueError
        Without both classes, or with labels other than 1 / -1.
    """
    from pathlib import Path

    good, defects = _good_and_defect_scores(y_true, scores)
    edges = np.histogram_bin_edges(np.r_[good, defects], bins=30)
    figure, axes = _verdict_figure(title)
    axes.hist(good, bins=edges, color="#21918c", alpha=0.6, label=f"good ({good.size})")
    axes.hist(defects, bins=edges, color="#cf4446", alpha=0.6, label=f"defective ({defects.size})")
    if offset is not None:
        axes.axvline(offset, color="black", linestyle="--", label=f"threshold offset_={offset:.4f}")
    axes.set_xlabel("image score (score_samples; lower = more abnormal)")
    axes.set_ylabel("images")
    axes.legend()
    figure.savefig(path)
    return Path(path)
