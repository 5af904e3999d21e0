"""Scale out on a dask cluster: model selection, one model per product type, batch scoring.

scikit-learn scales through joblib, and ``dask.distributed`` is a joblib backend: with a
client connected, ``GridSearchCV`` and ``cross_val_score`` run their fits on the cluster
inside ``joblib.parallel_config(backend="dask")``. This module adds what a cluster of
torch workers needs around that, and the two jobs joblib does not cover:

- :func:`connect`: a client for a scheduler address, or for a local cluster of worker
  processes (``"local:N"``), with :class:`TorchThreads` registered on every worker;
- :class:`TorchThreads`: one torch thread per task a worker runs, so that a worker uses
  as many cores as it has threads;
- :func:`fit_each`: one detector per training set (product type), fitted in parallel;
- :func:`score_files_on_cluster`: score a large list of image files on the workers, the
  results streamed back in input order.

Needs the ``dask`` extra: ``pip install "skfastflow[dask]"``. ``docs/scaling.md`` says how
to point this at a real cluster.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from numbers import Integral
from typing import Any, NamedTuple

try:
    import dask
    from distributed import Client, LocalCluster, WorkerPlugin, as_completed
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        f"skfastflow.parallel needs dask.distributed ({error}); install it with: pip install 'skfastflow[dask]'"
    ) from error

# Seconds to wait for a scheduler before saying it cannot be reached.
CONNECT_TIMEOUT = 20
_LOCAL_PREFIX = "local"
# Variables a dask nanny writes into the environment of the process that starts a local
# cluster (dask's distributed.nanny.pre-spawn-environ), restored when the cluster closes.
_NANNY_VARIABLES = (
    "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONHASHSEED", "__DASK_PARENT_PID",
)


class TorchThreads(WorkerPlugin):
    """A worker plugin that gives torch one thread per task a dask worker runs at once, and its speed.

    A dask worker with ``nthreads`` threads runs up to ``nthreads`` tasks at once and is
    meant to use ``nthreads`` cores (``LocalCluster`` and ``dask worker`` split a machine's
    cores that way). Torch's own default is one thread per core of the *machine* in every
    task, which puts ``nthreads x cores`` busy threads on a worker's ``nthreads`` cores and
    slows every task down. With this plugin each task's torch uses ``threads_per_task``
    threads, so a worker's torch uses its ``nthreads`` threads in all (with the default 1).
    It also lets ``malloc`` reuse freed tensor memory again
    (:func:`skfastflow.heap.raise_mmap_threshold`): dask's nanny starts workers with a
    setting that otherwise halves torch's speed in them.

    Parameters
    ----------
    threads_per_task : int, default=1
        Torch's intra-op threads in each worker process (``torch.set_num_threads``). Raise
        it only for workers started with fewer threads than cores, e.g. ``dask worker
        --nthreads 1`` on a machine whose cores should all serve one task at a time.

    Notes
    -----
    :func:`connect` registers it. On a client of your own::

        client.register_plugin(TorchThreads())

    It applies to the workers running now and to those that join later.
    """

    name = "skfastflow-torch-threads"

    def __init__(self, threads_per_task: int = 1):
        if int(threads_per_task) != threads_per_task or threads_per_task < 1:
            raise ValueError(f"threads_per_task={threads_per_task!r} must be a positive whole number.")
        self.threads_per_task = int(threads_per_task)

    def setup(self, worker) -> None:
        import torch

        from .heap import raise_mmap_threshold

        torch.set_num_threads(self.threads_per_task)
        # dask's MALLOC_TRIM_THRESHOLD_ froze malloc's mmap threshold: tensors would be
        # page-faulted afresh at every use, at half the speed.
        raise_mmap_threshold()


def parse_scheduler(scheduler: str) -> int | str:
    """The number of local workers of ``"local:N"`` (``"local"``: one per usable core), else the address.

    Parameters
    ----------
    scheduler : str
        ``"local:N"``, ``"local"``, or a dask scheduler address such as
        ``"tcp://10.0.0.5:8786"``.

    Returns
    -------
    workers_or_address : int or str
        An int for a local cluster, else ``scheduler`` unchanged.

    Raises
    ------
    ValueError
        If ``scheduler`` is empty or ``N`` is not a positive whole number.
    """
    text = scheduler.strip()
    if not text:
        raise ValueError("the scheduler is empty; pass a dask scheduler address (tcp://HOST:8786) or local:N.")
    if text == _LOCAL_PREFIX:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if text.startswith(_LOCAL_PREFIX + ":"):
        count = text[len(_LOCAL_PREFIX) + 1 :]
        if not (count.isascii() and count.isdigit()) or int(count) < 1:
            raise ValueError(f"{scheduler!r}: local:N needs a positive number of worker processes N, e.g. local:2.")
        return int(count)
    return text


@contextlib.contextmanager
def connect(scheduler: str, *, threads_per_task: int = 1) -> Iterator[Client]:
    """A dask client for ``scheduler``, with :class:`TorchThreads` on every worker; closed on exit.

    Parameters
    ----------
    scheduler : str
        A running scheduler's address (``"tcp://HOST:8786"``, what ``dask scheduler``
        prints), or ``"local:N"`` for a cluster of ``N`` worker processes of one thread each
        on this machine, started here and stopped on exit (``"local"``: one per core).
    threads_per_task : int, default=1
        Torch threads per task, see :class:`TorchThreads`.

    Yields
    ------
    client : distributed.Client
        Also dask's default client while the block runs, so that
        ``joblib.parallel_config(backend="dask")`` uses it.

    Raises
    ------
    ValueError
        If ``scheduler`` is malformed, or no scheduler answers at the address (or it has no
        worker) within :data:`CONNECT_TIMEOUT` seconds.
    RuntimeError
        If the worker processes of ``"local:N"`` do not start.

    Notes
    -----
    Local workers start with the ``spawn`` method whatever dask's configuration says: a
    fresh interpreter each, never a fork of this process, whose torch thread pool may
    already be running (a forked child inherits the pool's locks, not its threads, and can
    hang in its first parallel operation). Each worker imports torch itself, a few seconds.

    Examples
    --------
    Model selection on a cluster (``X`` images, ``y`` labels)::

        import joblib
        from sklearn.model_selection import GridSearchCV

        with connect("local:2"), joblib.parallel_config(backend="dask"):
            search = GridSearchCV(FastFlowDetector(), {"flow_steps": [4, 8]}, n_jobs=-1).fit(X, y)
    """
    target = parse_scheduler(scheduler)
    with contextlib.ExitStack() as stack:
        if isinstance(target, int):
            saved = {name: os.environ.get(name) for name in _NANNY_VARIABLES}
            stack.callback(_restore_environment, saved)
            try:
                with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
                    cluster = stack.enter_context(
                        LocalCluster(
                            n_workers=target,
                            threads_per_worker=1,
                            processes=True,
                            host="127.0.0.1",
                            dashboard_address=None,
                            # Errors only: a worker that takes over 4 s to exit (torch's teardown on a
                            # busy machine) is killed at close with a warning that worries for nothing.
                            silence_logs=logging.ERROR,
                        )
                    )
            except RuntimeError as error:
                raise RuntimeError(
                    f"the local dask workers of {scheduler!r} did not start ({error!r}). In a script, start the cluster "
                    "under `if __name__ == \"__main__\":`: each worker is a new Python process that runs the script's "
                    "top level again."
                ) from error
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(target, timeout=CONNECT_TIMEOUT))
            except (OSError, TimeoutError) as error:
                raise ValueError(
                    f"no dask scheduler answers at {target!r} ({error}). Start one with `dask scheduler` and workers "
                    f"with `dask worker {target}`, check the address and the firewall, or use local:N for worker "
                    "processes on this machine."
                ) from error
            try:
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
            except TimeoutError:
                raise ValueError(
                    f"the dask scheduler at {target!r} has no workers; start some with `dask worker {target}`."
                ) from None
        client.register_plugin(TorchThreads(threads_per_task))
        yield client


def _restore_environment(saved: dict) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# ---------------------------------------------------------------------------- many product types


class FitResult(NamedTuple):
    """What :func:`fit_each` gives for one training set."""

    #: The training set's name, a key of ``training_sets``.
    name: str
    #: The fitted clone; None when its fit failed.
    detector: Any
    #: Why the fit failed (raised on the worker, e.g. a ``ValueError`` naming an unreadable
    #: image); None when it succeeded.
    error: BaseException | None


def fit_each(detector, training_sets: Mapping[str, Any], client: Client) -> Iterator[FitResult]:
    """Fit a clone of ``detector`` on each training set, in parallel on the cluster's workers.

    One detector per product type (MVTec AD category, camera, part number): every set
    is fitted as ``clone(detector).fit(X)`` in a task of its own, a worker thread each.

    Parameters
    ----------
    detector : FastFlowDetector
        The configuration to fit (it is cloned; it is not changed). Fix ``random_state``
        for models that do not depend on which worker fitted them.
    training_sets : mapping of str to images
        ``{name: X}``, ``X`` as for :meth:`FastFlowDetector.fit`. Prefer lists of
        absolute file paths: the workers read the images, which must be visible to them at
        those paths (relative ones would start from a worker's working directory), whereas
        arrays travel through the scheduler.
    client : distributed.Client
        For example from :func:`connect`.

    Yields
    ------
    result : FitResult
        One per training set, as the fits finish (not in the order given), holding the
        fitted detector or the error its fit raised: a failed set never stops the others.
        Save each detector as it comes (:func:`skfastflow.persistence.save`) so that the
        caller holds one model at a time.

    Examples
    --------
    One model file per category folder of MVTec AD::

        from skfastflow.datasets import load_mvtec
        from skfastflow.persistence import save

        sets = {name: load_mvtec(f"mvtec/{name}", lazy=True).X_train for name in ["bottle", "cable"]}
        with connect("tcp://scheduler:8786") as client:
            for result in fit_each(FastFlowDetector(random_state=0), sets, client):
                if result.error is None:
                    save(result.detector, f"models/{result.name}.joblib")
    """
    from sklearn.base import clone

    futures = {client.submit(_fit, clone(detector), X, pure=False): name for name, X in training_sets.items()}
    try:
        for future in as_completed(futures):
            name = futures.pop(future)
            try:
                result = FitResult(name, future.result(), None)
            except Exception as error:  # noqa: BLE001 - a failure of one set is reported, the others go on
                result = FitResult(name, None, error)
            future.release()  # the fitted model leaves the worker's memory
            yield result
    finally:
        # The caller stopped early (an error, Ctrl-C): the fits it will not read are dropped.
        client.cancel(list(futures))


def _fit(detector, X):
    """The task of :func:`fit_each`: a worker fits its own copy."""
    return detector.fit(X)


# ---------------------------------------------------------------------------- batch scoring


def score_files_on_cluster(
    detector,
    paths: Iterable,
    client: Client,
    *,
    batches_per_task: int = 1,
    max_in_flight: int | None = None,
    return_maps: bool = False,
) -> Iterator:
    """Score image files on the cluster's workers: one result per file, in input order.

    The cluster's form of :func:`skfastflow.batch_scoring.score_files`, with the same
    results: the paths are cut into chunks of ``batches_per_task`` batches of the
    detector's ``batch_size``, each chunk is one task that runs ``score_files`` on a worker
    (which reads the files itself), and the results come back chunk by chunk, in the order
    of ``paths``, as soon as the chunks before them are done. The batches are those
    ``score_files`` forms on one machine, so that even the maps' last bits agree. A file that
    cannot be read or scored gets a result with its ``error``, as on one machine; the others
    are scored.

    The detector is sent to each worker once (``client.scatter(..., broadcast=True)``),
    not with every task. At most ``max_in_flight`` chunks are submitted and not yet read,
    so a worker holds a bounded number of chunks (while scoring, one batch of images at a
    time), and ``paths`` may be any iterable, read as the chunks are submitted.

    Parameters
    ----------
    detector : FastFlowDetector or str or path-like
        A fitted detector, or a model file (read here with
        :func:`skfastflow.persistence.load`; the workers need not see it).
    paths : iterable of str or path-like
        Image files, at paths the workers can read (a shared file system). Relative paths
        are taken from this process's working directory, as on one machine.
    client : distributed.Client
        For example from :func:`connect`.
    batches_per_task : int, default=1
        Batches of ``detector.batch_size`` files per task; more make fewer, longer tasks.
    max_in_flight : int, optional
        Chunks submitted and not yet read; default twice the cluster's worker threads at
        the start, so that each thread has its next chunk waiting.
    return_maps : bool, default=False
        Also return each image's anomaly map (``predict_maps``, the image's displayed size).
        Maps travel back to this process: they cost far more than scores.

    Yields
    ------
    result : skfastflow.batch_scoring.FileScore
        One per path, in the order of ``paths``; exactly what ``score_files`` gives on one
        machine with the same torch thread count (the workers use one thread per task).

    Warns
    -----
    ImageWarning
        Warnings the workers raise about images (read or scored) are raised again here,
        naming the file, before their chunk's results.

    Raises
    ------
    ValueError
        If ``batches_per_task`` or ``max_in_flight`` is not a positive integer, or the
        model file cannot be loaded.

    Examples
    --------
    A folder of images scored on two local worker processes, written to a CSV file::

        import csv
        from skfastflow.files import list_images
        from skfastflow.parallel import connect, score_files_on_cluster

        with connect("local:2") as client, open("verdicts.csv", "w", newline="") as out:
            writer = csv.writer(out)
            for result in score_files_on_cluster("model.joblib", list_images("parts/"), client):
                writer.writerow([result.path, result.decision, result.verdict, result.error or ""])
    """
    if isinstance(detector, (str, os.PathLike)):
        from .persistence import load

        detector = load(detector)
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"paths is a single path; pass a list of paths, e.g. [{os.fspath(paths)!r}].")
    chunk_size = _positive("batches_per_task", batches_per_task) * detector.batch_size
    if max_in_flight is None:
        max_in_flight = 2 * max(1, sum(client.nthreads().values()))
    max_in_flight = _positive("max_in_flight", max_in_flight)
    shared = client.scatter(detector, broadcast=True, hash=False)
    try:

        def submit(chunk):
            return client.submit(_score_chunk, shared, chunk, os.getcwd(), return_maps, pure=False)

        for results, caught in _in_order(submit, _chunks(paths, chunk_size), max_in_flight):
            # Before the results, as score_files warns about a batch before yielding it.
            for warning in caught:
                warnings.warn(warning, stacklevel=2)
            yield from results
    finally:
        client.cancel([shared])


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _chunks(paths: Iterable, size: int) -> Iterator[list[str]]:
    """Consecutive lists of ``size`` paths (the last one shorter), read lazily."""
    iterator = iter(paths)
    while chunk := [os.fspath(path) for path in itertools.islice(iterator, size)]:
        yield chunk


def _in_order(submit: Callable[[Any], Any], items: Iterable, max_in_flight: int) -> Iterator:
    """``submit(item).result()`` for each item, in order, with at most ``max_in_flight`` futures unread.

    Parameters
    ----------
    submit : callable
        Starts the work of one item; returns a future (``result()`` waits for its value).
    items : iterable
        Read one at a time, as futures are submitted.
    max_in_flight : int
        Futures submitted whose result has not been read yet: the next item is submitted
        only once the oldest future has been read.

    Yields
    ------
    value
        Each future's result, in the order of ``items``. When the caller stops early (or a
        future fails), the futures still pending are cancelled.
    """
    pending = deque()
    try:
        for item in items:
            pending.append(submit(item))
            if len(pending) == max_in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def _score_chunk(detector, paths: list[str], client_directory: str, return_maps: bool):
    """The task of :func:`score_files_on_cluster`: results of one chunk, and the warnings they raised.

    Relative paths are the client's: they are read below its working directory (a worker's
    own is anywhere), and reported as given.
    """
    from .batch_scoring import score_files

    readable = [os.path.join(client_directory, path) for path in paths]
    # catch_warnings changes process-wide state: exact with one thread per worker (connect's
    # local clusters); with several, a chunk may carry a warning of a neighbouring chunk.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scored = score_files(detector, readable, return_maps=return_maps)
        results = [result._replace(path=path) for path, result in zip(paths, scored)]
    return results, [record.message for record in caught]
