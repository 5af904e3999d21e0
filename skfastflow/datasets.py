"""Inspection data sets: real ones in MVTec AD layout and synthetic ones.

Two public functions in scikit-learn's ``load_*`` / ``make_*`` style, both
returning a :class:`sklearn.utils.Bunch`:

- :func:`load_mvtec` reads any folder laid out like an MVTec AD category.
- :func:`make_defect_images` draws a synthetic inspection data set with exact
  defect masks, in the spirit of :func:`sklearn.datasets.make_blobs`.

Labels follow scikit-learn's outlier convention: ``1`` = good (inlier),
``-1`` = defective (outlier). Masks are boolean, ``True`` = defect pixel.
"""

import warnings
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch, check_random_state

from .files import (
    ImageWarning,
    SkippedFile,
    describe_skipped,
    grouped_image_warnings,
    image_suffixes,
    list_images,
    read_image,
    read_image_size,
    read_mask,
)

__all__ = ["load_mvtec", "make_defect_images"]

_GOOD = "good"
_MASK_SUFFIX = "_mask"
_LAYOUT_HELP = (
    "expected an MVTec AD layout: <root>/train/good/<images>, "
    "<root>/test/<defect type>/<images> (with <root>/test/good/ for good test "
    "images) and <root>/ground_truth/<defect type>/<image stem>_mask.png"
)


# --------------------------------------------------------------------------
# load_mvtec
# --------------------------------------------------------------------------


def _find_masks(root, test_paths, defect_types):
    """Return the mask path of each test image (None for good images).

    The mask of ``test/<type>/<sub-folders>/<stem>.<ext>`` is
    ``ground_truth/<type>/<sub-folders>/<stem>_mask.<any image suffix>``.

    Without a ``ground_truth/`` folder the set has image-level labels only (the usual
    case in a factory): every mask is None. With one, raises ValueError listing defect
    images that have no mask, or whose mask name is ambiguous (the same stem saved in
    two formats).
    """
    if not (root / "ground_truth").is_dir():
        return [None] * len(test_paths)
    masks_by_key = {}  # defect type -> {(sub-folders, image stem): [mask paths]}
    mask_paths, missing, ambiguous = [], [], []
    for path, defect_type in zip(test_paths, defect_types):
        if defect_type == _GOOD:
            mask_paths.append(None)
            continue
        folder = root / "ground_truth" / defect_type
        if defect_type not in masks_by_key:
            keys = {}
            if folder.is_dir():
                for mask in list_images(folder):
                    if mask.stem.endswith(_MASK_SUFFIX):
                        key = (mask.parent.relative_to(folder).parts, mask.stem[: -len(_MASK_SUFFIX)])
                        keys.setdefault(key, []).append(mask)
            masks_by_key[defect_type] = keys
        key = (path.parent.relative_to(root / "test" / defect_type).parts, path.stem)
        candidates = masks_by_key[defect_type].get(key, [])
        if not candidates:
            missing.append(path)
        elif len(candidates) > 1:
            ambiguous.append(candidates)
        mask_paths.append(candidates[0] if candidates else None)
    if missing:
        first = missing[0]
        relative = first.parent.relative_to(root / "test")
        raise ValueError(
            f"{len(missing)} defect image(s) have no mask, e.g. {first}: expected "
            f"{root / 'ground_truth' / relative / (first.stem + '_mask.png')}. "
            "Every image in test/<defect type>/ other than test/good/ needs a mask."
        )
    if ambiguous:
        names = ", ".join(str(path) for path in ambiguous[0])
        raise ValueError(
            f"more than one mask for the same image: {names}; keep exactly one."
        )
    return mask_paths


def _check_mask_size(mask_path, mask_shape, image_path, image_shape):
    if tuple(mask_shape[:2]) != tuple(image_shape[:2]):
        raise ValueError(
            f"mask {mask_path} is {mask_shape[1]}x{mask_shape[0]} pixels (width x "
            f"height) but its image {image_path} is {image_shape[1]}x{image_shape[0]}; "
            "a mask must have the size of its image."
        )


