"""A run's output, live, as Server-Sent Events.

The API may run in another process than the controller that stores the
events (distributed mode), so the database is the only place both can see:
the stream polls it, every :data:`POLL_SECONDS`, with two indexed reads (the
run row by key, then its events after the last ``seq`` sent). A homelab has a
handful of people watching at once; that costs less than a notification
channel every backend would have to provide.

The wire format, one message per event:

* ``event: run`` — the run (its wire form) when the stream opens and whenever its
  status changes (pending → running on an agent, …);
* ``event: output`` with ``id: <seq>`` — one stored ansible event (task, host,
  status, trimmed output). The id is the resume point: a client that reconnects
  with ``Last-Event-ID`` (or ``?after=``) gets only what came later;
* ``event: end`` — the finished run (status, rc, per-host stats, error); the
  stream closes after it;
* ``event: error`` — the stream cannot go on (the run was deleted, the
  database went away); it closes after it;
* a ``: keep-alive`` comment after :data:`KEEPALIVE_SECONDS` of silence, so
  proxies and clients can tell a quiet run from a dead connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from chiffon.resources import Run
from chiffon.store import Store, StoreError

POLL_SECONDS = 0.1
KEEPALIVE_SECONDS = 15.0
KEEPALIVE = ": keep-alive\n\n"


def sse(event: str, data: Mapping[str, Any], *, event_id: int | None = None) -> str:
    """One Server-Sent Events message; JSON never holds a raw newline, so ``data`` is one line."""
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines += [f"event: {event}", f"data: {json.dumps(data, separators=(',', ':'))}"]
    return "\n".join(lines) + "\n\n"


def resume_after(after: int, last_event_id: str | None) -> int:
    """Where to start: ``Last-Event-ID`` (sent by a reconnecting client) wins over ``?after=``."""
    if last_event_id is None or not last_event_id.strip():
        return after
    try:
        seq = int(last_event_id.strip())
    except ValueError:
        raise ValueError(
            f"{last_event_id!r} is not an event id (the seq of the last event received)"
        ) from None
    if seq < -1:
        raise ValueError(f"{seq} is not an event id: ids are 0 or more (-1: from the start)")
    return seq


async def follow_run(
    store: Store,
    run: Run,
    after: int = -1,
    *,
    poll_seconds: float = POLL_SECONDS,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[str]:
    """The run's events after ``after``, then new ones as they are stored, until it finishes."""
    yield sse("run", run.to_wire())
    status, last_seq, last_sent = run.status, after, time.monotonic()
    while True:
        try:
            # The run first, then its events: when the run reads as finished, every event
            # stored before its result is in the read that follows, so none is cut off.
            current = await store.get_run(run.id)
            events = await store.list_run_events(run.id, after_seq=last_seq)
        except StoreError as exc:
            yield sse("error", {"message": f"database unavailable: {exc}"})
            return
        for event in events:
            yield sse("output", event.to_wire(), event_id=event.seq)
            last_seq, last_sent = event.seq, time.monotonic()
        if current is None:
            yield sse("error", {"message": f"run {run.id} no longer exists"})
            return
        if current.status.finished:
            yield sse("end", current.to_wire())
            return
        if current.status is not status:
            status, last_sent = current.status, time.monotonic()
            yield sse("run", current.to_wire())
        if time.monotonic() - last_sent >= keepalive_seconds:
            last_sent = time.monotonic()
            yield KEEPALIVE
        await asyncio.sleep(poll_seconds)
