"""Torch's thread count: measured idle cores, the choice made from them, precedence and restoration.

The idle-core probe is faked (a fake ``/proc/stat``, fake samples, a fake meter), so that each
test knows the right answer; nothing here measures time.
"""

import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import skfastflow.detector as detector_module
from skfastflow import FastFlowDetector, threads
from skfastflow.datasets import make_defect_images
from skfastflow.threads import CpuSample

TINY = dict(backbone="test_resnet", pre_trained=False, input_size=32, max_iter=2, batch_size=4, flow_steps=1, calibration_cv=None, random_state=0)


@pytest.fixture(autouse=True)
def torch_default_of_two(monkeypatch):
    """A process as a user who set nothing has it on 2 cores: torch at its default of 2 threads, no variable."""
    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "_THREADS_AT_IMPORT", 2)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    yield
    torch.set_num_threads(before)


def fake_load(monkeypatch, *values):
    """The meter reports these loads of other programs (cores), one per measurement; returns the calls made."""
    calls = []
    loads = iter(values)

    def measure(*, call_start):
        calls.append(call_start)
        return next(loads)

    monkeypatch.setattr(threads._meter, "measure", measure)
    return calls


# ---------------------------------------------------------------------------- measuring


def test_proc_stat_busy_time_counts_the_allowed_cpus_without_idle_and_iowait(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  999 999 999 999 999 999 999 999 0 0\n"  # the total line is not a CPU
        "cpu0 100 10 50 1000 40 1 2 3 7 0\n"  # user nice system idle iowait irq softirq steal guest guest_nice
        "cpu1 200 0 100 500 60 0 0 0 0 0\n"
        "cpu2 5000 0 0 0 0 0 0 0 0 0\n"  # not in the affinity mask
        "intr 12345 0 0\n"
    )
    monkeypatch.setattr(threads, "_allowed_cpus", lambda: {0, 1})
    sample = threads.read_cpu_sample(str(stat))
    ticks = os.sysconf("SC_CLK_TCK")
    assert sample.busy == pytest.approx((100 + 10 + 50 + 1 + 2 + 3 + 200 + 100) / ticks)


def test_unreadable_proc_stat_means_unknown(tmp_path):
    assert threads.read_cpu_sample(str(tmp_path / "missing")) is None
    garbage = tmp_path / "stat"
    garbage.write_text("cpu0 a b c d e f g h\n")
    assert threads.read_cpu_sample(str(garbage)) is None


def test_others_load_is_busy_time_less_own_cpu_time_per_second():
    start = CpuSample(wall=10.0, own_cpu=5.0, busy=100.0)
    # In 2 s the CPUs were busy 3.5 s, of which this process 1.5 s: the others kept one core busy.
    assert threads.cores_busy_elsewhere(start, CpuSample(12.0, 6.5, 103.5)) == pytest.approx(1.0)
    # Tick-rounded busy time can fall below the precise own time: no negative load.
    assert threads.cores_busy_elsewhere(start, CpuSample(12.0, 7.0, 101.9)) == 0.0


@pytest.mark.parametrize(
    "busy_elsewhere, cpus, limit, expected",
    [
        (0.05, 2, 2, 2),  # a quiet machine: all of torch's threads
        (0.25, 2, 2, 2),  # background noise within the slack
        (1.0, 2, 2, 1),  # a busy loop on one core
        (0.5, 2, 2, 1),  # a core half taken is not free: a thread there would stall the others
        (2.0, 2, 2, 1),  # at least one thread
        (0.0, 8, 4, 4),  # never more than torch's setting
        (2.0, 8, 8, 6),
    ],
)
def test_one_thread_per_idle_core(busy_elsewhere, cpus, limit, expected):
    assert threads.threads_for(busy_elsewhere, cpus, limit) == expected


@given(st.floats(0, 64), st.floats(0, 64), st.integers(1, 64), st.integers(1, 64))
def test_more_load_elsewhere_never_means_more_threads(load, more, cpus, limit):
    assert threads.threads_for(load + more, cpus, limit) <= threads.threads_for(load, cpus, limit)


class FakeClock:
    """Samples in sequence, and a sleep that records its length."""

    def __init__(self, monkeypatch, samples):
        self.samples, self.slept = iter(samples), []
        monkeypatch.setattr(threads, "read_cpu_sample", lambda: next(self.samples))
        monkeypatch.setattr(threads.time, "sleep", self.slept.append)


