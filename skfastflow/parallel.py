"""Scale out on a dask cluster: model selection, one model per product type, batch scoring.

scikit-learn scales through joblib, and ``dask.distributed`` is a joblib backend: with a
client connected, ``GridSearchCV`` and ``cross_val_score`` run their fits on the cluster
inside ``joblib.parallel_config(backend="dask")``. This module adds what a cluster of
torch workers needs around that, and the two jobs joblib does not cover:

- :func:`connect`: a client for a scheduler address, or for a local cluster of worker
  processes (``"local:N"``), with :class:`TorchThreads` registered on every worker;
- :class:`TorchThreads`: one torch thread per task a worker runs, so that a worker uses
  as many cores as it has threads;
- :func:`fit_each`: one detector per training set (product type), fitted in parallel.

Needs the ``dask`` extra: ``pip install "skfastflow[dask]"``. ``docs/scaling.md`` says how
to point this at a real cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    """A worker plugin that gives torch one thread per task a dask worker runs at once.

    A dask worker with ``nthreads`` threads runs up to ``nthreads`` tasks at once and is
    meant to use ``nthreads`` cores (``LocalCluster`` and ``dask worker`` split a machine's
    cores that way). Torch's own default is one thread per core of the *machine* in every
    task, which puts ``nthreads x cores`` busy threads on a worker's ``nthreads`` cores and
    slows every task down. With this plugin each task's torch uses ``threads_per_task``
    threads, so a worker's torch uses its ``nthreads`` threads in all (with the default 1).

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

        torch.set_num_threads(self.threads_per_task)


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
        if not count.isdigit() or int(count) < 1:
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
        If ``scheduler`` is malformed, or no scheduler answers at the address within
        :data:`CONNECT_TIMEOUT` seconds.

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
        ``{name: X}``, ``X`` as for :meth:`FastFlowDetector.fit`. Prefer lists of file
        paths: the workers read the images, which must be visible to them at those paths,
        whereas arrays travel through the scheduler.
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
