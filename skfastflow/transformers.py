"""Image transformers for scikit-learn Pipelines that end with a :class:`FastFlowDetector`.

Each transformer takes images in any form the detector accepts (an ``(N, H, W)`` or
``(N, H, W, C)`` array, or a list of arrays, PIL images or file paths) and returns images
the detector accepts, keeping the pixel dtype (uint8 stays uint8, floats stay floats):

- an array in, an array out;
- a list in, a list of arrays out (files and PIL images are read).

They are stateless: ``fit`` only checks the parameters, so they are cheap to clone and
grid-search.

Examples
--------
>>> import numpy as np
>>> from sklearn.pipeline import make_pipeline
>>> from skfastflow import FastFlowDetector
>>> from skfastflow.transformers import CropResize, GreyConverter
>>> X = np.random.default_rng(0).integers(0, 255, (6, 48, 64, 3), dtype=np.uint8)
>>> pipeline = make_pipeline(
...     CropResize(box=(0.0, 0.25, 1.0, 0.75), size=32),  # keep the middle half of each row
...     GreyConverter(),
...     FastFlowDetector("test_resnet", pre_trained=False, input_size=32, flow_steps=1,
...                      max_iter=1, random_state=0),
... ).fit(X)
>>> pipeline.predict(X).shape
(6,)
>>> pipeline[:-1].transform(X).shape  # what the detector sees
(6, 32, 32)
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval

from .datasets import _LUMINANCE
from .files import image_to_array, read_image
from .images import ImageCollection, _resize
from .nn.model import as_size_pair


def _validated_images(X):
    """``X`` checked by :class:`ImageCollection`, as an array or a list of arrays."""
    images = ImageCollection(X)
    if images._stack is not None:
        return images._stack
    return [_item_as_array(item) for item in images._items]


def _item_as_array(item) -> np.ndarray:
    """A validated list item (array, PIL image or path) as an array; files are read here, as a viewer shows them."""
    if isinstance(item, str):
        return read_image(item)
    if isinstance(item, np.ndarray):
        return item
    return image_to_array(item)


def _apply_to_images(X, transform_stack):
    """Apply ``transform_stack`` (a function of an ``(n, H, W[, C])`` array) to every image of ``X``."""
    images = _validated_images(X)
    if isinstance(images, np.ndarray):
        return transform_stack(images)
    return [transform_stack(image[np.newaxis])[0] for image in images]


class _StatelessImageTransformer(TransformerMixin, BaseEstimator):
    """Shared scikit-learn plumbing: ``fit`` validates parameters; images, not tables."""

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the parameters; nothing is learned.

        Parameters
        ----------
        X : array-like or list
            Images (not read).
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self._check_params()
        return self

    def _check_params(self) -> None:
        """Check parameters beyond their types (the constraints); nothing by default."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.input_tags.positive_only = True
        tags.transformer_tags.preserves_dtype = ["uint8", "uint16", "float32", "float64"]
        return tags