def test_meter_measures_the_window_since_its_last_reading(monkeypatch):
    clock = FakeClock(monkeypatch, [CpuSample(0.0, 0.0, 0.0), CpuSample(1.0, 1.0, 2.0), CpuSample(3.0, 3.0, 4.0)])
    meter = threads._Meter()
    assert meter.measure(call_start=True) == pytest.approx(1.0)  # 2 s busy, 1 s of it ours, in 1 s
    assert meter.measure(call_start=False) == pytest.approx(0.0)  # the next window starts where that one ended
    assert clock.slept == []


def test_meter_measures_a_long_pause_without_waiting(monkeypatch):
    # An hour since the last call, a neighbour on one core all along: no probe is needed.
    clock = FakeClock(monkeypatch, [CpuSample(0.0, 0.0, 0.0), CpuSample(3600.0, 0.5, 3600.5)])
    assert threads._Meter().measure(call_start=True) == pytest.approx(1.0)
    assert clock.slept == []


def test_meter_keeps_the_last_value_over_a_short_window(monkeypatch):
    short = threads.MIN_WINDOW / 2
    clock = FakeClock(
        monkeypatch,
        [
            CpuSample(0.0, 0.0, 0.0),
            CpuSample(1.0, 0.0, 1.0),  # one core busy elsewhere
            CpuSample(1.0 + short, 0.0, 1.0),  # too short to read (between batches): keep the choice
            CpuSample(1.0 + 2 * short, 0.0, 1.0),  # too short, at a call's start: the last value
        ],
    )
    meter = threads._Meter()
    assert meter.measure(call_start=True) == pytest.approx(1.0)
    assert meter.measure(call_start=False) is None
    assert meter.measure(call_start=True) == pytest.approx(1.0)
    assert clock.slept == []


def test_meter_probes_when_its_first_window_is_too_short(monkeypatch):
    clock = FakeClock(
        monkeypatch,
        [CpuSample(0.0, 0.0, 0.0), CpuSample(0.01, 0.0, 0.0), CpuSample(0.01 + threads.PROBE_SECONDS, 0.0, 0.0)],
    )
    assert threads._Meter().measure(call_start=True) == pytest.approx(0.0)
    assert clock.slept == [threads.PROBE_SECONDS]


def test_without_proc_stat_torch_keeps_its_setting(monkeypatch):
    monkeypatch.setattr(threads, "read_cpu_sample", lambda: None)
    monkeypatch.setattr(threads, "_meter", threads._Meter())
    with threads.torch_threads():
        assert torch.get_num_threads() == 2


def test_cgroup_quota_caps_the_usable_cpus(monkeypatch):
    monkeypatch.undo()  # the real usable_cpus
    monkeypatch.setattr(threads, "_allowed_cpus", lambda: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: 1.5)
    assert threads.usable_cpus() == 2
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: None)
    assert threads.usable_cpus() == 8


# ---------------------------------------------------------------------------- choosing and restoring


@pytest.mark.parametrize("busy_elsewhere, inside", [(0.0, 2), (1.0, 1), (None, 2)])
def test_automatic_count_inside_and_torch_setting_restored_after(monkeypatch, busy_elsewhere, inside):
    fake_load(monkeypatch, busy_elsewhere)
    with threads.torch_threads():
        assert torch.get_num_threads() == inside
    assert torch.get_num_threads() == 2


def test_setting_restored_after_an_exception(monkeypatch):
    fake_load(monkeypatch, 1.0)
    with pytest.raises(KeyError), threads.torch_threads():
        assert torch.get_num_threads() == 1
        raise KeyError("boom")
    assert torch.get_num_threads() == 2


def test_refresh_follows_a_neighbour_that_starts_and_stops(monkeypatch):
    calls = fake_load(monkeypatch, 0.0, 1.0, None, 0.1)
    seen = []
    with threads.torch_threads():
        seen.append(torch.get_num_threads())
        for _ in range(3):
            threads.refresh()
            seen.append(torch.get_num_threads())
    assert seen == [2, 1, 1, 2]  # None: a window too short to read keeps the choice
    assert calls == [True, False, False, False]  # only a call's start may probe (sleep)
    assert torch.get_num_threads() == 2


def test_each_automatic_choice_is_logged_with_its_reason(monkeypatch, caplog):
    fake_load(monkeypatch, 0.0, 1.25)
    with caplog.at_level("DEBUG", logger="skfastflow.threads"), threads.torch_threads():
        threads.refresh()
    assert [record.getMessage() for record in caplog.records] == [
        "automatic choice: 2 threads (0.00 cores busy elsewhere, 2 usable, at most 2)",
        "automatic choice: 1 threads (1.25 cores busy elsewhere, 2 usable, at most 2)",
    ]


