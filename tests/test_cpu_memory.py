"""cpu_memory.keep_freed_memory: a repeated large allocation stops page-faulting once applied."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# 16 rounds of an 80 MB tensor created and freed; prints the page faults of each round. Transparent
# huge pages are turned off for the process (prctl PR_SET_THP_DISABLE = 41), so the faults count
# 4 kB pages even where the system setting is "always" (2 MB pages: 512 times fewer faults).
PROGRAM = """
import ctypes, resource, sys, torch
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)
from core import cpu_memory
applied = cpu_memory.keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(20_000_000)
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""


def faults_per_round(mode):
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", [int(n) for n in out[1:]]


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    applied, kept = faults_per_round("keep")
    if not applied:
        pytest.skip("malloc here is not glibc's: keep_freed_memory() changes nothing")
    _, default = faults_per_round("default")
    pages = 20_000_000 * 4 // 4096
    assert all(n > pages // 2 for n in default)  # every round faults its pages in afresh
    assert sum(kept[-4:]) < pages // 100  # once the heap holds the blocks, rounds reuse them
