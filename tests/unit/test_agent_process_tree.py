"""Walking a process tree through /proc/<pid>/task/<tid>/children (agents/capacity.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from chiffon.agents import capacity
from chiffon.agents.capacity import ProcessTreeUsage, child_pids

# A parent with two children, one of which has a child of its own, all asleep.
SLEEP = "import time; time.sleep(30)"
MIDDLE = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {SLEEP!r}]); time.sleep(30)"
TREE = (
    "import subprocess, sys, time\n"
    f"for code in ({MIDDLE!r}, {SLEEP!r}):\n"
    "    subprocess.Popen([sys.executable, '-c', code])\n"
    "time.sleep(30)\n"
)


@pytest.fixture
def tree() -> Iterator[psutil.Process]:
    process = subprocess.Popen([sys.executable, "-c", TREE])
    root = psutil.Process(process.pid)
    deadline = time.monotonic() + 20
    while len(root.children(recursive=True)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    yield root
    for member in [*root.children(recursive=True), root]:
        member.kill()
    process.wait(timeout=10)


@pytest.mark.skipif(not capacity.PROC_CHILDREN, reason="this kernel has no /proc/<pid>/task/<tid>/children")
def test_the_walk_finds_what_psutil_finds(tree: psutil.Process) -> None:
    expected = {child.pid for child in tree.children(recursive=True)}
    assert len(expected) == 3
    assert set(child_pids(tree.pid)) == {child.pid for child in tree.children(recursive=False)}
    usage = ProcessTreeUsage(root_pid=tree.pid)
    assert {process.pid for process in usage._descendants(tree)} == expected
    usage.sample()
    assert set(usage.seen) == {tree.pid, *expected} and usage.peak_rss_mib > 0


def test_a_process_that_is_gone_has_no_children() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert child_pids(process.pid) == []
