"""Stopping cleanly where the event loop has no signal handlers (Windows), and agent ids without os.uname."""

from __future__ import annotations

import asyncio
import platform
import signal

import pytest

from chiffon.agents.capacity import hostname
from chiffon.cli import on_stop_signals


async def test_a_stop_signal_reaches_the_loop_without_loop_signal_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unix_only(*_args: object) -> None:
        raise NotImplementedError  # what asyncio's Windows loops do

    monkeypatch.setattr(asyncio.get_running_loop(), "add_signal_handler", unix_only)
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    stopped = asyncio.Event()
    try:
        on_stop_signals(stopped.set)
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(stopped.wait(), timeout=5)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_the_default_agent_id_comes_from_the_portable_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "node", lambda: "Gaming PC.lan")
    assert hostname() == "Gaming-PC"
    monkeypatch.setattr(platform, "node", lambda: "")
    assert hostname() == "localhost"
