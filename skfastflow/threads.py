"""How many CPU threads torch computes with: by default, as many as other programs leave cores idle.

Why
---
Torch splits each operation of a CPU model across its intra-op threads (OpenMP) and waits
at the end of the operation for the slowest thread. When another program keeps one core
busy, the thread that shares that core gets only part of it, and every operation waits for
that thread. On 2 cores with a plain Python busy loop on one of them, torch's default of 2
threads scored EfficientNet-Lite0 at 0.35 times its quiet throughput, and beside another
busy torch process at about 0.1 times; with 1 thread it keeps the whole idle core.

So for the duration of a call (:func:`torch_threads`) torch runs with one thread per core
that the other programs leave idle (at least one, at most torch's own setting), and the
choice is checked again batch by batch (:func:`refresh`), so that it follows a neighbour
that starts or stops. Afterwards torch's setting is restored.

Measuring the idle cores
------------------------
From ``/proc/stat`` (Linux): the busy time of the CPUs this process may run on
(``os.sched_getaffinity``) over a time window, minus this process's own CPU time in the
same window (``time.process_time``, all its threads), is the other programs' share, in
cores. Nothing waits for a measurement: each window runs from the previous measurement
(or this module's import) to now, at least :data:`MIN_WINDOW` seconds; over a shorter
one the previous choice stands. After a pause between calls the window spans the pause,
which describes a steady neighbour (a camera driver, a GUI) as well as a short one would,
and a neighbour that started or stopped meanwhile is caught at the first batch that
follows. Only a process's very first call, when no window of :data:`MIN_WINDOW` has
passed since the import, sleeps :data:`PROBE_SECONDS` to measure one. A cgroup CPU quota
(containers) caps the cores. Work in other threads of this process counts as its own, so
a busy thread of the same program is not seen as a neighbour.

Where ``/proc/stat`` cannot be read (macOS, Windows), torch's setting is kept: the load
average, the portable alternative, counts this process's own threads and lags by a
minute, so on a quiet machine it would halve the threads.

Precedence
----------
1. An explicit count (``n_threads`` of :func:`torch_threads`; the detector's parameter).
2. An explicit torch setting, kept unchanged: ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``
   in the environment (whoever set it, a ``sitecustomize`` included), or a count set with
   ``torch.set_num_threads`` that differs from what torch had when this module was first
   imported. (Set before that import, it is taken as torch's default: the automatic choice
   then stays at or below it.)
3. Otherwise the automatic choice.

Calls nest: within a call, an inner call keeps the outer call's choice. Torch's thread
setting belongs to the calling thread, and so does the state here.

Why not OpenMP's wait policy
----------------------------
``OMP_WAIT_POLICY=passive`` (waiting threads sleep at once instead of spinning about
3 ms) cannot be applied from here: libgomp reads it once, when torch loads it, so it
must be in the environment before ``import torch``. It stops a waiting thread from
spinning on a core that a sibling needs, but each operation still waits for the thread on
the shared core; ``benchmarks/contention.py`` measures it beside the thread counts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from numbers import Integral

import torch

#: Shortest window (seconds) from which the idle cores are measured again; shorter gaps
#: between batches keep the previous choice. ``/proc/stat`` counts in 10 ms ticks per CPU.
MIN_WINDOW = 0.2
#: Length (seconds) of the one measurement that is waited for: a process's first call,
#: when less than :data:`MIN_WINDOW` has passed since the import.
PROBE_SECONDS = 0.1
#: A core counts as free when the others leave at least ``1 - SLACK`` of it idle: an
#: operation split across threads runs at the pace of its slowest thread, so a core half
#: taken by a neighbour is worth less than none; the slack absorbs measurement noise and
#: the system's background work on a quiet machine.
SLACK = 0.3

# Each automatic choice is logged at DEBUG level, e.g. for benchmarks/contention.py.
_log = logging.getLogger(__name__)
# Variables through which users fix torch's thread count before it starts.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Torch's count before any call here changed it: another value later is the user's choice.
_THREADS_AT_IMPORT = torch.get_num_threads()


@dataclass(frozen=True)
class CpuSample:
    """One reading of the clocks the idle cores are measured from.

    Attributes
    ----------
    wall : float
        ``time.monotonic()``, seconds.
    own_cpu : float
        CPU time of this process (all threads), seconds.
    busy : float
        Busy time (everything but idle and I/O wait) of the CPUs this process may run on,
        summed over them, seconds since boot.
    """

    wall: float
    own_cpu: float
    busy: float


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota.

    Returns
    -------
    int
        At least 1. A quota of 1.5 CPUs counts as 2: the cgroup throttles all threads
        together, so a thread more costs no waiting.
    """
    count = len(_allowed_cpus()) or os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(count, math.ceil(quota))) if quota is not None else count


