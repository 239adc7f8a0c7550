"""The desktop agent: reports a machine's capacity (CPU, memory, GPUs) and whether it is busy.

It runs nothing. The scheduler uses its heartbeats to decide whether a run
that needs, say, 8 GiB of VRAM fits on this desktop now; the infra agent then
runs the playbook against it (controllers/scheduler.py). ``busy`` is the
owner's veto: ``--busy``, or a game from ``--busy-process`` running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chiffon.agents.base import DEFAULT_HEARTBEAT_INTERVAL, AgentBase
from chiffon.agents.capacity import BusyCheck, hostname, read_gpus
from chiffon.bus import Bus
from chiffon.resources.agent import AgentKind


def default_desktop_id() -> str:
    return f"desktop-{hostname()}"


def default_desktop_labels() -> dict[str, str]:
    """``role=desktop``, and ``gpu=true`` when NVML sees an NVIDIA GPU (checked once, at start)."""
    return {"role": "desktop", "gpu": "true" if read_gpus() else "false"}


class DesktopAgent(AgentBase):
    kind = AgentKind.DESKTOP

    def __init__(
        self,
        bus: Bus,
        *,
        agent_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        busy: bool = False,
        busy_processes: Sequence[str] = (),
    ) -> None:
        super().__init__(
            bus,
            agent_id or default_desktop_id(),
            labels=labels if labels is not None else default_desktop_labels(),
            heartbeat_interval=heartbeat_interval,
            busy=BusyCheck(forced=busy, processes=tuple(busy_processes)),
        )
