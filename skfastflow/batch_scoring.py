"""Score image files one result per file, so that a bad file costs only that file.

:func:`score_files` reads each file of a batch with :func:`skfastflow.files.read_image`,
scores the readable ones in one detector call, and yields one :class:`FileScore` per
path, in input order: the score and verdict, or the error that kept the file from being
scored. The command line's ``predict`` is built on it.

It uses only public detector methods (``score_samples``, ``predict_maps(...,
return_scores=True)``, ``offset_``, ``batch_size``) and imports numpy and Pillow only, so
it serves any detector with those methods: :class:`~skfastflow.FastFlowDetector`, a
torch-free runtime detector, or a detector on a cluster worker.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from .files import ImageWarning, read_image

__all__ = ["FileScore", "score_files"]

# What reading a file raises for a file that cannot be used: read_image turns every
# problem with the file into ValueError; an unreadable disk or a file too large to decode
# can still raise these.
_FILE_ERRORS = (ValueError, OSError, MemoryError)
# What a detector raises for an image it refuses (wrong size, values it cannot score).
_IMAGE_ERRORS = (ValueError, TypeError)


class FileScore(NamedTuple):
    """The result for one file of :func:`score_files`.

    Attributes
    ----------
    path : str
        The file, as given.
    score : float
        ``score_samples`` of its image (higher = more normal); NaN when it has an error.
    decision : float
        ``score - offset_``: negative = defective; NaN when it has an error.
    verdict : {"good", "defective", "error"}
        ``"defective"`` when ``decision < 0``.
    error : str or None
        Why the file could not be scored (names the file, says what to do); None if scored.
    anomaly_map : ndarray of shape (H, W), dtype float32, or None
        With ``return_maps=True``, the anomaly map at the image's displayed size (higher
        = more anomalous); else None, and None when the file has an error.
    """

    path: str
    score: float
    decision: float
    verdict: str
    error: str | None = None
    anomaly_map: np.ndarray | None = None


def score_files(detector, paths: Iterable, *, batch_size: int | None = None, return_maps: bool = False) -> Iterator[FileScore]:
    """Score image files, one result per file, in input order; a bad file costs only itself.

    Each batch of ``batch_size`` files is read with :func:`skfastflow.files.read_image`
    (the picture a viewer shows); files that cannot be read get an error result, and the
    rest are scored in one call of the detector. Should the detector refuse that batch,
    its images are scored one by one, so that only the image it refuses gets the error.
    Memory is bounded by one batch; results are yielded as each batch completes.

    Parameters
    ----------
    detector : fitted detector
        Any object with ``score_samples(X)``, ``predict_maps(X, return_scores=True)``,
        ``offset_`` and ``batch_size``, where ``X`` is a list of image arrays: a fitted
        :class:`~skfastflow.FastFlowDetector`, or a runtime detector with the same methods.
    paths : iterable of str or path-like
        Image files.
    batch_size : int, optional
        Files read and scored per detector call; default ``detector.batch_size``.
    return_maps : bool, default=False
        Also return each image's anomaly map (``predict_maps``), at its displayed size.

    Yields
    ------
    result : FileScore
        One per path, in the order of ``paths``.

    Warns
    -----
    ImageWarning
        Warnings about single images (from reading the file, or from the detector, e.g. a
        colour image for a detector fitted on grey ones) name the file.

    Examples
    --------
    Write the verdicts of a folder to a CSV file, listing files that could not be read::

        import csv
        from skfastflow.batch_scoring import score_files
        from skfastflow.files import list_images

        with open("verdicts.csv", "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["path", "decision", "verdict", "error"])
            for result in score_files(detector, list_images("parts/")):
                writer.writerow([result.path, result.decision, result.verdict, result.error or ""])

    ``pandas.DataFrame(score_files(detector, paths))`` gives one row per file.
    """
    if batch_size is None:
        batch_size = detector.batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"paths is a single path; pass a list of paths, e.g. [{os.fspath(paths)!r}].")
    batch: list[str] = []
    for path in paths:
        batch.append(os.fspath(path))
        if len(batch) == batch_size:
            yield from _score_batch(detector, batch, return_maps)
            batch = []
    if batch:
        yield from _score_batch(detector, batch, return_maps)


def _score_batch(detector, paths: list[str], return_maps: bool) -> list[FileScore]:
    """Results for one batch of files, in order."""
    results: list[FileScore | None] = [None] * len(paths)
    readable, arrays = [], []
    for position, path in enumerate(paths):
        try:
            arrays.append(read_image(path))
        except _FILE_ERRORS as error:
            results[position] = _error_result(path, error)
        else:
            readable.append(position)
    if arrays:
        try:
            scored = _score_arrays(detector, arrays, [paths[i] for i in readable], return_maps)
        except _IMAGE_ERRORS:
            # The detector refused the batch: score alone each image, to keep the others.
            scored = []
            for position, array in zip(readable, arrays):
                try:
                    scored.extend(_score_arrays(detector, [array], [paths[position]], return_maps))
                except _IMAGE_ERRORS as error:
                    scored.append(_error_result(paths[position], error))
        for position, result in zip(readable, scored):
            results[position] = result
    return results


def _score_arrays(detector, arrays: list[np.ndarray], paths: list[str], return_maps: bool) -> list[FileScore]:
    """Score readable images in one detector call; warnings about an image name its file."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if return_maps:
            maps, scores = detector.predict_maps(arrays, return_scores=True)
        else:
            maps, scores = [None] * len(arrays), detector.score_samples(arrays)
    _reissue(caught, paths)
    decisions = np.asarray(scores, dtype=np.float64) - detector.offset_
    return [
        FileScore(path, float(score), float(decision), "defective" if decision < 0 else "good", None, anomaly_map)
        for path, score, decision, anomaly_map in zip(paths, scores, decisions, maps)
    ]


def _reissue(caught, paths: list[str]) -> None:
    """Warn again what the detector warned, naming the file where a warning names a position."""
    for record in caught:
        message = record.message
        if isinstance(message, ImageWarning) and message.index is not None and message.subject:
            path = paths[message.index]
            text = str(message).replace(message.subject, f"image file {path!r}", 1)
            warnings.warn(ImageWarning(text, source=path), stacklevel=4)
        else:
            warnings.warn_explicit(message, record.category, record.filename, record.lineno, source=record.source)


def _error_result(path: str, error: BaseException) -> FileScore:
    text = str(error) or type(error).__name__
    if path not in text:
        text = f"{path}: {text}"
    return FileScore(path, float("nan"), float("nan"), "error", text, None)
