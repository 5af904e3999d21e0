"""Every conversion from user input to backbone-ready tensors, and every input error message.

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
learned (see :class:`ImageCollection`). docs/errors.md lists every message and its fix.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

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
    if isinstance(X, torch.Tensor):
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


def _unit_tensor(array: np.ndarray, scale: float) -> torch.Tensor:
    """One image ``(H, W)`` or ``(H, W, C)`` as a float32 tensor ``(1, C, H, W)`` in [0, 1], C in {1, 3}.

    No copy for float32 data; one float copy otherwise, divided in place.
    """
    if array.ndim == 2:
        array = array[:, :, None]
    pixels = np.ascontiguousarray(array[:, :, :3], dtype=np.float32)
    if not pixels.flags.writeable:  # e.g. a read-only memory map, which torch cannot wrap
        pixels = pixels.copy()
    tensor = torch.from_numpy(pixels)
    if scale != 1.0:  # integer pixels, so the tensor is a fresh copy
        tensor.div_(scale)
    return tensor.permute(2, 0, 1)[None]


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


def _grey_flags(tensor: torch.Tensor) -> np.ndarray:
    """Whether each image of ``tensor`` (n, C, H, W) in [0, 1] is grey (see ``GREY_TOLERANCE``)."""
    if tensor.shape[1] == 1:
        return np.ones(tensor.shape[0], dtype=bool)
    spread = (tensor.amax(dim=1) - tensor.amin(dim=1)).flatten(1).amax(dim=1)
    return (spread <= GREY_TOLERANCE).cpu().numpy()


@dataclass
class ImageBatch:
    """A batch of backbone-ready images, the original size of each, and which are grey."""

    indices: np.ndarray
    tensor: torch.Tensor  # (n, 3, H, W) float32, normalised
    original_sizes: list[tuple[int, int]]
    is_grey: np.ndarray  # (n,) bool


class ImageCollection:
    """Validated view of user input ``X``; yields normalised tensors batch by batch.

    Structural checks (type, dimensions, channels, dtype, value range of arrays, existence of
    paths) run at construction, so bad input fails before any training. File contents are
    read lazily in :meth:`batches`.

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
        Whether the images yielded so far by :meth:`batches` were all grey, all colour, or
        both; None before any was yielded.
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

    def _load_item(self, index: int) -> torch.Tensor:
        """List item ``index`` as a float32 tensor (1, C, H, W) in [0, 1], C in {1, 3}."""
        item = self._items[index]
        if isinstance(item, np.ndarray):  # checked at construction
            return _unit_tensor(item, _pixel_scale(item, f"{self.name}[{index}]", index))
        # Files and PIL images, read as a viewer shows them: uint8, uint16 or float32 in [0, 1].
        array = read_image(item) if isinstance(item, str) else image_to_array(item)
        return _unit_tensor(array, _FILE_SCALES[array.dtype.kind, array.dtype.itemsize])

    def _load_stacked(self, index: int) -> torch.Tensor:
        """Image ``index`` of the stack as a float32 tensor (1, C, H, W) in [0, 1], C in {1, 3}."""
        return _unit_tensor(self._stack[index], self._scale)

    def batches(
        self,
        batch_size: int,
        input_size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        indices: np.ndarray | None = None,
    ) -> Iterator[ImageBatch]:
        """Yield normalised tensors ``(n, 3, *input_size)`` of at most ``batch_size`` images.

        Images are resized with antialiased bilinear interpolation; grey becomes RGB by
        repeating the channel; then ``(x - mean) / std`` per channel.
        """
        indices = np.arange(self.n_images) if indices is None else np.asarray(indices)
        mean_tensor = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_tensor = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        for start in range(0, len(indices), batch_size):
            batch_indices = indices[start : start + batch_size]
            tensor, sizes, is_grey = self._read_batch(batch_indices, input_size)
            self._check_colour(batch_indices, is_grey)
            yield ImageBatch(batch_indices, (tensor - mean_tensor) / std_tensor, sizes, is_grey)

    def _read_batch(self, batch_indices: np.ndarray, input_size: tuple[int, int]):
        """Images at ``batch_indices`` resized to ``input_size`` (n, 3, H, W), their sizes and grey flags.

        One image at a time: only one image exists as full-resolution floats at any moment.
        """
        load = self._load_stacked if self._stack is not None else self._load_item
        tensors, sizes, is_grey = [], [], []
        for index in batch_indices:
            size, grey, tensor = _shrink(load(int(index)), input_size)  # the full-size floats die here
            sizes.append(size)
            is_grey.append(grey)
            tensors.append(tensor)
        return torch.cat(tensors), sizes, np.array(is_grey, dtype=bool)

    def _check_colour(self, batch_indices: np.ndarray, is_grey: np.ndarray) -> None:
        """Record grey/colour of a batch; flag images unlike the fitted ones."""
        batch_mode = "grey" if is_grey.all() else "colour" if not is_grey.any() else "mixed"
        if self.colour_mode is None or self.colour_mode == batch_mode:
            self.colour_mode = batch_mode
        else:
            self.colour_mode = "mixed"
        if self.fitted_colour_mode == "grey":
            for index in batch_indices[~is_grey]:
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
        if self.fitted_colour_mode == "colour" and is_grey.any() and not self._warned_grey:
            self._warned_grey = True
            index = int(batch_indices[np.flatnonzero(is_grey)[0]])
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


def _shrink(image: torch.Tensor, input_size: tuple[int, int]) -> tuple[tuple[int, int], bool, torch.Tensor]:
    """One image (1, C, H, W): its size, whether it is grey, and it as RGB at ``input_size``."""
    return tuple(image.shape[2:]), bool(_grey_flags(image)[0]), _to_rgb(_resize(image, input_size))


def _resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(tensor.shape[2:]) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)


def _to_rgb(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.expand(-1, 3, -1, -1) if tensor.shape[1] == 1 else tensor


def resize_maps(maps: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Resize maps ``(n, 1, h, w)`` back to each image's size, one interpolation per size.

    Bilinear, with pixel centres at half-integers (``align_corners=False``), as the images
    were resized to ``input_size``: each map pixel lies over its image pixel.

    Returns
    -------
    list of ndarray
        One float array ``(H_i, W_i)`` per map.
    """
    resized: list[np.ndarray | None] = [None] * len(sizes)
    for size in set(sizes):
        group = [i for i, s in enumerate(sizes) if s == size]
        block = maps[group]
        if tuple(block.shape[2:]) != size:
            block = F.interpolate(block, size=size, mode="bilinear", align_corners=False)
        for i, item in zip(group, block[:, 0].cpu().numpy()):
            resized[i] = item
    return resized