def _allowed_cpus() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        return set()


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup quota allows (cgroup v2 ``cpu.max``, v1 ``cfs_quota_us``), or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as file:
            quota, period = file.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as quota_file, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as period_file:
            quota, period = int(quota_file.read()), int(period_file.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def read_cpu_sample(stat_path: str = "/proc/stat") -> CpuSample | None:
    """Read the clocks now; None where ``stat_path`` cannot be read or parsed.

    Parameters
    ----------
    stat_path : str, default="/proc/stat"
        The kernel's CPU time table (``cpuN user nice system idle iowait irq softirq
        steal ...``, in ``SC_CLK_TCK`` ticks).

    Returns
    -------
    CpuSample or None
    """
    wall, own_cpu = time.monotonic(), time.process_time()
    allowed = _allowed_cpus()
    try:
        with open(stat_path) as file:
            lines = file.readlines()
        ticks_per_second = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    busy_ticks, seen = 0, 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()) or (allowed and int(name[3:]) not in allowed):
            continue
        try:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in fields[:8])
        except ValueError:
            return None
        # guest time is already inside user; steal (taken by the hypervisor) is not ours to use.
        busy_ticks += user + nice + system + irq + softirq + steal
        seen += 1
    if not seen:
        return None
    return CpuSample(wall, own_cpu, busy_ticks / ticks_per_second)


def cores_busy_elsewhere(start: CpuSample, end: CpuSample) -> float:
    """Cores' worth of work that other programs did between two samples.

    Parameters
    ----------
    start, end : CpuSample
        Readings of :func:`read_cpu_sample`, ``end`` later.

    Returns
    -------
    float
        ``(busy time - this process's CPU time) / elapsed time``, at least 0.
    """
    elapsed = end.wall - start.wall
    if elapsed <= 0:
        return 0.0
    return max(0.0, ((end.busy - start.busy) - (end.own_cpu - start.own_cpu)) / elapsed)


def threads_for(busy_elsewhere: float, cpus: int, limit: int) -> int:
    """Threads for torch given the other programs' load: one per core they leave idle.

    Parameters
    ----------
    busy_elsewhere : float
        Cores' worth of work of other programs (:func:`cores_busy_elsewhere`).
    cpus : int
        CPUs this process may use (:func:`usable_cpus`).
    limit : int
        At most this many (torch's own setting).

    Returns
    -------
    int
        ``floor(cpus - busy_elsewhere + SLACK)`` within ``[1, limit]``.
    """
    return max(1, min(limit, math.floor(cpus - busy_elsewhere + SLACK)))