class CropResize(_StatelessImageTransformer):
    """Crop every image to a box, then optionally resize it.

    Cropping to the region where defects can occur keeps backgrounds, fixtures and labels
    out of the model; resizing makes image sizes uniform (or cheaper to process).

    Parameters
    ----------
    box : tuple of 4 floats, default=(0.0, 0.0, 1.0, 1.0)
        ``(top, left, bottom, right)`` as fractions of each image's height and width, so one
        box fits images of different sizes. Pixel rows ``round(top * H)`` to
        ``round(bottom * H)`` (exclusive) are kept, likewise for columns.
    size : int, tuple of 2 ints or None, default=None
        ``(height, width)`` of the output images (an int for squares); None keeps the
        cropped size. Resizing is antialiased bilinear interpolation, as in the detector.

    Examples
    --------
    >>> import numpy as np
    >>> from skfastflow.transformers import CropResize
    >>> X = np.zeros((2, 100, 200, 3), dtype=np.uint8)
    >>> CropResize(box=(0.1, 0.25, 0.9, 0.75)).fit_transform(X).shape
    (2, 80, 100, 3)
    >>> CropResize(size=(50, 64)).fit_transform(X).shape
    (2, 50, 64, 3)
    """

    _parameter_constraints: dict = {
        "box": [tuple],
        "size": [Interval(Integral, 1, None, closed="left"), tuple, None],
    }

    def __init__(self, box=(0.0, 0.0, 1.0, 1.0), size=None):
        self.box = box
        self.size = size

    def _check_box(self) -> tuple[float, float, float, float]:
        box = self.box
        if len(box) != 4 or not all(isinstance(v, Real) for v in box):
            raise ValueError(f"box={box!r} must be 4 numbers (top, left, bottom, right), fractions of height and width.")
        top, left, bottom, right = (float(v) for v in box)
        if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
            raise ValueError(
                f"box={box!r} must satisfy 0 <= top < bottom <= 1 and 0 <= left < right <= 1 "
                "(fractions of the image height and width)."
            )
        return top, left, bottom, right

    def _check_size(self):
        if isinstance(self.size, tuple) and (len(self.size) != 2 or not all(isinstance(v, Integral) and v > 0 for v in self.size)):
            raise ValueError(f"size={self.size!r} must be None, an int or a pair of positive ints (height, width).")
        return None if self.size is None else as_size_pair(self.size)

    def _check_params(self) -> None:
        self._check_box()
        self._check_size()

    def transform(self, X):
        """Crop (and resize) each image.

        Parameters
        ----------
        X : array-like or list
            Images, as for :meth:`FastFlowDetector.fit`.

        Returns
        -------
        images : ndarray or list of ndarray
            An array when ``X`` is an array, else a list; same dtype and channels as the input.
        """
        top, left, bottom, right = self._check_box()
        size = self._check_size()

        def crop_resize(stack: np.ndarray) -> np.ndarray:
            height, width = stack.shape[1:3]
            rows = slice(round(top * height), max(round(bottom * height), round(top * height) + 1))
            columns = slice(round(left * width), max(round(right * width), round(left * width) + 1))
            cropped = stack[:, rows, columns]
            return cropped.copy() if size is None else _resize_stack(cropped, size)

        return _apply_to_images(X, crop_resize)


class GreyConverter(_StatelessImageTransformer):
    """Convert colour images to grey (ITU-R BT.601 luminance); grey images pass unchanged.

    For parts whose defects show in brightness, not colour, grey input removes colour
    variations (lighting tint, batch colour) the model would otherwise have to learn.
    The detector repeats the grey channel to RGB for its backbone.

    Returns ``(N, H, W)`` arrays (or a list of ``(H, W)`` arrays); RGBA loses its alpha.

    Examples
    --------
    >>> import numpy as np
    >>> from skfastflow.transformers import GreyConverter
    >>> red = np.zeros((1, 2, 2, 3), dtype=np.uint8); red[..., 0] = 255
    >>> GreyConverter().fit_transform(red)[0, 0, 0]  # round(0.299 * 255)
    np.uint8(76)
    """

    _parameter_constraints: dict = {}

    def __init__(self):
        pass

    def transform(self, X):
        """Convert each image to grey.

        Parameters
        ----------
        X : array-like or list
            Images, as for :meth:`FastFlowDetector.fit`.

        Returns
        -------
        images : ndarray of shape (N, H, W) or list of ndarray of shape (H, W)
            Same dtype as the input.
        """
        return _apply_to_images(X, _grey_stack)


def _grey_stack(stack: np.ndarray) -> np.ndarray:
    if stack.ndim == 3:
        return stack
    if stack.shape[-1] == 1:
        return stack[..., 0]
    grey = stack[..., :3] @ _LUMINANCE.astype(np.float64)
    return _cast_like(grey, stack.dtype)


def _resize_stack(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(n, H, W[, C])`` to ``(n, *size[, C])``, keeping the dtype."""
    channels_last = stack if stack.ndim == 4 else stack[..., np.newaxis]
    tensor = torch.from_numpy(np.ascontiguousarray(channels_last, dtype=np.float32)).permute(0, 3, 1, 2)
    resized = _resize(tensor, size).permute(0, 2, 3, 1).numpy()
    if stack.ndim == 3:
        resized = resized[..., 0]
    return _cast_like(resized, stack.dtype)


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip to an integer dtype's range, or cast to a float dtype (kept within [0, 1])."""
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        return np.clip(np.rint(values), limits.min, limits.max).astype(dtype)
    # Antialiased interpolation can overshoot slightly; the detector refuses floats outside [0, 1].
    return np.clip(values, 0.0, 1.0).astype(dtype)
