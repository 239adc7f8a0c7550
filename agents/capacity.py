"""What this machine has room for: the only module that imports psutil and pynvml.

Agents report a :class:`~chiffon.resources.agent.Capacity` in every heartbeat
(DESIGN §5, docs/protocol.md §5). Reading it must be cheap, because an idle
agent does it every 15 seconds, and must never fail, because a heartbeat is
how the controller knows the agent is alive:

* **CPU load** is measured the way ``psutil.cpu_percent(interval=None)`` does
  it, without sleeping: busy time over elapsed CPU time since the previous
  reading. psutil keeps one baseline per process, so two agents in one process
  (``chiffon up``) would each see only the time since the *other's* reading;
  :class:`CpuLoad` keeps one baseline per agent instead, and a heartbeat
  reports the average over the time since that agent's previous heartbeat.
* **GPUs** come from NVML (``nvidia-ml-py``). No library, no driver, no GPU, or
  any NVML error means ``gpus=[]`` — a machine without an NVIDIA GPU is normal,
  not an error. NVML is initialised and shut down around each reading, so an
  idle agent holds no driver handle and picks up a driver installed later.
* **Busy** is a person's override: ``--busy``, or one of the configured
  process names (a game, say) found running. Names match the process name
  case-insensitively, with or without an ``.exe`` suffix, so ``steam.exe``
  matches the Windows process and ``steam`` the Linux one.

:func:`self_usage` is the agent's own footprint (CPU % and RSS), for the
idle-cost figure, and :class:`ProcessTreeUsage` measures what an
``ansible-playbook`` process and its descendants used (sampled: see there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from chiffon.resources.agent import Capacity, GpuInfo
from chiffon.resources.run import ResourceUsage

log = logging.getLogger(__name__)

MIB = 1024 * 1024


class CpuLoad:
    """System-wide CPU load since the previous :meth:`percent` (or since creation)."""

    def __init__(self) -> None:
        self._last = self._busy_total()

    @staticmethod
    def _busy_total() -> tuple[float, float]:
        times = psutil.cpu_times()
        total = sum(times)
        # Linux counts guest time inside user/nice already (psutil does the same subtraction).
        total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
        idle = times.idle + getattr(times, "iowait", 0.0)
        return total - idle, total

    def percent(self) -> float:
        busy, total = self._busy_total()
        last_busy, last_total = self._last
        self._last = (busy, total)
        elapsed = total - last_total
        if elapsed <= 0:
            return 0.0
        return round(min(100.0, max(0.0, (busy - last_busy) / elapsed * 100)), 1)


_DEFAULT_CPU = CpuLoad()


@dataclass(frozen=True)
class BusyCheck:
    """The busy override: forced, or any of ``processes`` running."""

    forced: bool = False
    processes: tuple[str, ...] = ()
    forced_reason: str = "marked busy by its owner"

    def reason(self) -> str | None:
        """Why the machine is busy, or None when it is free."""
        if self.forced:
            return self.forced_reason
        if not self.processes:
            return None
        found = running_process(self.processes)
        return f"{found} running" if found else None


def _normalise(name: str) -> str:
    name = name.strip().lower()
    return name.removesuffix(".exe")


def running_process(names: Iterable[str]) -> str | None:
    """The first of ``names`` that is running (as it was configured), or None."""
    wanted = {_normalise(name): name for name in names if name.strip()}
    if not wanted:
        return None
    for process in psutil.process_iter(["name"]):
        name = process.info.get("name")
        if name and _normalise(name) in wanted:
            return wanted[_normalise(name)]
    return None


def read_gpus() -> list[GpuInfo]:
    """Every NVIDIA GPU NVML can see; ``[]`` whenever NVML cannot answer."""
    try:
        import pynvml
    except ImportError:  # nvidia-ml-py is a dependency, but a broken install must not stop heartbeats
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, NoPermission, …
        log.debug("no NVIDIA GPU information: %s", exc)
        return []
    try:
        return [_gpu(pynvml, index) for index in range(pynvml.nvmlDeviceGetCount())]
    except Exception as exc:
        log.warning("could not read NVIDIA GPU information: %s", exc)
        return []
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _gpu(nvml: Any, index: int) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    utilization: float | None
    try:
        utilization = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # not supported on every board (e.g. some laptop GPUs)
        utilization = None
    uuid: str | None
    try:
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
    except Exception:
        uuid = None
    return GpuInfo(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        uuid=uuid,
        memory_total_mib=int(memory.total) // MIB,
        memory_free_mib=int(memory.free) // MIB,
        utilization_percent=None if utilization is None else min(100.0, max(0.0, utilization)),
    )


def _text(value: object) -> str:
    # Older nvidia-ml-py releases return bytes, newer ones str.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def read_capacity(busy: BusyCheck | None = None, *, cpu: CpuLoad | None = None) -> Capacity:
    """A snapshot of this machine for a heartbeat. Blocking for a few ms: call it in a thread.

    ``cpu`` is the caller's own load baseline (see :class:`CpuLoad`); without
    one, a module-wide one is used.
    """
    memory = psutil.virtual_memory()
    reason = busy.reason() if busy is not None else None
    return Capacity(
        cpu_load_percent=(cpu or _DEFAULT_CPU).percent(),
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        memory_total_mib=int(memory.total) // MIB,
        memory_available_mib=int(memory.available) // MIB,
        gpus=read_gpus(),
        busy=reason is not None,
        busy_reason=reason,
    )


@dataclass(frozen=True)
class SelfUsage:
    cpu_percent: float
    """CPU time of this process since the previous call, as % of one core."""
    rss_mib: float


_SELF = psutil.Process()
_SELF.cpu_percent(interval=None)


def self_usage() -> SelfUsage:
    """This process's own CPU % (since the previous call) and resident memory."""
    with _SELF.oneshot():
        return SelfUsage(
            cpu_percent=float(_SELF.cpu_percent(interval=None)),
            rss_mib=_SELF.memory_info().rss / MIB,
        )