def _describe_mvtec(root, n_train, defect_types):
    types, counts = np.unique(defect_types, return_counts=True)
    per_type = ", ".join(f"{name} {count}" for name, count in zip(types, counts))
    return (
        f"Inspection data set in MVTec AD layout, read from {root}.\n\n"
        f"Training images (all good): {n_train}\n"
        f"Test images: {len(defect_types)} ({per_type})\n\n"
        "y_test: 1 = good, -1 = defective. masks_test: True = defect pixel, "
        "all False for good images. defect_type_test: the test/<defect type> "
        "folder of each image ('good' for good images).\n"
    )


def load_mvtec(root, *, lazy=False):
    """Load an inspection data set stored in MVTec AD folder layout.

    The layout is::

        root/train/good/*                          good training images
        root/test/good/*                           good test images (optional)
        root/test/<defect type>/*                  defective test images
        root/ground_truth/<defect type>/<stem>_mask.png   their masks (optional)

    Without ``ground_truth/`` the test set has image-level labels only: ``y_test``
    and ``defect_type_test`` as usual, ``masks_test`` None for every defect image
    (image metrics can be computed, pixel metrics cannot).

    Folders are listed with :func:`skfastflow.files.list_images`: every file
    of a format Pillow reads (PNG, JPEG, TIFF, BMP, WebP, PGM, ...; suffixes
    compared case-insensitively), in sub-folders too (the defect type is the
    first folder under ``test/``; a mask mirrors its image's sub-folders
    under ``ground_truth/<defect type>/``). Hidden files and files of other
    types are skipped, with an :class:`~skfastflow.files.ImageWarning` naming
    them. Images may be grey or colour and of different sizes. Files are
    returned sorted by path, test images grouped by defect type in sorted
    folder order, so the order is the same on every machine.

    Files are read as the detector reads image paths, with
    :func:`skfastflow.files.read_image`: the picture an image viewer shows
    (EXIF orientation applied, colour profiles converted to sRGB,
    transparency over black, ...). Grey images are (H, W), colour images
    (H, W, 3); 8-bit files uint8, 16-bit grey files uint16 (0..65535), so no
    precision is lost. Masks are read by the same rule with
    :func:`skfastflow.files.read_mask`: a pixel is a defect above half the
    file's range (so JPEG masks work), with a warning for masks that hold
    values in between.

    Parameters
    ----------
    root : str or path-like
        Folder of one category, the one holding ``train/`` and ``test/``.
    lazy : bool, default=False
        If True, return file paths instead of pixels, for data sets larger
        than memory; the files are not read, except the headers of defect
        images and their masks, to check that their sizes agree. A file that
        cannot be opened is not refused here: it fails, naming itself, when
        it is read, so that it costs only itself (``skfastflow evaluate``).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with attributes:

        X_train : list of ndarray, or list of str if ``lazy``
            Good training images, (H, W) or (H, W, 3), uint8 (uint16 for
            16-bit files, float32 in [0, 1] for floating-point files).
        X_test : list of ndarray, or list of str if ``lazy``
            Test images, good and defective.
        y_test : ndarray of shape (n_test,), dtype int
            1 for good, -1 for defective images.
        masks_test : list of ndarray, or list of (str or None) if ``lazy``
            Bool (H, W) defect mask of each test image (mask pixels above
            half the file's range are defects); all False for good images;
            None for defect images when the set has no ``ground_truth/``.
            If ``lazy``, the mask file path, or None for good images (and
            for every image without ``ground_truth/``).
        defect_type_test : ndarray of str, shape (n_test,)
            Name of the ``test/`` sub-folder of each image (``'good'`` for
            good images).
        paths_train : ndarray of str, shape (n_train,)
            File path of each training image.
        paths_test : ndarray of str, shape (n_test,)
            File path of each test image.
        DESCR : str
            Description: where it was read from and counts per defect type.

    Raises
    ------
    ValueError
        If ``root`` is not a folder in MVTec AD layout, holds no images, a
        defect image has no mask, a mask's size differs from its image's, or
        a file cannot be read (the message names the file).

    Examples
    --------
    >>> from skfastflow.datasets import load_mvtec
    >>> data = load_mvtec("datasets/glass")  # doctest: +SKIP
    >>> len(data.X_train), (data.y_test == -1).sum()  # doctest: +SKIP
    (18, 80)
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root {str(root)!r} is not an existing folder; {_LAYOUT_HELP}.")
    train_folder, test_folder = root / "train" / _GOOD, root / "test"
    absent = [str(folder) for folder in (train_folder, test_folder) if not folder.is_dir()]
    if absent:
        raise ValueError(
            f"{str(root)!r} is not in MVTec AD layout: missing folder(s) "
            f"{', '.join(absent)}; {_LAYOUT_HELP}."
        )

    train_paths = list_images(train_folder)
    if not train_paths:
        raise ValueError(
            f"no image files found in {train_folder}; expected files ending in "
            f"{', '.join(sorted(image_suffixes()))}."
        )
    test_paths, defect_types, not_types = [], [], []
    for folder in sorted(test_folder.iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            images = list_images(folder)
            test_paths.extend(images)
            defect_types.extend([folder.name] * len(images))
        else:
            reason = "hidden" if folder.name.startswith(".") else "not in a defect-type folder"
            not_types.append(SkippedFile(folder, reason))
    if not_types:
        warnings.warn(ImageWarning(f"{describe_skipped(not_types)} in {test_folder}", source=str(test_folder)), stacklevel=2)
    if not test_paths:
        raise ValueError(
            f"no image files found in the sub-folders of {test_folder}; "
            f"{_LAYOUT_HELP}."
        )
    mask_paths = _find_masks(root, test_paths, defect_types)

    if lazy:
        for image_path, mask_path in zip(test_paths, mask_paths):
            if mask_path is None:
                continue
            try:
                sizes = read_image_size(mask_path), read_image_size(image_path)
            except ValueError:
                continue  # a file that cannot be opened fails, naming itself, when it is read
            _check_mask_size(mask_path, sizes[0], image_path, sizes[1])
        X_train = [str(path) for path in train_paths]
        X_test = [str(path) for path in test_paths]
        masks_test = [None if path is None else str(path) for path in mask_paths]
    else:
        with grouped_image_warnings():  # e.g. JPEG-made masks: one warning for all of them
            X_train = [read_image(path) for path in train_paths]
            X_test = [read_image(path) for path in test_paths]
            masks_test = []
            for image, image_path, mask_path, defect_type in zip(X_test, test_paths, mask_paths, defect_types):
                if mask_path is None:
                    masks_test.append(np.zeros(image.shape[:2], dtype=bool) if defect_type == _GOOD else None)
                    continue
                mask = read_mask(mask_path)
                _check_mask_size(mask_path, mask.shape, image_path, image.shape)
                masks_test.append(mask)

    defect_type_test = np.array(defect_types, dtype=str)
    return Bunch(
        X_train=X_train,
        X_test=X_test,
        y_test=np.where(defect_type_test == _GOOD, 1, -1),
        masks_test=masks_test,
        defect_type_test=defect_type_test,
        paths_train=np.array([str(path) for path in train_paths], dtype=str),
        paths_test=np.array([str(path) for path in test_paths], dtype=str),
        DESCR=_describe_mvtec(root, len(train_paths), defect_types),
    )


# --------------------------------------------------------------------------
# make_defect_images
# --------------------------------------------------------------------------

_DEFECT_TYPES = ("scratch", "spot", "crack", "missing", "stain")
_KINDS = ("texture", "object")

# Colours as RGB in 0..1. Every defect colour differs from the good surface in
# luminance too, so that the defects stay visible when ``grey=True``.
_LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
_TEXTURE_DARK = np.array([0.30, 0.22, 0.14], dtype=np.float32)
_TEXTURE_LIGHT = np.array([0.88, 0.76, 0.58], dtype=np.float32)
_METAL = np.array([0.74, 0.73, 0.70], dtype=np.float32)
_BACKGROUND = np.array([0.12, 0.13, 0.16], dtype=np.float32)
_HOLE = np.array([0.05, 0.05, 0.06], dtype=np.float32)
_DIRT = np.array([0.09, 0.07, 0.05], dtype=np.float32)
_STAIN_COLOURS = np.array(
    [[0.60, 0.20, 0.05], [0.05, 0.30, 0.40], [0.20, 0.42, 0.05]], dtype=np.float32
)  # rust, oil, verdigris

# A defect whose drawn region is smaller than this fraction of a square of the
# image's shorter side (for instance a scratch that mostly falls into a hole of
# the part) is redrawn.
_MIN_DEFECT_AREA = 0.004
_MAX_REDRAWS = 50


def _check_make_params(n_samples, image_size, kind, defect_fraction, defect_types, grey):
    """Validate make_defect_images' parameters; return (height, width), types."""
    if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}.")
    sizes = (image_size, image_size) if isinstance(image_size, Integral) else image_size
    try:
        height, width = sizes
    except (TypeError, ValueError):
        height = width = None
    if not all(
        isinstance(side, Integral) and not isinstance(side, bool) and side >= 16
        for side in (height, width)
    ):
        raise ValueError(
            "image_size must be an integer >= 16 or a pair (height, width) of "
            f"integers >= 16, got {image_size!r}."
        )
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
    if (
        not isinstance(defect_fraction, Real)
        or isinstance(defect_fraction, bool)
        or not 0.0 <= defect_fraction <= 1.0
    ):
        raise ValueError(
            f"defect_fraction must be a number in [0, 1], got {defect_fraction!r}."
        )
    if isinstance(defect_types, str):
        raise ValueError(
            f"defect_types must be a sequence of names such as ({defect_types!r},), "
            "not a single string."
        )
    try:
        defect_types = tuple(defect_types)
    except TypeError:
        raise ValueError(
            f"defect_types must be a sequence of names from {_DEFECT_TYPES}, "
            f"got {defect_types!r}."
        ) from None
    unknown = [name for name in defect_types if name not in _DEFECT_TYPES]
    if not defect_types or unknown or len(set(defect_types)) != len(defect_types):
        raise ValueError(
            "defect_types must be a non-empty sequence of distinct names from "
            f"{_DEFECT_TYPES}, got {defect_types!r}."
        )
    if not isinstance(grey, (bool, np.bool_)):
        raise ValueError(f"grey must be True or False, got {grey!r}.")
    return (int(height), int(width)), defect_types


