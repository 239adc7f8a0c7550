"""Capacity readings: real psutil on this machine; NVML through a stand-in only where no GPU exists."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from chiffon.agents import capacity
from chiffon.agents.capacity import (
    BusyCheck,
    CpuLoad,
    ProcessTreeUsage,
    read_capacity,
    read_gpus,
    running_process,
    self_usage,
)

MIB = 1024 * 1024


def has_nvidia_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    try:
        return bool(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def test_capacity_is_this_machine() -> None:
    reading = read_capacity(None)
    assert reading.cpu_cores == psutil.cpu_count(logical=True)
    assert reading.memory_total_mib == psutil.virtual_memory().total // MIB
    assert 0 < reading.memory_available_mib <= reading.memory_total_mib
    assert 0 <= reading.cpu_load_percent <= 100
    assert reading.busy is False and reading.busy_reason is None


@pytest.mark.skipif(has_nvidia_gpu(), reason="this machine has an NVIDIA GPU")
def test_no_nvidia_gpu_means_an_empty_list_not_an_error() -> None:
    assert read_gpus() == []
    assert read_capacity(None).gpus == []


@pytest.mark.skipif(not has_nvidia_gpu(), reason="needs an NVIDIA GPU")
def test_nvidia_gpus_are_reported() -> None:
    gpus = read_gpus()
    assert gpus and all(gpu.memory_total_mib > 0 for gpu in gpus)


class _FakeNvml:
    """Stands in for pynvml on machines without a GPU, to check how its answers are mapped."""

    def __init__(self, *, fail_init: bool = False, fail_query: bool = False) -> None:
        self.fail_init = fail_init
        self.fail_query = fail_query
        self.shutdowns = 0

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if self.fail_init:
            raise RuntimeError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        if self.fail_query:
            raise RuntimeError("GPU is lost")
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:  # noqa: N802
        return SimpleNamespace(total=24564 * MIB, free=(20000 - handle) * MIB)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:  # noqa: N802
        if handle == 1:
            raise RuntimeError("Not Supported")
        return SimpleNamespace(gpu=37)

    def nvmlDeviceGetName(self, handle: int) -> bytes:  # noqa: N802
        return b"NVIDIA GeForce RTX 4090"

    def nvmlDeviceGetUUID(self, handle: int) -> str:  # noqa: N802
        return f"GPU-{handle}"


def test_nvml_answers_are_mapped_and_nvml_is_shut_down(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus = read_gpus()
    assert [
        (g.index, g.name, g.uuid, g.memory_total_mib, g.memory_free_mib, g.utilization_percent) for g in gpus
    ] == [
        (0, "NVIDIA GeForce RTX 4090", "GPU-0", 24564, 20000, 37.0),
        (1, "NVIDIA GeForce RTX 4090", "GPU-1", 24564, 19999, None),
    ]
    assert fake.shutdowns == 1


@pytest.mark.parametrize(
    "fake", [_FakeNvml(fail_init=True), _FakeNvml(fail_query=True)], ids=["init", "query"]
)
def test_nvml_failures_mean_no_gpus(monkeypatch: pytest.MonkeyPatch, fake: _FakeNvml) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert read_gpus() == []
    assert fake.shutdowns == (0 if fake.fail_init else 1)


def test_busy_when_a_listed_process_runs() -> None:
    me = psutil.Process().name()
    check = BusyCheck(processes=("steam.exe", me.upper()))
    reading = read_capacity(check)
    assert reading.busy is True and reading.busy_reason == f"{me.upper()} running"
    assert running_process([f"{me}.exe"]) == f"{me}.exe"  # the Windows spelling matches too


def test_not_busy_when_no_listed_process_runs() -> None:
    assert BusyCheck(processes=("no-such-game-4f2a.exe",)).reason() is None
    assert read_capacity(BusyCheck(processes=("no-such-game-4f2a.exe",))).busy is False


def test_forced_busy() -> None:
    reading = read_capacity(BusyCheck(forced=True))
    assert reading.busy is True and reading.busy_reason == "marked busy by its owner"


def test_cpu_load_measures_since_the_previous_reading() -> None:
    meter = CpuLoad()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass  # one core busy
    busy = meter.percent()
    assert 0 < busy <= 100
    assert 0 <= meter.percent() <= 100


def test_self_usage() -> None:
    usage = self_usage()
    assert usage.rss_mib > 10 and usage.cpu_percent >= 0


def test_process_tree_usage_counts_the_tree() -> None:
    marker = "chiffon-tree-usage-marker"
    # A parent that spins a child for CPU time and allocates memory, then waits.
    script = (
        "import subprocess, sys, time;"
        # CPU time, not wall time: on a loaded machine 0.6 s of wall clock may be 0.2 s of CPU.
        "spin = 'import time\\nwhile time.process_time() < 0.6: pass';"
        "subprocess.run([sys.executable, '-c', spin]);"
        "data = bytearray(60 * 1024 * 1024); time.sleep(1.5)"
    )
    process = subprocess.Popen([sys.executable, "-c", script, marker])
    try:
        usage = ProcessTreeUsage()
        deadline = time.monotonic() + 10
        while not usage.find_root(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        while process.poll() is None:
            usage.sample()
            time.sleep(0.1)
    finally:
        process.wait(timeout=10)
    measured = usage.usage()
    assert measured is not None
    assert measured.cpu_seconds is not None and measured.cpu_seconds >= 0.4  # the reaped child counts
    assert measured.peak_memory_mib is not None and measured.peak_memory_mib >= 60


def test_hostname_is_usable_in_an_agent_id() -> None:
    name = capacity.hostname()
    assert name and all(char.isalnum() or char in "-_" for char in name)
