"""controllers.liveness.decide, table by table: agents going offline and back, runs lost and claimed.

Each case gives the agents (as the store and the leader's ears know them), the
runs in flight and the time, and wants the changes :func:`decide` returns, in
short form: ``("offline", agent)``, ``("online", agent)``, or
``(run, old status, new status, note contains)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chiffon.controllers.liveness import (
    AgentFacts,
    ChangeRun,
    Decisions,
    LivenessConfig,
    MarkOffline,
    MarkOnline,
    decide,
)
from chiffon.resources import Outcome, Run, RunStatus
from chiffon.settings import Settings

T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
SINCE = T0 - timedelta(hours=1)  # the leader has been listening for an hour
CONFIG = LivenessConfig()  # 15 s heartbeats, offline after 3 missed: 45 s; grace one more deadline


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def agent(agent_id: str = "infra-1", *, seen: float | None = 0, **facts: object) -> AgentFacts:
    """An agent whose last heartbeat was at T0 + ``seen`` s, heard by this leader, online."""
    heard = at(seen) if seen is not None else None
    values: dict[str, object] = {"online": True, "last_seen": heard, "heard_at": heard}
    values.update(facts)
    return AgentFacts(id=agent_id, **values)  # type: ignore[arg-type]


def run(
    run_id: str = "r1",
    status: RunStatus = RunStatus.RUNNING,
    *,
    on: str | None = "infra-1",
    error: str | None = None,
    started: float = -100,
) -> Run:
    return Run(
        id=run_id,
        intent="kuma",
        generation=1,
        plan_digest="d",
        step="deploy",
        step_index=0,
        attempt=1,
        agent_id=on,
        status=status,
        error=error,
        created_at=at(started - 1),
        started_at=at(started) if status is not RunStatus.PENDING else None,
    )


def short(decisions: Decisions) -> list[tuple[object, ...]]:
    found: list[tuple[object, ...]] = []
    for action in decisions.actions:
        if isinstance(action, MarkOffline):
            found.append(("offline", action.agent_id))
        elif isinstance(action, MarkOnline):
            found.append(("online", action.agent_id))
        else:
            found.append((action.run_id, action.expected.value, action.status.value))
    return found


@dataclass
class Case:
    agents: list[AgentFacts]
    runs: list[Run]
    now: float
    want: list[tuple[object, ...]]
    next_check: float | None = None
    unknown_since: dict[str, float] = field(default_factory=dict)
    since: datetime = SINCE
    config: LivenessConfig = CONFIG


CASES = {
    # Agents -----------------------------------------------------------------------------------
    "heartbeating agent stays online": Case([agent()], [], now=44, want=[], next_check=45),
    "silent for exactly the deadline is still online": Case([agent()], [], now=45, want=[], next_check=None),
    "silent past 3 intervals goes offline": Case([agent()], [], now=45.1, want=[("offline", "infra-1")]),
    "the agent's own interval sets the deadline": Case(
        [agent(interval=1.0)], [], now=3.5, want=[("offline", "infra-1")]
    ),
    "a slow agent's own interval too": Case([agent(interval=60.0)], [], now=179, want=[], next_check=180),
    "settings decide for an agent that does not say": Case(
        [agent()],
        [],
        now=10.5,
        want=[("offline", "infra-1")],
        config=LivenessConfig(heartbeat_interval=2, missed_heartbeats=5),
    ),
    "AgentOffline takes it offline at once": Case(
        [agent(offline_at=at(1), offline_reason="clean shutdown")], [], now=1, want=[("offline", "infra-1")]
    ),
    "already declared offline: nothing more": Case(
        [agent(online=False, declared_offline=True)], [], now=300, want=[]
    ),
    "declared offline and heartbeating again: back online": Case(
        [agent(seen=290, online=True, declared_offline=True)],
        [],
        now=300,
        want=[("online", "infra-1")],
        next_check=335,
    ),
    "offline in the store but heard again: back online": Case(
        [agent(seen=290, online=False)], [], now=300, want=[("online", "infra-1")], next_check=335
    ),
    "offline in the store when the leader started, not heard since: stays offline": Case(
        [agent(online=False, heard_at=None, last_seen=at(290), declared_offline=True)], [], now=300, want=[]
    ),
    "offline in the store without a verdict on record: recorded once": Case(
        [agent(online=False, heard_at=None, last_seen=at(290))], [], now=300, want=[("offline", "infra-1")]
    ),
    "a new leader gives every agent one full deadline": Case(
        [agent(seen=None, last_seen=at(-600))], [], now=40, want=[], next_check=45, since=at(0)
    ),
    "... after which a silent agent goes offline": Case(
        [agent(seen=None, last_seen=at(-600))], [], now=45.5, want=[("offline", "infra-1")], since=at(0)
    ),
    # Runs on a silent agent ---------------------------------------------------------------------
    "running on a live agent: nothing": Case([agent(seen=40)], [run()], now=50, want=[], next_check=85),
    "running on a silent agent goes unknown with the agent": Case(
        [agent()], [run()], now=46, want=[("offline", "infra-1"), ("r1", "running", "unknown")]
    ),
    "starting is treated like running": Case(
        [agent(online=False, declared_offline=True)],
        [run(status=RunStatus.STARTING)],
        now=46,
        want=[("r1", "starting", "unknown")],
    ),
    "a clean AgentOffline does not make its runs unknown before the deadline": Case(
        [agent(offline_at=at(1), offline_reason="clean shutdown")],
        [run()],
        now=2,
        want=[("offline", "infra-1")],
        next_check=45,
    ),
    "unknown within the grace: wait": Case(
        [agent(online=False, declared_offline=True)],
        [run(status=RunStatus.UNKNOWN, error="agent infra-1 stopped heartbeating")],
        now=80,
        want=[],
        unknown_since={"r1": 46},
        next_check=91,
    ),
    "unknown past the grace fails": Case(
        [agent(online=False, declared_offline=True)],
        [run(status=RunStatus.UNKNOWN)],
        now=91,
        want=[("r1", "unknown", "failed")],
        unknown_since={"r1": 46},
    ),
    "lost_run_grace overrides one deadline": Case(
        [agent(online=False, declared_offline=True)],
        [run(status=RunStatus.UNKNOWN)],
        now=56,
        want=[("r1", "unknown", "failed")],
        unknown_since={"r1": 46},
        config=LivenessConfig(lost_run_grace=10),
    ),
    "unknown when this leader started: the grace counts from then": Case(
        [agent(online=False, declared_offline=True, seen=None, last_seen=at(-600))],
        [run(status=RunStatus.UNKNOWN)],
        now=40,
        want=[],
        since=at(0),
        next_check=45,
    ),
    # Claims ---------------------------------------------------------------------------------------
    "the agent comes back and claims the run: running again": Case(
        [agent(seen=60, declared_offline=True, claims={"r1": at(60)})],
        [run(status=RunStatus.UNKNOWN, error="agent infra-1 stopped heartbeating")],
        now=61,
        want=[("online", "infra-1"), ("r1", "unknown", "running")],
        unknown_since={"r1": 46},
        next_check=105,
    ),
    "a claim from before the run went unknown does not count": Case(
        [agent(online=False, declared_offline=True, claims={"r1": at(0)})],
        [run(status=RunStatus.UNKNOWN)],
        now=61,
        want=[],
        unknown_since={"r1": 46},
        next_check=91,
    ),
    "back without the run: fails after the grace": Case(
        [agent(seen=90, claims={})],
        [run(status=RunStatus.UNKNOWN)],
        now=91,
        want=[("r1", "unknown", "failed")],
        unknown_since={"r1": 46},
        next_check=135,
    ),
    "an old agent that does not list runs cannot claim": Case(
        [agent(seen=90)],
        [run(status=RunStatus.UNKNOWN)],
        now=91,
        want=[("r1", "unknown", "failed")],
        unknown_since={"r1": 46},
        next_check=135,
    ),
    "heartbeating without listing a running run: unknown after a deadline": Case(
        [agent(seen=200, claims={"r1": at(100)})],
        [run()],
        now=145.5,
        want=[("r1", "running", "unknown")],
        next_check=245,
    ),
    "listed in the heartbeats: fresh": Case(
        [agent(seen=140, claims={"r1": at(140)})], [run()], now=150, want=[], next_check=185
    ),
    "just accepted, not listed yet: the start counts": Case(
        [agent(seen=140, claims={})], [run(started=130)], now=150, want=[], next_check=175
    ),
    # Pending runs and notes -----------------------------------------------------------------------
    "pending on an offline agent gets a note and stays pending": Case(
        [agent(online=False, declared_offline=True)],
        [run(status=RunStatus.PENDING)],
        now=100,
        want=[("r1", "pending", "pending")],
    ),
    "the note is written once": Case(
        [agent(online=False, declared_offline=True)],
        [
            run(
                status=RunStatus.PENDING,
                error="queued for agent infra-1, which is offline (last heartbeat 2026-05-04 10:00:00Z); "
                "it starts when infra-1 comes back",
            )
        ],
        now=100,
        want=[],
    ),
    "the agent is back: the note goes": Case(
        [agent(seen=95)],
        [run(status=RunStatus.PENDING, error="queued for …")],
        now=100,
        want=[("r1", "pending", "pending")],
        next_check=140,
    ),
    "accepted with a stale note: the note goes": Case(
        [agent(seen=95)],
        [run(error="queued for …")],
        now=100,
        want=[("r1", "running", "running")],
        next_check=140,
    ),
    "a run of an agent never seen counts from the leader's start": Case(
        [], [run(on="ghost")], now=46, want=[("r1", "running", "unknown")], since=at(0)
    ),
    "finished runs and runs without an agent are not looked at": Case(
        [agent(seen=95)],
        [run(status=RunStatus.SUCCESSFUL), run("r2", on=None)],
        now=100,
        want=[],
        next_check=140,
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_decide(case: Case) -> None:
    unknown_since = {run_id: at(seconds) for run_id, seconds in case.unknown_since.items()}
    decisions = decide(
        case.agents, case.runs, at(case.now), case.config, since=case.since, unknown_since=unknown_since
    )
    assert short(decisions) == case.want
    want_next = at(case.next_check) if case.next_check is not None else None
    assert decisions.next_check == want_next


def test_messages_say_who_when_and_what() -> None:
    silent = [agent(online=False, declared_offline=True)]
    [unknown] = decide(silent, [run()], at(46), CONFIG, since=SINCE).actions
    assert isinstance(unknown, ChangeRun) and unknown.audit is not None
    assert unknown.error == "agent infra-1 stopped heartbeating (last heartbeat 2026-05-04 10:00:00Z)"
    assert unknown.audit.action == "run.unknown" and unknown.audit.resource == "DeploymentIntent/kuma"

    lost = run(status=RunStatus.UNKNOWN, error=unknown.error)
    [failed] = decide(silent, [lost], at(91), CONFIG, since=SINCE, unknown_since={"r1": at(46)}).actions
    assert isinstance(failed, ChangeRun) and failed.audit is not None
    assert failed.status is RunStatus.FAILED and failed.finished_at == at(91)
    assert failed.error == (
        "agent infra-1 went silent at 2026-05-04 10:00:00Z while running step deploy; no result after 91s"
    )
    assert failed.audit.action == "run.lost" and failed.audit.outcome is Outcome.FAILURE
    assert failed.audit.details["status"] == "failed" and failed.audit.details["run"] == "r1"

    [offline] = decide([agent()], [], at(46), CONFIG, since=SINCE).actions
    assert isinstance(offline, MarkOffline) and offline.seen == at(0)
    assert offline.audit.action == "agent.offline" and offline.audit.resource == "Agent/infra-1"
    assert offline.audit.outcome is Outcome.FAILURE
    assert offline.audit.details["reason"] == (
        "missed 3 heartbeats (every 15s); last heartbeat 2026-05-04 10:00:00Z"
    )
    assert offline.audit.details["last_seen"] == at(0).isoformat()

    clean = agent(offline_at=at(1), offline_reason="clean shutdown")
    [said] = decide([clean], [], at(1), CONFIG, since=SINCE).actions
    assert isinstance(said, MarkOffline) and said.audit.outcome is Outcome.INFO
    assert said.audit.details["reason"] == "said it is going offline: clean shutdown"

    [note] = decide(silent, [run(status=RunStatus.PENDING)], at(100), CONFIG, since=SINCE).actions
    assert isinstance(note, ChangeRun) and note.audit is None
    assert note.error == (
        "queued for agent infra-1, which is offline (last heartbeat 2026-05-04 10:00:00Z); "
        "it starts when infra-1 comes back"
    )


def test_config_comes_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        heartbeat_interval=10,
        missed_heartbeats=4,
        lost_run_grace=30,
        liveness_check_interval=2,
    )
    config = LivenessConfig.from_settings(settings)
    assert config == LivenessConfig(
        heartbeat_interval=10, missed_heartbeats=4, lost_run_grace=30, check_interval=2
    )
    assert config.deadline(None) == timedelta(seconds=40) and config.deadline(1) == timedelta(seconds=4)
    assert config.grace(None) == timedelta(seconds=30)
    assert LivenessConfig().grace(2) == timedelta(seconds=6)
    with pytest.raises(ValueError, match="positive"):
        LivenessConfig(lost_run_grace=0)