def _interpolation_matrix(n_out, n_cells):
    """(n_out, n_cells + 1) weights that smoothly interpolate a coarse grid."""
    position = np.linspace(0.0, n_cells, n_out)
    left = np.minimum(position.astype(int), n_cells - 1)
    # Cosine easing hides the creases of plain linear interpolation.
    weight = (1.0 - np.cos(np.pi * (position - left))) / 2.0
    matrix = np.zeros((n_out, n_cells + 1), dtype=np.float32)
    matrix[np.arange(n_out), left] = 1.0 - weight
    matrix[np.arange(n_out), left + 1] = weight
    return matrix


class _Canvas:
    """Pixel grid of one image size and the random fields drawn on it."""

    def __init__(self, shape):
        self.shape = shape
        self.side = min(shape)
        self.y = np.arange(shape[0], dtype=np.float32)[:, None]
        self.x = np.arange(shape[1], dtype=np.float32)[None, :]
        self._smooth_rows = _interpolation_matrix(shape[0], 4)
        self._smooth_cols = _interpolation_matrix(shape[1], 4)

    def smooth_field(self, rng):
        """Random field of unit-order amplitude varying over a quarter image."""
        coarse = rng.standard_normal((5, 5), dtype=np.float32)
        return self._smooth_rows @ coarse @ self._smooth_cols.T

    def noise(self, rng, scale):
        return scale * rng.standard_normal(self.shape, dtype=np.float32)


