"""``server.proc.memory.keep_freed_memory``: a worker that allocates and frees
large buffers over and over no longer takes fresh pages from the kernel for
each one (counted as the process's minor page faults, in a fresh process)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

LOOP = """
import resource, sys
from server.proc.memory import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
before = faults()
for _ in range(200):  # a busy turn of the connect process: reads of 64 KiB, freed at its end
    reads = [bytes(65536) for _ in range(32)]
    del reads
print(faults() - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", LOOP, mode], capture_output=True, text=True, timeout=30, check=True
    )
    return int(out.stdout)


def test_large_buffers_freed_and_allocated_again_fault_no_more_pages() -> None:
    plain, kept = faults("plain"), faults("kept")
    assert plain > 20_000  # glibc's defaults: fresh pages for every buffer (the problem)
    assert kept < 1_000, f"{kept} page faults for 200 turns with the thresholds raised"
