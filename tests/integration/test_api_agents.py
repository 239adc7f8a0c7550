"""The capacity API and ``chiffonctl get|describe agents``, over the real store (SQLite and PostgreSQL).

Agents reach the store the way they do in production — heartbeats through the
bus into the controller's heartbeat consumer — or, for a fixed lab of five
machines, as the rows that consumer writes. The CLI tests run the real
``chiffonctl`` against the API on a real socket.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from chiffon.api.agentview import AgentFilters, parse_label_selector, parse_mebibytes, select_agents
from chiffon.api.app import create_app
from chiffon.api.context import ServerContext
from chiffon.bus import HEARTBEATS_QUEUE
from chiffon.bus.memory import InProcessBus
from chiffon.controllers.consumers import HeartbeatConsumer
from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.resources import Agent, AgentKind, Capacity, GpuInfo
from chiffon.resources.messages import AgentOffline, Heartbeat, make_envelope
from chiffon.settings import Settings
from chiffon.store import Store
from tests.integration.live import chiffonctl, serve
from tests.integration.test_api import make_client

NOW = datetime.now(UTC)
UNREACHABLE = "http://127.0.0.1:9"


def capacity(*free_vram_mib: int, load: float = 10, busy: str | None = None) -> Capacity:
    """8 cores, 16 of 32 GiB memory free, one 24 GiB GPU per free figure given."""
    gpus = [
        GpuInfo(index=i, name="RTX 4090", memory_total_mib=24576, memory_free_mib=free)
        for i, free in enumerate(free_vram_mib)
    ]
    return Capacity(
        cpu_load_percent=load,
        cpu_cores=8,
        memory_total_mib=32768,
        memory_available_mib=16384,
        gpus=gpus,
        busy=busy is not None,
        busy_reason=busy,
    )


def agent(agent_id: str, kind: AgentKind, cap: Capacity, *, seen_ago: float = 5, **labels: str) -> Agent:
    return Agent(
        id=agent_id,
        kind=kind,
        labels=labels,
        online=True,  # as reported; whether it still is depends on when it was last seen
        last_seen=NOW - timedelta(seconds=seen_ago),
        capacity=cap,
        version="0.1.0",
    )


LAB = [
    agent("infra-1", AgentKind.INFRA, capacity(load=12), role="infra"),
    agent("desk-big", AgentKind.DESKTOP, capacity(20480, 2048), role="desktop", gpu="nvidia"),
    agent("desk-small", AgentKind.DESKTOP, capacity(6144), role="desktop"),
    agent("desk-gaming", AgentKind.DESKTOP, capacity(12288, busy="steam"), role="desktop"),
    # Said it was online, then went silent five minutes ago (killed, unplugged).
    agent("desk-gone", AgentKind.DESKTOP, capacity(16384), seen_ago=300, role="desktop"),
]


def ids(agents: list[Agent] | list[dict[str, object]]) -> list[str]:
    return sorted(a.id if isinstance(a, Agent) else str(a["id"]) for a in agents)


# Pure: quantities, selectors and filters ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mebibytes"),
    [
        ("8Gi", 8192),
        ("8GiB", 8192),
        ("512Mi", 512),
        ("2048", 2048),
        ("1.5Gi", 1536),
        ("0.1Mi", 1),
        ("1Ti", 1048576),
    ],
)
def test_quantities(text: str, mebibytes: int) -> None:
    assert parse_mebibytes(text) == mebibytes


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("8 apples", "unit 'apples'"),
        ("8G", "binary units"),
        ("-1Gi", "not a memory size"),
        ("", "not a memory size"),
        ("99999Ti", "more than"),
    ],
)
def test_bad_quantities_say_how_to_write_one(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_mebibytes(text)


def test_label_selectors() -> None:
    assert parse_label_selector("role=desktop, gpu=nvidia") == {"role": "desktop", "gpu": "nvidia"}
    with pytest.raises(ValueError, match="'role' must look like key=value"):
        parse_label_selector("role")


@pytest.mark.parametrize(
    ("filters", "want"),
    [
        (AgentFilters(), ["desk-big", "desk-gaming", "desk-gone", "desk-small", "infra-1"]),
        (AgentFilters(online=True), ["desk-big", "desk-gaming", "desk-small", "infra-1"]),
        (AgentFilters(online=False), ["desk-gone"]),
        (AgentFilters(kind=AgentKind.INFRA), ["infra-1"]),
        (AgentFilters(busy=True), ["desk-gaming"]),
        (AgentFilters(min_free_vram_mib=8192), ["desk-big", "desk-gaming", "desk-gone"]),
        (AgentFilters(min_free_vram_mib=16384), ["desk-big", "desk-gone"]),
        (AgentFilters(min_free_vram_mib=8192, online=True, busy=False), ["desk-big"]),
        (AgentFilters(selector={"role": "desktop", "gpu": "nvidia"}), ["desk-big"]),
        (AgentFilters(selector={"role": "nope"}), []),
    ],
)
def test_filters(filters: AgentFilters, want: list[str]) -> None:
    assert ids(select_agents(LAB, filters, NOW)) == want


def test_silent_agents_are_shown_offline_by_the_schedulers_deadline() -> None:
    shown = {a.id: a.online for a in select_agents(LAB, AgentFilters(), NOW)}
    assert shown["desk-gone"] is False and shown["desk-big"] is True
    barely = agent("barely", AgentKind.DESKTOP, capacity(), seen_ago=89)
    late = agent("late", AgentKind.DESKTOP, capacity(), seen_ago=91)
    assert [a.online for a in select_agents([barely, late], AgentFilters(), NOW)] == [True, False]


# The API -------------------------------------------------------------------------------------


@pytest.fixture
async def lab(store: Store) -> list[Agent]:
    """LAB, seen as recently as it says, counted from now: the API judges online by the real clock,
    and a suite may run these tests minutes after this module was imported."""
    shift = datetime.now(UTC) - NOW
    members = [a.model_copy(update={"last_seen": a.last_seen + shift}) for a in LAB if a.last_seen]
    for member in members:
        await store.upsert_agent(member)
    return members


@pytest.fixture
async def api(source, store: Store, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with make_client(source, store, tmp_path) as client:
        yield client


async def test_list_shows_capacity_and_whether_each_agent_is_heartbeating(api, lab) -> None:
    response = await api.get("/api/v1/agents")
    assert response.status_code == 200, response.text
    items = {item["id"]: item for item in response.json()["items"]}
    assert list(items) == sorted(items)
    big = items["desk-big"]
    assert big["kind"] == "desktop" and big["labels"] == {"role": "desktop", "gpu": "nvidia"}
    assert big["online"] is True and big["lastSeen"].startswith(datetime.now(UTC).date().isoformat())
    assert big["capacity"]["cpuCores"] == 8 and big["capacity"]["cpuLoadPercent"] == 10
    assert [g["memoryFreeMib"] for g in big["capacity"]["gpus"]] == [20480, 2048]
    assert items["desk-gone"]["online"] is False  # its row still says online


@pytest.mark.parametrize(
    ("params", "want"),
    [
        ({"online": "true", "minFreeVram": "8Gi", "busy": "false"}, ["desk-big"]),
        ({"minFreeVram": "16384"}, ["desk-big", "desk-gone"]),
        ({"labelSelector": "role=desktop", "online": "false"}, ["desk-gone"]),
        ({"kind": "infra"}, ["infra-1"]),
    ],
)
async def test_filters_for_free_capacity(api, lab, params: dict[str, str], want: list[str]) -> None:
    response = await api.get("/api/v1/agents", params=params)
    assert response.status_code == 200, response.text
    assert ids(response.json()["items"]) == want


async def test_bad_filters_get_422_naming_the_parameter(api, lab) -> None:
    cases = [
        ({"minFreeVram": "8 apples"}, "minFreeVram: '8 apples'"),
        ({"minFreeVram": "8G"}, "minFreeVram: '8G': unit 'G' is not one of Mi, Gi, Ti"),
        ({"labelSelector": "role"}, "labelSelector: 'role' must look like key=value"),
        ({"online": "maybe"}, '"online"'),
        ({"kind": "gpu"}, '"kind"'),
    ]
    for params, says in cases:
        response = await api.get("/api/v1/agents", params=params)
        assert response.status_code == 422, (params, response.text)
        assert says in response.text, (params, response.text)


async def test_capacity_of_one_agent(api, lab) -> None:
    body = (await api.get("/api/v1/agents/desk-big/capacity")).json()
    assert set(body) == {"id", "online", "lastSeen", "capacity"}
    assert body["id"] == "desk-big" and body["online"] is True
    assert body["capacity"]["gpus"][0]["memoryFreeMib"] == 20480
    assert body["capacity"]["memoryAvailableMib"] == 16384
    gone = (await api.get("/api/v1/agents/desk-gone/capacity")).json()
    assert gone["online"] is False and gone["capacity"]["gpus"][0]["memoryFreeMib"] == 16384
    assert (await api.get("/api/v1/agents/desk-gaming")).json()["capacity"]["busyReason"] == "steam"


async def test_unknown_agent_is_404_with_a_reason(api, lab) -> None:
    for path in ("/api/v1/agents/nope", "/api/v1/agents/nope/capacity"):
        response = await api.get(path)
        assert response.status_code == 404
        assert response.json()["detail"] == "agent nope not found: no heartbeat from it was ever received"


async def test_heartbeats_through_the_bus_are_what_the_api_shows(api, store: Store) -> None:
    bus = InProcessBus(prefix=f"t{uuid.uuid4().hex[:8]}.")
    await bus.connect()
    consumer = HeartbeatConsumer(store, on_capacity=lambda: None)
    await bus.consume(HEARTBEATS_QUEUE, consumer.handle)

    async def publish_then_read(message: Heartbeat | AgentOffline, previous: object) -> dict[str, Any]:
        """Publish ``message``; the capacity the API answers with once it has changed."""
        await bus.publish(HEARTBEATS_QUEUE, make_envelope(message))
        for _ in range(200):
            response = await api.get("/api/v1/agents/desk-new/capacity")
            if response.status_code == 200 and response.json() != previous:
                return dict(response.json())
            await asyncio.sleep(0.02)
        raise AssertionError(f"the API never showed {message!r}")

    try:
        beat = Heartbeat(
            agent_id="desk-new", kind=AgentKind.DESKTOP, labels={"role": "desktop"}, capacity=capacity(8192)
        )
        seen = await publish_then_read(beat, None)
        assert seen["online"] is True and seen["capacity"]["gpus"][0]["memoryFreeMib"] == 8192

        seen = await publish_then_read(beat.model_copy(update={"capacity": capacity(1024, load=80)}), seen)
        assert seen["capacity"]["cpuLoadPercent"] == 80
        listed = (await api.get("/api/v1/agents", params={"minFreeVram": "2Gi"})).json()["items"]
        assert listed == []

        seen = await publish_then_read(AgentOffline(agent_id="desk-new"), seen)
        assert seen["online"] is False
    finally:
        await bus.close()


# chiffonctl ------------------------------------------------------------------------------------


@pytest.fixture
async def server(source, store: Store, lab, tmp_path: Path) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    context = ServerContext(Settings(home=tmp_path), store, source, IntentsWriter(source))
    async with serve(create_app(context)) as url:
        yield url


async def test_get_agents_table_and_wide(server: str) -> None:
    table = await chiffonctl(server, "get", "agents")
    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "ONLINE", "LAST-SEEN", "LOAD", "FREE-VRAM"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["desk-big"][1:3] == ["desktop", "True"] and rows["desk-big"][4:] == ["10%", "20.0Gi"]
    assert rows["desk-gone"][2:4] == ["False", "5m"]
    assert rows["infra-1"][4:] == ["12%", "-"]

    wide = await chiffonctl(server, "get", "agents", "-o", "wide")
    header, *rest = wide.stdout.splitlines()
    assert header.split()[6:] == ["CORES", "MEMORY", "GPUS", "BUSY", "LABELS"]
    big = next(line for line in rest if line.startswith("desk-big"))
    assert (
        "16.0Gi/32.0Gi" in big
        and "0:20.0Gi/24.0Gi, 1:2.0Gi/24.0Gi" in big
        and "gpu=nvidia,role=desktop" in big
    )
    assert "yes (steam)" in next(line for line in rest if line.startswith("desk-gaming"))


async def test_get_agents_filters_and_machine_readable_output(server: str) -> None:
    free = await chiffonctl(
        server,
        "get",
        "agents",
        "--online",
        "--not-busy",
        "--min-free-vram",
        "8Gi",
        "-l",
        "role=desktop",
        "-o",
        "name",
    )
    assert (free.code, free.stdout) == (0, "agent/desk-big\n"), free.stderr
    offline = await chiffonctl(server, "get", "agents", "--offline", "-o", "json")
    data = json.loads(offline.stdout)
    assert data["kind"] == "List" and [item["id"] for item in data["items"]] == ["desk-gone"]
    one = await chiffonctl(server, "get", "agent", "desk-small", "-o", "yaml")
    assert one.code == 0 and "id: desk-small" in one.stdout and "memoryFreeMib: 6144" in one.stdout
    none = await chiffonctl(server, "get", "agents", "--kind", "infra", "--min-free-vram", "1Gi")
    assert none.code == 0 and none.stdout == "" and "No agents found." in none.stderr


async def test_describe_agent(server: str) -> None:
    big = await chiffonctl(server, "describe", "agent", "desk-big")
    assert big.code == 0, big.stderr
    assert "Online:      True (last heartbeat" in big.stdout
    assert "CPU:         8 cores, 10% load" in big.stdout
    assert "Memory:      16.0Gi free of 32.0Gi" in big.stdout
    assert "  0      20.0Gi    24.0Gi    -     RTX 4090" in big.stdout
    gone = await chiffonctl(server, "describe", "agent", "desk-gone")
    assert "Online:      False (last heartbeat 5m ago" in gone.stdout and "offline after 90s" in gone.stdout


async def test_unknown_agent_exits_1(server: str) -> None:
    for args in (("get", "agent", "nope"), ("describe", "agent", "nope")):
        result = await chiffonctl(server, *args)
        assert (result.code, result.stdout) == (1, "")
        assert result.stderr.strip() == "chiffonctl: error: agent/nope not found"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (
            ["--min-free-vram", "8 apples"],
            "--min-free-vram: '8 apples': unit 'apples' is not one of Mi, Gi, Ti",
        ),
        (["--min-free-vram", "8GB"], "--min-free-vram: '8GB': unit 'GB'"),
        (["-l", "role"], "--selector: 'role' must look like key=value"),
    ],
)
async def test_bad_flags_fail_before_contacting_the_server(flags: list[str], says: str) -> None:
    result = await chiffonctl(UNREACHABLE, "get", "agents", *flags)
    assert result.code == 1 and says in result.stderr and "cannot reach" not in result.stderr