def _render_texture(canvas, rng):
    """A woven fabric-like texture with random phase, brightness and grain."""
    period = max(4.0, canvas.side / 16.0)
    phase_y, phase_x, phase_fibre = rng.uniform(0.0, 2.0 * np.pi, size=3)
    brightness = rng.uniform(-0.05, 0.05)
    grain = rng.uniform(0.02, 0.04)
    weave = np.sin(2 * np.pi * canvas.y / period + phase_y) * np.sin(
        2 * np.pi * canvas.x / period + phase_x
    )
    fibre = np.sin(2 * np.pi * (canvas.x + canvas.y) / (period / 3.0) + phase_fibre)
    tone = (
        0.5
        + brightness
        + 0.13 * weave
        + 0.03 * fibre
        + 0.05 * canvas.smooth_field(rng)
        + canvas.noise(rng, grain)
    )
    image = _TEXTURE_DARK + tone[..., None] * (_TEXTURE_LIGHT - _TEXTURE_DARK)
    return image, {}


def _render_object(canvas, rng):
    """A turned metal cap with a centre bore and four bolt holes on a dark table.

    Returns the image and the layers a "missing" defect needs: the background
    that shows through and the coverage of the part (1 on solid metal).
    """
    side = canvas.side
    centre_y = canvas.shape[0] / 2.0 + rng.normal(0.0, 0.015 * side)
    centre_x = canvas.shape[1] / 2.0 + rng.normal(0.0, 0.015 * side)
    radius = 0.36 * side * (1.0 + rng.normal(0.0, 0.01))
    bore, bolt, bolt_circle = 0.12 * side, 0.035 * side, 0.24 * side
    rotation = rng.uniform(0.0, np.pi / 2.0)
    brightness = rng.uniform(0.92, 1.08)

    dy, dx = canvas.y - centre_y, canvas.x - centre_x
    distance = np.hypot(dy, dx)
    # Coverage ramps over one pixel so that the rims are anti-aliased.
    coverage = np.clip(radius - distance + 0.5, 0, 1) * np.clip(distance - bore + 0.5, 0, 1)
    for angle in rotation + np.arange(4) * np.pi / 2.0:
        to_bolt = np.hypot(dy - bolt_circle * np.sin(angle), dx - bolt_circle * np.cos(angle))
        coverage *= np.clip(to_bolt - bolt + 0.5, 0, 1)

    # Light from the upper left, plus the rings a lathe leaves on the face.
    shading = 0.82 - 0.12 * (dx + dy) / (np.sqrt(2.0) * radius)
    rings = 0.03 * np.sin(2 * np.pi * distance / max(2.0, 0.025 * side))
    metal = (shading + rings + canvas.noise(rng, 0.015)) * brightness
    background = _BACKGROUND + (
        0.02 * canvas.smooth_field(rng) + canvas.noise(rng, 0.01)
    )[..., None]
    coverage_rgb = coverage[..., None]
    image = coverage_rgb * metal[..., None] * _METAL + (1 - coverage_rgb) * background
    layers = {
        "background": background,
        "coverage": coverage,
        "centre": np.array([centre_y, centre_x]),
        "radius": radius,
    }
    return image, layers


