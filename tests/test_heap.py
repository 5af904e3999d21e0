"""The training loop's heap policy: freed memory is reused inside the block, returned after it."""

import os
import resource
import subprocess
import sys
import threading

import pytest
import torch

from skfastflow import heap

pytestmark = pytest.mark.skipif(
    heap._GLIBC is None or not os.path.exists("/proc/self/statm"), reason="the heap policy applies to glibc (Linux) only"
)

SIZE = 128 * 2**20  # above glibc's largest mmap threshold (32 MiB), and above any tensor of the other tests
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes():
    return int(open("/proc/self/statm").read().split()[1]) * PAGE


def pages_faulted_per_allocation(times=8):
    """Minor page faults per page when a SIZE tensor is allocated, written and freed ``times``
    times in a row: about 1 when every allocation gets fresh pages, about 0 when reused."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        torch.ones(SIZE // 4, dtype=torch.float32)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (times * SIZE / PAGE)


def test_freed_memory_is_reused_inside_and_returned_after():
    # glibc's default, in a fresh interpreter: a free block left in this process's heap by an
    # earlier test's fit would serve the allocations without faults.
    default = subprocess.run(
        [sys.executable, "-c", "import test_heap; print(test_heap.pages_faulted_per_allocation())"],
        cwd=os.path.dirname(__file__), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert float(default.stdout) > 0.9  # fresh pages every time
    with heap.reuse_freed_memory():
        pages_faulted_per_allocation(3)  # the first allocations page the memory in
        assert pages_faulted_per_allocation() < 0.3
        kept = resident_bytes()
    assert resident_bytes() < kept - 0.8 * SIZE  # given back to the system on leaving


def test_nested_and_concurrent_blocks_keep_the_memory_until_the_last_ends():
    entered, leave = threading.Event(), threading.Event()

    def other_fit():
        with heap.reuse_freed_memory():
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=other_fit)
    with heap.reuse_freed_memory():
        with heap.reuse_freed_memory():
            pages_faulted_per_allocation(3)
        assert pages_faulted_per_allocation() < 0.3  # the outer block still holds
        thread.start()
        entered.wait(10)
    assert pages_faulted_per_allocation() < 0.3  # the other thread's block still holds
    kept = resident_bytes()
    leave.set()
    thread.join()
    assert resident_bytes() < kept - 0.8 * SIZE


def test_an_error_inside_the_block_still_gives_the_memory_back():
    with pytest.raises(KeyboardInterrupt):
        with heap.reuse_freed_memory():
            pages_faulted_per_allocation(3)
            kept = resident_bytes()
            raise KeyboardInterrupt
    assert heap._depth == 0
    assert resident_bytes() < kept - 0.8 * SIZE
