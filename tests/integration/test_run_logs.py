"""Live run output: the Server-Sent Events stream and ``chiffonctl logs [-f]``, on both backends.

Events are stored the way the controller stores an agent's ``RunEvent``
batches (``Store.append_run_events``) while a client follows over a real
socket; the stream must replay, deliver new events as they land, resume
after ``Last-Event-ID``, and close with the run's final status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from chiffon.api.app import create_app
from chiffon.api.client import ServerSentEvent, parse_sse
from chiffon.api.context import ServerContext
from chiffon.api.runstream import KEEPALIVE, follow_run
from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.resources import Run, RunStatus
from chiffon.resources.messages import AnsibleEvent
from chiffon.settings import Settings
from chiffon.store import Store
from tests.helpers import intent_yaml
from tests.integration.conftest import Served
from tests.integration.live import chiffonctl, finish, serve, start_chiffonctl

RUN_ID = "kuma-0123456789abcdef"
WAIT = 15.0

TASK = AnsibleEvent(seq=1, event="playbook_on_task_start", task="write file", output="TASK [write file] ****")
CHANGED = AnsibleEvent(
    seq=2,
    event="runner_on_ok",
    task="write file",
    host="localhost",
    status="changed",
    output="changed: [localhost]",
)
# A loop's summary after its items: ansible prints nothing for it, and neither does `logs`.
QUIET = AnsibleEvent(seq=3, event="runner_on_ok", task="check port", host="localhost", status="ok")
FAILED = AnsibleEvent(
    seq=4,
    event="runner_on_failed",
    task="start service",
    host="localhost",
    status="failed",
    output='fatal: [localhost]: FAILED! => {"msg": "port 3001 in use"}',
)


def a_run(status: RunStatus = RunStatus.RUNNING, **changes: object) -> Run:
    return Run(
        id=RUN_ID,
        intent="kuma",
        generation=1,
        plan_digest="a" * 64,
        step="deploy",
        step_index=0,
        agent_id="infra-1" if status is not RunStatus.PENDING else None,
        status=status,
        created_at=datetime.now(UTC),
        **changes,
    )


async def finish_run(store: Store, status: RunStatus, rc: int, error: str | None = None) -> None:
    """What the result consumer writes when the agent's RunResult arrives."""
    await store.upsert_run(a_run(status, rc=rc, error=error, finished_at=datetime.now(UTC)))


@pytest.fixture
def lab(served: Served) -> Served:
    return served