def test_refresh_outside_an_automatic_block_does_nothing(monkeypatch):
    calls = fake_load(monkeypatch)
    threads.refresh()
    with threads.torch_threads(1):
        threads.refresh()
        assert torch.get_num_threads() == 1
    assert calls == [] and torch.get_num_threads() == 2


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_a_thread_variable_in_the_environment_is_kept(monkeypatch, variable):
    # However it got there: a sitecustomize's setdefault counts as the user's own choice.
    calls = fake_load(monkeypatch, 1.0)
    monkeypatch.setenv(variable, "2")
    with threads.torch_threads():
        assert torch.get_num_threads() == 2
    assert calls == []


def test_torch_set_num_threads_by_the_user_is_kept(monkeypatch):
    calls = fake_load(monkeypatch, 3.0)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    torch.set_num_threads(3)  # not torch's default (2): the user's choice, even on a busy machine
    with threads.torch_threads():
        assert torch.get_num_threads() == 3
    assert calls == [] and torch.get_num_threads() == 3


def test_an_explicit_count_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with threads.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_an_inner_block_keeps_the_outer_choice(monkeypatch):
    fake_load(monkeypatch, 1.0)
    with threads.torch_threads():
        with threads.torch_threads(2):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1  # the inner block's exit restores nothing
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_count_is_refused_with_the_remedy(bad):
    with pytest.raises(ValueError, match="None .automatic. or a positive whole number"), threads.torch_threads(bad):
        pass
    assert torch.get_num_threads() == 2


# ---------------------------------------------------------------------------- the detector


@pytest.fixture(scope="module")
def images():
    return make_defect_images(6, image_size=32, defect_fraction=0.0, random_state=0).images


def threads_while(monkeypatch, function_name):
    """Record torch's thread count each time ``skfastflow.detector.<function_name>`` runs."""
    seen = []
    original = getattr(detector_module, function_name)

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(detector_module, function_name, recording)
    return seen


def test_fit_and_scoring_run_with_n_threads_and_restore_torch_setting(monkeypatch, images):
    seen = threads_while(monkeypatch, "_n_dimensions")  # called in every training epoch
    detector = FastFlowDetector(n_threads=1, **TINY).fit(images)
    assert len(seen) >= 2 and set(seen) == {1} and torch.get_num_threads() == 2
    seen = threads_while(monkeypatch, "resize_maps")  # called once per scored batch
    detector.predict_maps(images)
    assert seen == [1, 1] and torch.get_num_threads() == 2


def test_detector_follows_a_neighbour_that_starts_during_a_call_by_default(monkeypatch, images):
    detector = FastFlowDetector(**{**TINY, "n_threads": 1}).fit(images).set_params(n_threads=None)
    # Quiet when the call starts; a neighbour holds a core from the first batch on.
    fake_load(monkeypatch, 0.0, *[1.0] * 10)
    seen = threads_while(monkeypatch, "resize_maps")
    maps = detector.predict_maps(images)
    assert seen == [1, 1] and torch.get_num_threads() == 2
    # The same during fit: each epoch's held-out scoring runs after the training steps' checks.
    fake_load(monkeypatch, 0.0, *[1.0] * 100)
    seen = threads_while(monkeypatch, "_n_dimensions")
    FastFlowDetector(**TINY).fit(images)
    assert len(seen) >= 2 and set(seen) == {1} and torch.get_num_threads() == 2
    # One thread chosen automatically scores as one thread fixed, to the bit.
    assert np.array_equal(maps, detector.set_params(n_threads=1).predict_maps(images))


def test_torch_setting_restored_when_fit_fails(images):
    with pytest.raises(ValueError, match="y may only hold"):
        FastFlowDetector(n_threads=1, **TINY).fit(images, y=np.full(len(images), 3))
    assert torch.get_num_threads() == 2


def test_n_threads_is_validated_as_a_parameter(images):
    with pytest.raises(ValueError, match="n_threads"):
        FastFlowDetector(n_threads=0, **TINY).fit(images)


def test_model_files_without_n_threads_load_as_automatic():
    state = FastFlowDetector(n_threads=3).__getstate__()
    del state["n_threads"]  # written before the parameter existed
    loaded = pickle.loads(pickle.dumps(FastFlowDetector()))
    loaded.__setstate__(state)
    assert loaded.get_params()["n_threads"] is None


def test_a_forked_child_measures_its_own_window():
    # Its CPU clock restarts at zero: a window begun in the parent would read as a huge load.
    parent_window = threads._meter
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, b"new" if threads._meter is not parent_window else b"old")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 3) == b"new"
