"""User input ``X`` as images: every check of it and every input error message; no torch.

Accepted ``X``:

- a numpy array ``(N, H, W)`` (grey) or ``(N, H, W, C)`` with ``C`` in {1, 3, 4} (grey,
  RGB, RGBA; alpha is dropped);
- a list (or tuple, or 1-D object array) whose items are 2-D/3-D arrays, PIL images or
  image file paths, in any mix, of any sizes.

Pixel values: ``uint8`` 0..255, ``uint16`` 0..65535 (16-bit cameras), other integer types
holding 0..255, or floats in [0, 1]. Anything else is refused with a message that says how
to fix it, before any model work starts. Files and PIL images are read by
:mod:`skfastflow.files` (the picture an image viewer shows: EXIF orientation, colour
profiles, transparency...), lazily, one batch at a time, so that large collections stream
with bounded memory; a file that turns out to be unreadable then fails with a message
naming it. Every image, from a stack or a list, is converted to float and resized on its
own, so a batch of full-resolution images never exists as floats.

Each image is also classed as grey (one channel, or three channels that agree within
``GREY_TOLERANCE``) or colour, so that a detector can flag images unlike the ones it
learned (see :class:`ImageInput`). docs/errors.md lists every message and its fix.

:class:`ImageInput` holds all of this and imports numpy and Pillow only: the torch
detector (:class:`skfastflow.images.ImageCollection`, which resizes and normalises into
tensors) and the torch-free runtime (:class:`skfastflow.runtime.RuntimeDetector`) both
build on it, so they accept, refuse and warn about the same inputs in the same words.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image

from .files import ImageWarning, check_image_path, image_to_array, read_image

_CHANNEL_COUNTS = (1, 3, 4)

# Divisor to [0, 1] of each dtype skfastflow.files returns, by (kind, itemsize).
_FILE_SCALES = {("u", 1): 255.0, ("u", 2): 65535.0, ("f", 4): 1.0}

# Largest channel difference (on the 0..1 scale) of an image that still counts as grey: a
# grey picture saved as RGB JPEG comes back with channels a level or two apart.
GREY_TOLERANCE = 4.0 / 255.0


def _describe(X) -> str:
    if isinstance(X, np.ndarray):
        return f"array of shape {X.shape} and dtype {X.dtype}"
    return type(X).__name__


def _conversion_hint(X) -> str:
    """How to turn a commonly passed but unsupported object into accepted input."""
    if type(X).__name__ == "Tensor" and type(X).__module__.startswith("torch"):  # torch need not be installed
        return " For a torch tensor (N, C, H, W), pass X.permute(0, 2, 3, 1).cpu().numpy()."
    if isinstance(X, (list, tuple)):
        return " For nested lists of pixel values, pass np.asarray(X, dtype=np.uint8)."
    return ""


def _pixel_scale(array: np.ndarray, where: str, index: int | None = None) -> float:
    """Check dtype and value range of pixels; return the divisor that maps them to [0, 1].

    ``where`` names the array in messages; ``index`` is its position in X, if it is one item.
    """
    kind = array.dtype.kind
    if array.dtype == np.uint8:
        return 255.0
    if array.dtype == np.uint16:
        if array.size and 0 < array.max() <= 255:
            # Read as 0..65535 these images are nearly black; almost surely 8-bit data (all-zero
            # images are black on any scale, so they pass silently).
            warnings.warn(
                ImageWarning(
                    f"{where} has dtype uint16, read as 16-bit (0..65535), but holds no value above 255 and so "
                    "looks almost black; if it holds 8-bit values, convert it with .astype(np.uint8) (or save "
                    "its file as 8-bit).",
                    index=index,
                    subject=where,
                ),
                stacklevel=4,
            )
        return 65535.0
    if kind == "b":
        raise TypeError(f"{where} has boolean pixels; convert to uint8 (0..255) or float (0..1), e.g. X.astype(np.uint8) * 255.")
    if kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"{where} has integer pixels outside 0..255 (min {array.min()}, max {array.max()}); "
                "pass uint8 0..255, uint16 for 16-bit images, or floats in [0, 1]."
            )
        return 255.0
    if kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"{where} contains NaN or infinite pixels; replace them (e.g. np.nan_to_num) before calling.")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            hint = "divide by 255 (it looks like 0..255 data)" if high <= 255.0 and low >= 0.0 else "rescale to [0, 1]"
            raise ValueError(f"{where} has float pixels in [{low:g}, {high:g}], but floats must lie in [0, 1]: {hint}.")
        return 1.0
    raise TypeError(f"{where} has dtype {array.dtype}, which is not an image type; pass uint8 0..255 or floats in [0, 1].")


def _unit_array(array: np.ndarray, scale: float) -> np.ndarray:
    """One image ``(H, W)`` or ``(H, W, C)`` as float32 ``(H, W, C)`` in [0, 1], C in {1, 3}.

    No copy for float32 data; one float copy otherwise, divided in place.
    """
    if array.ndim == 2:
        array = array[:, :, None]
    pixels = np.ascontiguousarray(array[:, :, :3], dtype=np.float32)
    if not pixels.flags.writeable:  # e.g. a read-only memory map, which torch cannot wrap
        pixels = pixels.copy()
    if scale != 1.0:  # integer pixels, so the array is a fresh copy
        pixels /= np.float32(scale)
    return pixels


def _channels_last_rgb(array: np.ndarray, where: str) -> np.ndarray:
    """Return an image array ``(H, W, 3)`` from ``(H, W)`` or ``(H, W, C)``, C in {1, 3, 4}."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"{where} has {array.ndim} dimensions; an image must be (H, W) or (H, W, C).")
    channels = array.shape[2]
    if channels not in _CHANNEL_COUNTS:
        if array.shape[0] in _CHANNEL_COUNTS:
            raise ValueError(f"{where} has shape {array.shape}, which looks channels-first; pass it as array.transpose(1, 2, 0).")
        raise ValueError(f"{where} has {channels} channels; images must have 1 (grey), 3 (RGB) or 4 (RGBA) channels.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{where} is an empty image of height {array.shape[0]} and width {array.shape[1]}; remove it from X.")
    if channels == 4:  # RGBA: the alpha channel carries no appearance
        array = array[:, :, :3]
    return array