class Stream:
    """One open ``/runs/{id}/stream``, read message by message with a deadline."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> ServerSentEvent:
        block: list[str] = []
        while True:
            line = await asyncio.wait_for(anext(self._lines), WAIT)
            if line.startswith(":"):
                continue
            if line or not block:
                block += [line] if line else []
                continue
            [message] = parse_sse(iter([*block, ""]))
            return message

    async def closed(self) -> bool:
        """True once the server has ended the stream (no more lines)."""
        try:
            await asyncio.wait_for(anext(self._lines), WAIT)
        except StopAsyncIteration:
            return True
        return False


@pytest.fixture
async def http(lab: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{lab.server}/api/v1", timeout=WAIT) as client:
        yield client


# The stream ----------------------------------------------------------------------------------


async def test_stream_replays_then_follows_live_and_ends_with_the_final_status(lab: Served, http) -> None:
    await lab.store.upsert_run(a_run(RunStatus.PENDING))
    await lab.store.append_run_events(RUN_ID, [TASK])
    async with http.stream("GET", f"/runs/{RUN_ID}/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        opened = await stream.next()
        assert (opened.event, opened.data["status"]) == ("run", "pending")
        replayed = await stream.next()
        assert (replayed.event, replayed.id, replayed.data["task"]) == ("output", 1, "write file")

        # The agent accepts the run, then its events arrive while we watch.
        await lab.store.upsert_run(a_run(RunStatus.RUNNING))
        running = await stream.next()
        assert (running.event, running.data["status"], running.data["agentId"]) == (
            "run",
            "running",
            "infra-1",
        )
        await lab.store.append_run_events(RUN_ID, [CHANGED])
        live = await stream.next()
        assert (live.event, live.id, live.data["output"]) == ("output", 2, "changed: [localhost]")

        # The last batch and the result land together: the batch still comes first.
        await lab.store.append_run_events(RUN_ID, [QUIET])
        await finish_run(lab.store, RunStatus.SUCCESSFUL, rc=0)
        last = await stream.next()
        assert (last.event, last.id) == ("output", 3)
        end = await stream.next()
        assert end.event == "end" and end.id is None
        assert (end.data["id"], end.data["status"], end.data["rc"]) == (RUN_ID, "successful", 0)
        assert await stream.closed()


async def test_stream_resumes_after_the_last_event_id(lab: Served, http) -> None:
    await lab.store.upsert_run(a_run())
    await lab.store.append_run_events(RUN_ID, [TASK, CHANGED, QUIET])
    await finish_run(lab.store, RunStatus.SUCCESSFUL, rc=0)
    for request in ({"headers": {"Last-Event-ID": "2"}}, {"params": {"after": 2}}):
        async with http.stream("GET", f"/runs/{RUN_ID}/stream", **request) as response:
            stream = Stream(response)
            assert (await stream.next()).event == "run"
            assert (await stream.next()).id == 3
            assert (await stream.next()).event == "end"
            assert await stream.closed()


async def test_stream_of_an_unknown_run_or_with_a_bad_resume_point_is_refused(lab: Served, http) -> None:
    missing = await http.get("/runs/nope/stream")
    assert missing.status_code == 404 and missing.json()["detail"] == "run nope not found"
    await lab.store.upsert_run(a_run())
    bad = await http.get(f"/runs/{RUN_ID}/stream", headers={"Last-Event-ID": "latest"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith(
        "Last-Event-ID: 'latest' is not an event id"
    )
    assert (await http.get("/runs/nope/events")).status_code == 404


# chiffonctl logs -----------------------------------------------------------------------------


async def test_logs_prints_the_stored_output_and_the_outcome(lab: Served) -> None:
    await lab.store.upsert_run(a_run())
    await lab.store.append_run_events(RUN_ID, [TASK, CHANGED, QUIET, FAILED])
    running = await chiffonctl(lab.server, "logs", RUN_ID)
    assert running.code == 0, running.stderr
    assert running.stdout.splitlines() == [
        "TASK [write file] ****",
        "changed: [localhost]",
        'fatal: [localhost]: FAILED! => {"msg": "port 3001 in use"}',
    ]
    assert f"is running; follow it with: chiffonctl logs {RUN_ID} -f" in running.stderr

    await finish_run(lab.store, RunStatus.FAILED, rc=2, error="start service failed on localhost")
    done = await chiffonctl(lab.server, "logs", f"run/{RUN_ID}")
    assert done.code == 0 and len(done.stdout.splitlines()) == 3
    assert done.stderr.strip() == f"run {RUN_ID} failed (rc 2): start service failed on localhost"


async def test_logs_follow_prints_events_as_they_arrive_and_exits_with_the_outcome(lab: Served) -> None:
    await lab.store.upsert_run(a_run())
    await lab.store.append_run_events(RUN_ID, [TASK])
    process = await start_chiffonctl(lab.server, "logs", RUN_ID, "-f")
    assert process.stdout is not None

    async def next_line() -> str:
        return (await asyncio.wait_for(process.stdout.readline(), WAIT)).decode().rstrip("\n")

    try:
        assert await next_line() == "TASK [write file] ****"
        await lab.store.append_run_events(RUN_ID, [CHANGED])
        assert await next_line() == "changed: [localhost]"
        await lab.store.append_run_events(RUN_ID, [FAILED])
        assert await next_line() == 'fatal: [localhost]: FAILED! => {"msg": "port 3001 in use"}'
        await finish_run(lab.store, RunStatus.FAILED, rc=2)
        result = await finish(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert result.code == 1 and result.stdout == ""
    assert result.stderr.strip().endswith(f"run {RUN_ID} failed (rc 2)")


async def test_logs_follow_resumes_where_it_left_off_when_the_server_restarts(
    source, store: Store, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    app = create_app(ServerContext(Settings(home=tmp_path), store, source, IntentsWriter(source)))
    await store.upsert_run(a_run())
    await store.append_run_events(RUN_ID, [TASK])
    async with serve(app, grace=0.1) as url:
        process = await start_chiffonctl(url, "logs", RUN_ID, "-f")
        assert process.stdout is not None
        try:
            assert (await asyncio.wait_for(process.stdout.readline(), WAIT)) == b"TASK [write file] ****\n"
        except BaseException:
            process.kill()
            raise
    # The server is gone mid-stream; the run goes on, and the server comes back on the same port.
    await store.append_run_events(RUN_ID, [CHANGED])
    port = int(url.rsplit(":", 1)[1])
    async with serve(app, port=port):
        try:
            assert (await asyncio.wait_for(process.stdout.readline(), WAIT)) == b"changed: [localhost]\n"
            await finish_run(store, RunStatus.SUCCESSFUL, rc=0)
            result = await finish(process)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert result.code == 0 and result.stdout == ""  # nothing printed twice
    assert result.stderr.strip().endswith(f"run {RUN_ID} successful (rc 0)")


async def test_logs_of_an_intent_follows_its_latest_run(lab: Served, http) -> None:
    applied = await http.post(
        "/intents/apply", json={"files": [{"name": "kuma.yaml", "content": intent_yaml("kuma")}]}
    )
    assert applied.status_code == 200, applied.text
    none_yet = await chiffonctl(lab.server, "logs", "intent/kuma")
    assert (
        none_yet.code == 1
        and none_yet.stderr.strip() == "chiffonctl: error: deploymentintent/kuma has no runs yet"
    )
    await lab.store.upsert_run(a_run())
    await lab.store.append_run_events(RUN_ID, [TASK, CHANGED])
    await finish_run(lab.store, RunStatus.SUCCESSFUL, rc=0)
    result = await chiffonctl(lab.server, "logs", "intent/kuma", "-f")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == ["TASK [write file] ****", "changed: [localhost]"]
    assert result.stderr.strip() == f"run {RUN_ID} successful (rc 0)"


@pytest.mark.parametrize(
    ("reference", "code", "message"),
    [
        ("nope", 1, "run nope not found"),
        ("intent/nope", 1, "deploymentintent/nope not found"),
        ("pod/nope", 2, "'pod/nope': give a run id, run/ID or intent/NAME"),
    ],
)
async def test_logs_of_something_unknown_is_one_line_and_a_nonzero_exit(
    lab: Served, reference: str, code: int, message: str
) -> None:
    result = await chiffonctl(lab.server, "logs", reference, "-f")
    assert (result.code, result.stdout) == (code, "")
    assert result.stderr.strip() == f"chiffonctl: error: {message}"


async def test_a_quiet_run_gets_keepalives_so_a_dead_connection_is_told_from_a_slow_task(
    store: Store,
) -> None:
    await store.upsert_run(a_run())
    stream = follow_run(store, a_run(), poll_seconds=0.01, keepalive_seconds=0.05)
    try:
        assert (await anext(stream)).startswith("event: run\n")
        assert await asyncio.wait_for(anext(stream), WAIT) == KEEPALIVE
    finally:
        await stream.aclose()