@dataclass
class ProcessTreeUsage:
    """CPU seconds and peak memory of one process and its descendants, by sampling.

    :meth:`sample` is called every fraction of a second while the run lasts.
    CPU seconds are the newest sample of the root's user+system time, plus the
    time of its descendants — those still alive, and (through the root's
    ``children_*`` counters) those it has already reaped, so short-lived forks
    and module processes count too. Memory is the largest sum of RSS over the
    tree seen in a sample: an upper bound, since forked workers share pages.
    What happens after the last sample (at most one interval) is not counted.

    ``resource.getrusage(RUSAGE_CHILDREN)`` would be exact for CPU, but it is
    per agent, not per run: two concurrent runs would be mixed up, and its
    ``ru_maxrss`` is the largest child ever, not this run's.

    The tree is walked through Linux's ``/proc/<pid>/task/<tid>/children``
    (:func:`child_pids`), which costs one read per process of the tree;
    psutil's ``children()`` reads ``/proc/<pid>/stat`` of *every* process on
    the machine to find parents, a few milliseconds a sample, four samples a
    second, competing with the playbook for the CPU. Where that file does not
    exist (another OS, a kernel without ``CONFIG_PROC_CHILDREN``) psutil is used.
    """

    root_pid: int | None = None
    cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    samples: int = 0
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    """Every process of the tree a sample saw (psutil checks pid reuse by start time)."""

    def find_root(self, marker: str) -> bool:
        """Adopt the direct child of this process whose command line mentions ``marker``."""
        if self.root_pid is not None:
            return True
        for child in _children(_SELF):
            try:
                if any(marker in part for part in child.cmdline()):
                    self.root_pid = child.pid
                    return True
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return False

    def sample(self) -> None:
        if self.root_pid is None:
            return
        try:
            root = self.seen.get(self.root_pid) or psutil.Process(self.root_pid)
            tree = [root, *self._descendants(root)]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return  # the run ended between two samples: keep what the last sample said
        cpu = 0.0
        rss = 0
        for process in tree:
            self.seen.setdefault(process.pid, process)
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    memory = process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            # Each process counts itself and its reaped children; a process that ends is
            # counted by its parent's children_* once reaped, so nothing is counted twice.
            cpu += times.user + times.system + times.children_user + times.children_system
            rss += memory
        self.samples += 1
        self.cpu_seconds = max(self.cpu_seconds, cpu)
        self.peak_rss_mib = max(self.peak_rss_mib, rss / MIB)

    def _descendants(self, root: psutil.Process) -> list[psutil.Process]:
        """Every process below ``root``, reusing the Process objects of earlier samples."""
        if not PROC_CHILDREN:
            return list(root.children(recursive=True))
        found: list[psutil.Process] = []
        parents = [root.pid]
        while parents:
            pids = [pid for parent in parents for pid in child_pids(parent)]
            parents = []
            for pid in pids:
                known = self.seen.get(pid)
                try:
                    # A pid seen before is the same process unless it was reused (checked by start time).
                    process = known if known is not None and known.is_running() else psutil.Process(pid)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                found.append(process)
                parents.append(pid)
        return found

    def kill_leftovers(self) -> int:
        """SIGKILL every process of the tree still running, and its children; how many were.

        Killing the root's process group is not enough: Ansible's worker
        processes call ``setsid()``, so they (and the module they wait for)
        outlive a killed ``ansible-playbook`` in their own session.
        """
        self.sample()  # one more look, for processes started since the last sample
        doomed: dict[int, psutil.Process] = {}
        for process in self.seen.values():
            try:
                if not process.is_running():
                    continue
                doomed[process.pid] = process
                for child in process.children(recursive=True):
                    doomed.setdefault(child.pid, child)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for process in doomed.values():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                process.kill()
        psutil.wait_procs(list(doomed.values()), timeout=3)
        return len(doomed)

    def usage(self) -> ResourceUsage | None:
        if not self.samples:
            return None
        return ResourceUsage(
            cpu_seconds=round(self.cpu_seconds, 3), peak_memory_mib=round(self.peak_rss_mib, 1)
        )


def _proc_children_file() -> bool:
    """Whether this kernel lists each task's children in ``/proc/<pid>/task/<tid>/children``."""
    return Path(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/children").exists()


PROC_CHILDREN = _proc_children_file()


def child_pids(pid: int) -> list[int]:
    """The pids of ``pid``'s direct children, from ``/proc/<pid>/task/*/children`` (Linux).

    Each task (thread) lists the children it forked; [] if the process is gone.
    Like every reading of the process table it is a snapshot: a child forked
    meanwhile shows up at the next call.
    """
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    pids: list[int] = []
    for task in tasks:
        try:
            with open(task / "children", "rb") as listing:
                pids.extend(int(child) for child in listing.read().split())
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return pids


def _children(process: psutil.Process) -> list[psutil.Process]:
    """``process``'s direct children (see :func:`child_pids`)."""
    if not PROC_CHILDREN:
        return list(process.children(recursive=False))
    found = []
    for pid in child_pids(process.pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            found.append(psutil.Process(pid))
    return found


def hostname() -> str:
    """This machine's short host name, for default agent ids (``infra-<hostname>``)."""
    name = platform.node().split(".")[0] or "localhost"  # os.uname() does not exist on Windows
    return "".join(char if char.isalnum() or char in "-_" else "-" for char in name)