def is_grey(image: np.ndarray) -> bool:
    """Whether ``image`` ``(H, W, C)`` in [0, 1] is grey: one channel, or channels within ``GREY_TOLERANCE``."""
    if image.shape[2] == 1:
        return True
    # In float32, as the pixels: the tolerance rounds as they do. The largest channel spread
    # is the largest of the three pairwise differences; reducing over the short last axis
    # instead (max(axis=2) - min(axis=2)) took 5 ms for a 256x256 image, a tenth of scoring it.
    tolerance = np.float32(GREY_TOLERANCE)
    red, green, blue = image[:, :, 0], image[:, :, 1], image[:, :, 2]
    return bool(np.abs(red - green).max() <= tolerance and np.abs(red - blue).max() <= tolerance and np.abs(green - blue).max() <= tolerance)


class ImageInput:
    """Validated view of user input ``X``; hands out its images one at a time as float arrays.

    Structural checks (type, dimensions, channels, dtype, value range of arrays, existence of
    paths) run at construction, so bad input fails before any model work. File contents are
    read lazily, by :meth:`load`.

    Parameters
    ----------
    X : array-like or list
        See the module docstring.
    name : str, default="X"
        Name used in error messages.
    fitted_colour_mode : {"grey", "colour", "mixed"} or None, default=None
        :attr:`colour_mode` of the images a detector was fitted on. With ``"grey"``, each
        colour image gives an :class:`~skfastflow.files.ImageWarning` and is scored: colour
        on a part that has none is a defect to flag, not an input error. With ``"colour"``,
        the first grey image gives one (a neutral colour image is grey too, so it may be
        legitimate). ``"mixed"`` or None: no check. The warnings carry the image's
        ``index`` in ``X``.

    Attributes
    ----------
    colour_mode : {"grey", "colour", "mixed"} or None
        Whether the images passed so far to :meth:`check_colour` were all grey, all colour,
        or both; None before any was.
    """

    def __init__(self, X, name: str = "X", fitted_colour_mode: str | None = None) -> None:
        self.name = name
        self.fitted_colour_mode = fitted_colour_mode
        self.colour_mode = None
        self._warned_grey = False
        if isinstance(X, Image.Image):
            raise TypeError(f"{name} is a single PIL image; pass a list of images, e.g. [image].")
        if isinstance(X, (str, os.PathLike)):
            raise TypeError(f"{name} is a single path; pass a list of paths, e.g. [{os.fspath(X)!r}], or a folder's images.")
        if isinstance(X, np.ndarray) and X.dtype != object and X.dtype.kind not in "US":
            self._stack = self._check_stack(X)
            self._items = None
            self.n_images = X.shape[0]
        elif isinstance(X, np.ndarray) and X.dtype == object and X.ndim > 1:
            raise TypeError(
                f"{name} ({_describe(X)}) holds Python objects; convert it to numbers, e.g. X.astype(np.uint8) "
                "for 0..255 pixels or X.astype(np.float32) for 0..1 pixels."
            )
        elif isinstance(X, (list, tuple, np.ndarray)):
            self._stack = None
            self._items = [self._check_item(item, index) for index, item in enumerate(X)]
            self.n_images = len(self._items)
        else:
            raise TypeError(
                f"{name} is a {type(X).__name__}; pass a numpy array (N, H, W[, C]) or a list of arrays, PIL images "
                f"or paths.{_conversion_hint(X)}"
            )
        if self.n_images == 0:
            raise ValueError(f"{name} contains no images; pass at least one image.")

    def __len__(self) -> int:
        return self.n_images

    def _check_stack(self, X: np.ndarray) -> np.ndarray:
        where = f"{self.name} ({_describe(X)})"
        if X.ndim == 3 and X.shape[-1] in _CHANNEL_COUNTS and min(X.shape[:2]) > 4:
            raise ValueError(
                f"{where} looks like one (H, W, C) image; pass a stack of images: X[np.newaxis] for one image, "
                "or (N, H, W) / (N, H, W, C)."
            )
        if X.ndim not in (3, 4):
            hint = " For one grey image, pass X[np.newaxis]." if X.ndim == 2 else ""
            raise ValueError(f"{where} must have 3 (N, H, W) or 4 (N, H, W, C) dimensions.{hint}")
        if X.ndim == 4 and X.shape[-1] not in _CHANNEL_COUNTS:
            if X.shape[1] in _CHANNEL_COUNTS:
                raise ValueError(f"{where} looks channels-first (N, C, H, W); pass X.transpose(0, 2, 3, 1).")
            raise ValueError(f"{where} has {X.shape[-1]} channels; images must have 1 (grey), 3 (RGB) or 4 (RGBA).")
        if X.shape[0] == 0:
            raise ValueError(f"{self.name} contains no images; pass at least one image.")
        if X.shape[1] == 0 or X.shape[2] == 0:
            raise ValueError(f"{where} holds empty images of height {X.shape[1]} and width {X.shape[2]}; pass real images.")
        self._scale = _pixel_scale(X, where)  # the whole stack once, so errors come before training
        return X

    def _check_item(self, item, index: int):
        where = f"{self.name}[{index}]"
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            check_image_path(path)
            return path
        if isinstance(item, Image.Image):
            return item
        if isinstance(item, np.ndarray):
            if item.dtype == object:
                raise TypeError(
                    f"{where} ({_describe(item)}) holds Python objects; convert it with np.asarray(item, dtype=np.uint8) "
                    "for 0..255 pixels or dtype=np.float32 for 0..1 pixels."
                )
            item = _channels_last_rgb(item, f"{where} ({_describe(item)})")
            _pixel_scale(item, where, index)
            return item
        raise TypeError(
            f"{where} is a {type(item).__name__}; list items must be numpy arrays, PIL images or file paths."
            f"{_conversion_hint(item)}"
        )

    def load(self, index: int) -> tuple[np.ndarray, bool]:
        """Image ``index`` as float32 ``(H, W, C)`` in [0, 1], C in {1, 3}, and whether it is grey.

        Integer pixels become a fresh array divided in place; float32 pixels are not copied
        (unless read-only: a copy that torch can wrap). Files and PIL images are read as a
        viewer shows them (:mod:`skfastflow.files`): uint8, uint16 or float32 in [0, 1].
        """
        if self._stack is not None:
            image = _unit_array(self._stack[index], self._scale)
        else:
            item = self._items[index]
            if isinstance(item, np.ndarray):  # checked at construction
                image = _unit_array(item, _pixel_scale(item, f"{self.name}[{index}]", index))
            else:
                array = read_image(item) if isinstance(item, str) else image_to_array(item)
                image = _unit_array(array, _FILE_SCALES[array.dtype.kind, array.dtype.itemsize])
        return image, is_grey(image)

    def check_colour(self, batch_indices: np.ndarray, grey_flags: np.ndarray) -> None:
        """Record grey/colour of a batch of images (one flag each); flag images unlike the fitted ones."""
        batch_mode = "grey" if grey_flags.all() else "colour" if not grey_flags.any() else "mixed"
        if self.colour_mode is None or self.colour_mode == batch_mode:
            self.colour_mode = batch_mode
        else:
            self.colour_mode = "mixed"
        if self.fitted_colour_mode == "grey":
            for index in batch_indices[~grey_flags]:
                subject = f"{self.name}[{index}]"
                warnings.warn(
                    ImageWarning(
                        f"{subject} is a colour image, but the detector was fitted on grey images only; it is scored "
                        "as it is, and colour the good images never had makes it score as anomalous. If the camera "
                        "now delivers colour images, refit the detector on colour images.",
                        index=int(index),
                        subject=subject,
                    ),
                    stacklevel=3,
                )
        if self.fitted_colour_mode == "colour" and grey_flags.any() and not self._warned_grey:
            self._warned_grey = True
            index = int(batch_indices[np.flatnonzero(grey_flags)[0]])
            subject = f"{self.name}[{index}]"
            warnings.warn(
                ImageWarning(
                    f"{subject} is a grey image, but the detector was fitted on colour images only; grey images "
                    "tend to score as anomalous. Pass colour images, or refit on grey images if the camera now "
                    "delivers grey.",
                    index=index,
                    subject=subject,
                ),
                stacklevel=3,
            )