def _stamp(points, width, shape):
    """Rasterise a polyline given as dense (n, 2) points into a bool mask."""
    offsets = np.arange(width) - (width - 1) // 2
    rows = np.rint(points[:, 0])[:, None, None] + offsets[None, :, None]
    cols = np.rint(points[:, 1])[:, None, None] + offsets[None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    mask = np.zeros(shape, dtype=bool)
    mask[rows[inside].astype(int), cols[inside].astype(int)] = True
    return mask


def _walk(rng, start, heading, length, wiggle):
    """Points of a random walk with half-pixel steps and drifting heading."""
    n_steps = max(2, int(2 * length))
    headings = heading + np.cumsum(rng.normal(0.0, wiggle, n_steps))
    steps = 0.5 * np.stack([np.sin(headings), np.cos(headings)], axis=1)
    return start + np.cumsum(steps, axis=0)


def _blob(canvas, rng, centre, mean_radius):
    """Bool mask of a blob with a wavy outline, about ``mean_radius`` in radius."""
    dy, dx = canvas.y - centre[0], canvas.x - centre[1]
    angle = np.arctan2(dy, dx)
    amplitudes = rng.uniform(0.0, 0.07, size=3)
    phases = rng.uniform(0.0, 2 * np.pi, size=3)
    outline = mean_radius * (
        1.0 + sum(a * np.cos(k * angle + p) for k, a, p in zip((2, 3, 5), amplitudes, phases))
    )
    return np.hypot(dy, dx) <= outline


def _defect_region(defect_type, canvas, rng, layers, allowed, scale=1.0):
    """Draw the pixels one defect covers, as a bool (H, W) mask; ``scale`` shrinks the defect."""
    side = canvas.side * scale
    candidates = np.flatnonzero(allowed)
    centre = np.array(np.unravel_index(rng.choice(candidates), canvas.shape), dtype=float)
    if defect_type == "scratch":
        # A slightly bent line: a quadratic Bezier curve through the centre.
        half = rng.uniform(0.15, 0.25) * side
        heading = rng.uniform(0.0, np.pi)
        direction = np.array([np.sin(heading), np.cos(heading)])
        bend = rng.normal(0.0, 0.05 * side) * np.array([-direction[1], direction[0]])
        t = np.linspace(-1.0, 1.0, int(4 * half) + 2)[:, None]
        points = centre + t * half * direction + (1.0 - t**2) * bend
        return _stamp(points, max(1, round(side / 64)), canvas.shape)
    if defect_type == "crack":
        # A meandering trunk with two side branches, one or two pixels wide.
        trunk = _walk(rng, centre, rng.uniform(0, 2 * np.pi), rng.uniform(0.35, 0.55) * side, 0.12)
        branches = [
            _walk(
                rng,
                trunk[rng.integers(len(trunk))],
                rng.uniform(0, 2 * np.pi),
                rng.uniform(0.1, 0.25) * side,
                0.15,
            )
            for _ in range(2)
        ]
        return _stamp(np.concatenate([trunk, *branches]), max(1, round(side / 128)), canvas.shape)
    if defect_type == "spot":
        return _blob(canvas, rng, centre, rng.uniform(0.04, 0.065) * side)
    if defect_type == "stain":
        return _blob(canvas, rng, centre, rng.uniform(0.07, 0.1) * side)
    # "missing": on a part, a chunk bitten out of the rim; on a texture, a hole.
    if "coverage" in layers:
        # Move the centre out along its radius onto the outer rim.
        outward = centre - layers["centre"]
        rim = layers["centre"] + outward / max(np.hypot(*outward), 1e-6) * layers["radius"]
        return _blob(canvas, rng, rim, rng.uniform(0.08, 0.12) * side) & (
            layers["coverage"] > 0.05
        )
    return _blob(canvas, rng, centre, rng.uniform(0.06, 0.09) * side)


def _apply_defect(defect_type, image, region, rng, layers):
    """Change the pixels of ``region`` in the float RGB ``image`` in place."""
    pixels = image[region]
    if defect_type == "scratch":
        # Bright on dark surfaces, dark on bright ones, so it always shows.
        luminance = pixels @ _LUMINANCE
        shift = 0.35 if luminance.mean() < 0.5 else -0.35
        image[region] = pixels + shift
    elif defect_type == "crack":
        image[region] = 0.3 * pixels
    elif defect_type == "spot":
        image[region] = 0.35 * pixels + 0.65 * _DIRT
    elif defect_type == "stain":
        opacity = rng.uniform(0.55, 0.7)
        colour = _STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))]
        image[region] = (1.0 - opacity) * pixels + opacity * colour
    elif "background" in layers:
        image[region] = layers["background"][region]
    else:
        image[region] = _HOLE + rng.normal(0.0, 0.01, size=(len(pixels), 1))


