"""Saving and loading fitted detectors: what a model file holds, and clear errors when it is bad.

A fitted :class:`~skfastflow.FastFlowDetector` pickles (``pickle``, ``joblib.dump``) into a
self-contained file:

- the torch model travels as a dictionary of numpy arrays (its ``state_dict``, the frozen
  backbone's weights included) plus the few numbers that rebuild its architecture, so the
  file loads without network access and without the backbone's weight file;
- tensors are stored on the CPU, so a detector fitted on a GPU loads on a CPU-only machine
  (it then runs on the CPU);
- each tensor is stored once, as float32 (or the integer type of the buffer it comes from),
  with a SHA-256 checksum: damaged weights are refused instead of silently changing scores;
- the file records the skfastflow, torch and timm versions and a format number. A file
  from another ``major.minor`` release, or in a format this release does not read, is
  refused with a message saying which version to install (or to refit).

:func:`save` and :func:`load` wrap ``joblib`` for programs (the command line among them):
``save`` writes to a temporary file and renames it into place, so that an interrupted save
never leaves a half-written model behind; ``load`` turns truncated, corrupted or foreign
files into a :class:`ModelFileError` that names the file.

Pickle files can run code when loaded: load only files you trust.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import joblib
import numpy as np
import timm
import torch

from . import __version__
from .nn import FastflowModel

# Bump when the pickled state changes in a way older code cannot read; the loader reads
# every format from _OLDEST_READABLE_FORMAT up to FORMAT_VERSION.
FORMAT_VERSION = 1
_OLDEST_READABLE_FORMAT = 1


class ModelFileError(ValueError):
    """A model file cannot be loaded: truncated, corrupted, not a model, or from a newer version."""


class PicklableModel:
    """Pickling of an estimator holding a fitted ``FastflowModel`` as ``model_`` (a mixin).

    ``__getstate__`` replaces ``model_`` by :func:`model_to_state` of it and records the
    skfastflow version and the format number; ``__setstate__`` checks them
    (:func:`check_readable`) and rebuilds the model on :func:`loadable_device` of the saved
    ``device_``. The estimator keeps the model's constructor arguments in
    ``_fitted_model_config`` while fitted. :func:`load` accepts the objects of such classes,
    so this module needs no estimator class (which imports it).
    """

    def __getstate__(self):
        # A copy: object.__getstate__ returns the live __dict__, which must stay untouched.
        state = dict(super().__getstate__())
        if "model_" in state:
            state["_model_state"] = model_to_state(state.pop("model_"), state.pop("_fitted_model_config"))
            state["device_"] = str(state["device_"])
        state["_skfastflow_version"] = __version__
        state["_skfastflow_format"] = FORMAT_VERSION
        return state

    def __setstate__(self, state):
        check_readable(state)
        state = dict(state)
        del state["_skfastflow_version"], state["_skfastflow_format"]
        model_state = state.pop("_model_state", None)
        super().__setstate__(state)
        if model_state is not None:
            self.device_ = loadable_device(self.device_)
            self.model_ = model_from_state(model_state, self.device_)
            self._fitted_model_config = model_state["config"]


def model_to_state(model, config: dict) -> dict:
    """The picklable description of a fitted ``FastflowModel``.

    Parameters
    ----------
    model : FastflowModel
        The fitted torch model, on any device.
    config : dict
        Keyword arguments of :class:`~skfastflow.FastflowModel` that rebuild its
        architecture (``input_size``, ``backbone``, ``flow_steps``, ``conv3x3_only``,
        ``hidden_ratio``).

    Returns
    -------
    state : dict
        ``{"config", "arrays", "checksum", "format", "skfastflow", "torch", "timm"}``;
        ``arrays`` maps each ``state_dict`` key to a CPU numpy array that owns its memory;
        ``checksum`` lets :func:`model_from_state` detect damaged weights.
    """
    arrays = {}
    for name, tensor in model.state_dict().items():
        # .numpy() shares memory with a CPU tensor; copying keeps only the tensor's own
        # elements (not a larger storage it may view into) and detaches from the live model.
        arrays[name] = tensor.detach().cpu().numpy().copy()
    return {
        "checksum": _checksum(arrays),
        "format": FORMAT_VERSION,
        "skfastflow": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "config": dict(config),
        "arrays": arrays,
    }


def _checksum(arrays: dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``arrays``."""
    digest = hashlib.sha256()
    for name, array in arrays.items():
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _release(version: str) -> tuple[int, ...]:
    """``(major, minor)`` of a version string such as ``"0.1.0"`` or ``"0.2.0.dev1"``."""
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in version.split(".")[:2])