class _Meter:
    """The process-wide measuring window: where it starts, and the last measured load."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.start = read_cpu_sample()
        self.busy_elsewhere: float | None = None

    def measure(self, *, call_start: bool) -> float | None:
        """Cores busy elsewhere since the window's start; None when unknown or not yet due.

        Over a window shorter than ``MIN_WINDOW``: at a call's start (``call_start``), the
        last value, or when there is none yet a fresh window of ``PROBE_SECONDS``; between
        batches, None (keep the current choice).
        """
        with self.lock:
            now = read_cpu_sample()
            if now is None or self.start is None:
                return None
            if now.wall - self.start.wall < MIN_WINDOW:
                if not call_start:
                    return None
                if self.busy_elsewhere is not None:
                    return self.busy_elsewhere
                time.sleep(PROBE_SECONDS)
                self.start, now = now, read_cpu_sample()
                if now is None:
                    return None
            self.busy_elsewhere = cores_busy_elsewhere(self.start, now)
            self.start = now
            return self.busy_elsewhere


_meter = _Meter()


def _new_meter_after_fork() -> None:
    # A forked child starts its own CPU clock at zero (its window would read as a huge load)
    # and may inherit the lock held by another thread.
    global _meter
    _meter = _Meter()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_meter_after_fork)
# Per calling thread: nesting depth, the automatic choice's upper limit (None when the count
# is fixed) and the usable CPUs, both read when the outermost block starts.
_state = threading.local()


def _user_fixed_threads(current: int) -> bool:
    """Whether the user fixed torch's thread count: environment variable, or ``torch.set_num_threads``."""
    return any(os.environ.get(name, "").strip() for name in _THREAD_VARIABLES) or current != _THREADS_AT_IMPORT


def automatic_threads(limit: int | None = None) -> int:
    """The thread count the automatic choice gives now.

    Parameters
    ----------
    limit : int, default=None
        Upper bound; None means torch's current setting.

    Returns
    -------
    int
        One thread per usable core that other programs leave idle, in ``[1, limit]``;
        ``limit`` itself where the load cannot be measured (no ``/proc/stat``).
    """
    limit = torch.get_num_threads() if limit is None else limit
    return _choose(_meter.measure(call_start=True), usable_cpus(), limit)


@contextlib.contextmanager
def torch_threads(n_threads: int | None = None):
    """Run the enclosed torch work with ``n_threads`` threads, or the automatic choice; restore torch's setting after.

    Parameters
    ----------
    n_threads : int or None, default=None
        A fixed count, or None for the module's precedence: an explicit user setting of
        torch's threads is kept; otherwise :func:`automatic_threads`, checked again at
        every :func:`refresh`.

    Yields
    ------
    None

    Notes
    -----
    Torch's setting is restored on exit, exceptions and ``KeyboardInterrupt`` included.
    Inside another ``torch_threads`` block of the same thread, this one changes nothing.
    """
    if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, Integral) or n_threads < 1):
        raise ValueError(f"n_threads={n_threads!r} is not a thread count; use None (automatic) or a positive whole number.")
    if getattr(_state, "depth", 0):
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    previous = torch.get_num_threads()
    limit = None
    if n_threads is not None:
        chosen = n_threads
    elif _user_fixed_threads(previous):
        chosen = previous
    else:
        limit = previous
        chosen = automatic_threads(limit)
    _state.depth, _state.limit, _state.cpus = 1, limit, usable_cpus()
    try:
        _set_threads(chosen)
        yield
    finally:
        _state.depth, _state.limit = 0, None
        _set_threads(previous)


def refresh() -> None:
    """Inside an automatic :func:`torch_threads` block, follow the idle cores again; elsewhere, nothing.

    Cheap (one read of ``/proc/stat`` at most): call it between batches.
    """
    limit = getattr(_state, "limit", None)
    if limit is None:
        return
    busy_elsewhere = _meter.measure(call_start=False)
    if busy_elsewhere is not None:
        _set_threads(_choose(busy_elsewhere, _state.cpus, limit))


def _choose(busy_elsewhere: float | None, cpus: int, limit: int) -> int:
    """:func:`threads_for`, or ``limit`` when the load is unknown; logged."""
    count = limit if busy_elsewhere is None else threads_for(busy_elsewhere, cpus, limit)
    _log.debug("automatic choice: %d threads (%s cores busy elsewhere, %d usable, at most %d)", count,
               "unknown" if busy_elsewhere is None else f"{busy_elsewhere:.2f}", cpus, limit)  # fmt: skip
    return count


def _set_threads(count: int) -> None:
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