def _to_uint8(image, grey):
    if grey:
        image = image @ _LUMINANCE
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def make_defect_images(
    n_samples=100,
    *,
    image_size=128,
    kind="texture",
    defect_fraction=0.5,
    defect_types=_DEFECT_TYPES,
    grey=False,
    defect_scale=1.0,
    random_state=None,
):
    """Generate a synthetic visual-inspection data set with exact defect masks.

    Good images all come from one distribution: for ``kind="texture"`` a
    woven fabric-like surface with random phase, brightness and grain; for
    ``kind="object"`` a round metal part with a centre bore and four bolt
    holes, with small random shifts, rotation, size and brightness changes.
    Defective images are good images with one defect drawn on them:

    - ``"scratch"``: a thin, slightly bent line, bright on dark surfaces and
      dark on bright ones;
    - ``"spot"``: a dark blob of dirt;
    - ``"crack"``: a thin dark meandering line with two branches;
    - ``"missing"``: a piece of the surface gone (a hole in the texture, a
      chunk out of the part's rim showing the background);
    - ``"stain"``: a translucent blob of rust, oil or verdigris colour.

    Each defect covers about 0.4 % to 5 % of a square image (defect sizes
    follow the shorter side) and lies on the part for ``kind="object"``.
    The data set is a learnable one-class problem: the defects are local
    departures from a stationary appearance.

    Parameters
    ----------
    n_samples : int, default=100
        Number of images.
    image_size : int or tuple (height, width), default=128
        Image size in pixels, at least 16 a side.
    kind : {"texture", "object"}, default="texture"
        Appearance of the good images.
    defect_fraction : float in [0, 1], default=0.5
        Fraction of defective images; ``round(defect_fraction * n_samples)``
        images, at random positions, are defective.
    defect_types : sequence of str, \
            default=("scratch", "spot", "crack", "missing", "stain")
        Defect kinds to draw; the defective images are spread evenly over them.
    grey : bool, default=False
        If True, return grey (N, H, W) images (BT.601 luminance) instead of
        colour (N, H, W, 3) images.
    defect_scale : float in (0, 1], default=1.0
        Size of the defects relative to the defaults above (length, width
        and radius alike). A large image with ``defect_scale=0.25`` has
        the thin scratches (a few pixels wide) and small spots of real
        high-resolution inspection images, which resizing the whole image
        to a backbone's input blurs away.
    random_state : int, RandomState instance or None, default=None
        Seed for reproducible output. The good appearance of each image
        depends only on ``random_state``, ``n_samples``, ``image_size``,
        ``kind`` and ``grey``: with ``defect_fraction=0`` the same call
        returns the defect-free version of every image.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with attributes:

        images : ndarray of shape (n_samples, H, W, 3) or (n_samples, H, W)
            uint8 images.
        target : ndarray of shape (n_samples,), dtype int
            1 for good, -1 for defective images.
        masks : ndarray of shape (n_samples, H, W), dtype bool
            True exactly at the pixels the defect changed; all False for
            good images.
        defect_type : ndarray of str, shape (n_samples,)
            Defect kind of each image, ``'good'`` for good images.
        DESCR : str
            Description of the data set.

    Examples
    --------
    >>> from skfastflow.datasets import make_defect_images
    >>> data = make_defect_images(20, image_size=64, random_state=0)
    >>> data.images.shape, data.images.dtype
    ((20, 64, 64, 3), dtype('uint8'))
    >>> int((data.target == -1).sum())
    10
    >>> bool(data.masks[data.target == -1].any(axis=(1, 2)).all())
    True
    """
    shape, defect_types = _check_make_params(
        n_samples, image_size, kind, defect_fraction, defect_types, grey
    )
    if not (isinstance(defect_scale, Real) and 0 < defect_scale <= 1):
        raise ValueError(f"defect_scale must be a number in (0, 1], got {defect_scale!r}.")
    random_state = check_random_state(random_state)
    # Two independent streams: one for the good appearance, one for the
    # defects, so that the defect settings never change how the good images look.
    appearance_seed, defect_seed = random_state.randint(np.iinfo(np.int32).max, size=2)
    appearance_rng = np.random.default_rng(appearance_seed)
    defect_rng = np.random.default_rng(defect_seed)

    n_defective = int(round(defect_fraction * n_samples))
    defect_type = np.full(n_samples, _GOOD, dtype=object)
    defective = defect_rng.permutation(n_samples)[:n_defective]
    defect_type[defective] = defect_rng.permutation(np.resize(defect_types, n_defective))
    defect_type = defect_type.astype(str)

    canvas = _Canvas(shape)
    render = _render_texture if kind == "texture" else _render_object
    images = np.empty((n_samples, *shape) if grey else (n_samples, *shape, 3), dtype=np.uint8)
    masks = np.zeros((n_samples, *shape), dtype=bool)
    margin = int(0.1 * canvas.side)
    inner = np.zeros(shape, dtype=bool)
    inner[margin : shape[0] - margin, margin : shape[1] - margin] = True
    for index in range(n_samples):
        image, layers = render(canvas, appearance_rng)
        images[index] = good = _to_uint8(image, grey)
        if defect_type[index] != _GOOD:
            # On a part, defects go on solid metal; on a texture, away from the border.
            allowed = layers["coverage"] >= 1.0 if "coverage" in layers else inner
            for _ in range(_MAX_REDRAWS):
                region = _defect_region(defect_type[index], canvas, defect_rng, layers, allowed, defect_scale)
                if kind == "object" and defect_type[index] != "missing":
                    region &= allowed
                if region.sum() >= _MIN_DEFECT_AREA * (defect_scale * canvas.side) ** 2:
                    break
            _apply_defect(defect_type[index], image, region, defect_rng, layers)
            images[index] = _to_uint8(image, grey)
            changed = images[index] != good
            masks[index] = changed.any(axis=-1) if changed.ndim == 3 else changed

    return Bunch(
        images=images,
        target=np.where(defect_type == _GOOD, 1, -1),
        masks=masks,
        defect_type=defect_type,
        DESCR=(
            f"Synthetic inspection data set ({kind}): {n_samples} images of "
            f"{shape[0]}x{shape[1]} pixels, {n_defective} defective "
            f"({', '.join(defect_types)}), generated by make_defect_images.\n"
        ),
    )