def check_readable(state: dict) -> None:
    """Raise :class:`ModelFileError` when a pickled detector cannot be read by this skfastflow.

    A file is read when it was written by the same ``major.minor`` release (before 1.0, a
    minor release may change what a fitted detector holds) in a format this release reads.

    Parameters
    ----------
    state : dict
        The unpickled ``__dict__`` of a detector, before it is restored.
    """
    saved_format = state.get("_skfastflow_format")
    saved_version = state.get("_skfastflow_version")
    if saved_format is None or saved_version is None:
        raise ModelFileError(
            f"This FastFlowDetector was pickled by skfastflow {saved_version or 'before 0.1'}, before model files "
            f"recorded a format; skfastflow {__version__} cannot read it. Refit the detector."
        )
    saved, installed = (_release(saved_version), saved_format), (_release(__version__), FORMAT_VERSION)
    if saved[0] == installed[0] and _OLDEST_READABLE_FORMAT <= saved_format <= FORMAT_VERSION:
        return
    if saved > installed:
        raise ModelFileError(
            f"This FastFlowDetector was saved by skfastflow {saved_version} (model-file format {saved_format}), "
            f"newer than the installed skfastflow {__version__} reads (format {FORMAT_VERSION}); "
            f"upgrade with `pip install skfastflow>={saved_version}`."
        )
    raise ModelFileError(
        f"This FastFlowDetector was saved by skfastflow {saved_version} (model-file format {saved_format}), which "
        f"skfastflow {__version__} no longer reads; load it with skfastflow=={saved_version}, or refit."
    )


def model_from_state(state: dict, device: torch.device):
    """Rebuild the fitted ``FastflowModel`` from :func:`model_to_state`'s output, offline.

    Parameters
    ----------
    state : dict
        Output of :func:`model_to_state`.
    device : torch.device
        Where the model should run.

    Returns
    -------
    model : FastflowModel
        In eval mode, on ``device``.
    """
    # pre_trained=False: the backbone's weights are in the file, nothing is downloaded.
    if _checksum(state["arrays"]) != state["checksum"]:
        # Damage inside the weights' bytes unpickles without complaint; only this reveals it.
        raise ModelFileError("the model's weights do not match their checksum: the file is corrupted. Save the detector again.")
    model = FastflowModel(pre_trained=False, **state["config"])
    tensors = {name: torch.from_numpy(array) for name, array in state["arrays"].items()}
    try:
        model.load_state_dict(tensors)
    except RuntimeError as error:
        raise ModelFileError(
            f"The saved {state['config']['backbone']!r} model does not fit the architecture that timm "
            f"{timm.__version__} builds (saved with timm {state['timm']}, torch {state['torch']}): {error}. "
            f"Install timm=={state['timm']} to load it, or refit."
        ) from error
    return model.to(device).eval()


def loadable_device(saved_device: str) -> torch.device:
    """The saved device if it exists on this machine, else the CPU.

    A detector fitted on ``cuda`` (or Apple ``mps``) then loads and runs on a CPU-only
    machine.
    """
    device = torch.device(saved_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return torch.device("cuda")
    if device.type == "mps" and not torch.backends.mps.is_available():
        return torch.device("cpu")
    return device


def save(detector, path) -> None:
    """Write ``detector`` to ``path`` atomically (temporary file, then rename).

    A crash or an interruption during the write leaves any previous file at ``path`` intact
    and no partial file behind.

    Parameters
    ----------
    detector : FastFlowDetector
        A fitted (or unfitted) detector.
    path : str or path-like
        Destination file; its folder must exist.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from skfastflow import FastFlowDetector
    >>> from skfastflow.persistence import save, load
    >>> X = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    >>> detector = FastFlowDetector("test_resnet", pre_trained=False, input_size=32,
    ...                             flow_steps=1, max_iter=1, random_state=0).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "detector.joblib")
    >>> save(detector, path)
    >>> bool(np.array_equal(load(path).score_samples(X), detector.score_samples(X)))
    True
    """
    write_atomically(path, lambda file: joblib.dump(detector, file), "save")


def write_atomically(path, write, verb: str = "write") -> None:
    """Call ``write(file)`` on a new binary file next to ``path``, then rename it to ``path``.

    The file is flushed to disk before the rename, so a crash or an interruption leaves
    either the previous file at ``path`` or the complete new one, never a partial file.

    Parameters
    ----------
    path : str or path-like
        Destination; its folder must exist.
    write : callable
        Writes the content to the binary file object it is given.
    verb : str, default="write"
        What the caller does, for the error message.

    Raises
    ------
    FileNotFoundError
        When the destination folder does not exist.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Cannot {verb} to {path!r}: folder {folder!r} does not exist; create it first.")
    # The temporary file sits next to the target so that os.replace is a same-filesystem rename.
    handle, temporary = tempfile.mkstemp(prefix=".", suffix=".partial", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes the file private (0600); give it the permissions open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def load(path):
    """Read a detector written by :func:`save` (or ``joblib.dump`` / ``pickle``).

    Parameters
    ----------
    path : str or path-like
        The model file. Load only files you trust: unpickling can run code.

    Returns
    -------
    detector : FastFlowDetector

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ModelFileError
        When the file is truncated, corrupted, not a FastFlowDetector, or written by an
        skfastflow whose format this one cannot read.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file {path!r} does not exist; check the path.")
    try:
        loaded = joblib.load(path)
    except ModelFileError as error:
        raise ModelFileError(f"Cannot load {path!r}: {error}") from error
    except Exception as error:
        # Truncation, bit rot or a foreign file surfaces as almost any exception type, from
        # pickle, struct, zlib, joblib or numpy; none of them says what is wrong with the file.
        raise ModelFileError(
            f"Cannot load {path!r}: it is truncated, corrupted or not a skfastflow model file "
            f"({type(error).__name__}: {error}). Save the detector again."
        ) from error
    if not isinstance(loaded, PicklableModel):
        raise ModelFileError(f"{path!r} holds a {type(loaded).__name__}, not a FastFlowDetector.")
    return loaded

