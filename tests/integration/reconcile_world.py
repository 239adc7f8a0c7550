"""The reconciler's test harness: a real store and planner, a fake clock, fake agents' messages.

Shared by the reconciler and drift scenarios (``test_reconciler.py``, ``test_drift.py``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chiffon.bus import runs_queue
from chiffon.controllers.consumers import HeartbeatConsumer, ResultConsumer
from chiffon.controllers.intent_reconciler import IntentReconciler, intent_key
from chiffon.controllers.planner import Planner
from chiffon.controllers.reconcile import Result, Stalled, Waiting
from chiffon.resources import (
    AgentKind,
    Approval,
    Capacity,
    Decision,
    DeploymentIntent,
    GpuInfo,
    find_condition,
)
from chiffon.resources.messages import (
    AnsibleEvent,
    CancelRun,
    Envelope,
    Heartbeat,
    RunAccepted,
    RunEvent,
    RunRequest,
    RunResult,
    decode_envelope,
    make_envelope,
)
from chiffon.resources.run import HostStats
from chiffon.resources.yamlio import parse_intents
from chiffon.store import SourceRef, Store

ROOT = Path(__file__).resolve().parents[2]
KUMA = "ansible/playbooks/kuma-deployment.yml"
PORTALS = "ansible/playbooks/kuma-config-update.yml"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeDelivery:
    """Our own bus adapter's Delivery, for feeding consumers real envelopes."""

    envelope: Envelope
    redelivered: bool = False
    acked: list[bool] = field(default_factory=list)

    async def ack(self) -> None:
        self.acked.append(True)

    async def reject(self, *, requeue: bool) -> None:
        raise AssertionError("consumers ack what they handled")


def intent_text(
    name: str,
    *,
    approval: str = "Manual",
    steps: tuple[str, ...] = (KUMA,),
    depends: str = "",
    gpu: int = 0,
    port: int = 3001,
) -> str:
    step_lines = "".join(f"    - name: step-{i}\n      playbook: {p}\n" for i, p in enumerate(steps, 1))
    return (
        f"apiVersion: chiffon.dev/v1alpha1\nkind: DeploymentIntent\nmetadata:\n  name: {name}\n"
        f"spec:\n  steps:\n{step_lines}  inventory: ansible/inventory/hosts.yml\n  limit: localhost\n"
        f"  vars: {{kuma_port: {port}}}\n  approval: {approval}\n  resources: {{gpuMemoryMiB: {gpu}}}\n"
        + (f"  dependsOn: [{depends}]\n" if depends else "")
    )


def parse(text: str) -> DeploymentIntent:
    result = parse_intents(text, "test.yaml")
    assert not result.errors, result.errors
    return result.intents[0].intent


@dataclass
class World:
    store: Store
    reconciler: IntentReconciler
    results: ResultConsumer
    heartbeats: HeartbeatConsumer
    clock: Clock
    enqueued: list[str]
    dispatches: list[int]

    async def put(self, text: str, blob: str = "b1") -> DeploymentIntent:
        intent = parse(text)
        await self.store.upsert_intent(
            intent,
            SourceRef("intents", f"{intent.metadata.name}.yaml", blob, "rev-" + blob),
            now=self.clock(),
        )
        return intent

    async def reconcile(self, name: str) -> Result | Exception:
        try:
            return await self.reconciler.reconcile(intent_key(name))
        except (Waiting, Stalled) as stopped:
            return stopped

    async def condition(self, name: str, kind: str) -> tuple[str, str]:
        intent = await self.store.get_intent(name)
        assert intent is not None and intent.status is not None
        found = find_condition(intent.status.conditions, kind)
        assert found is not None, f"{kind} missing from {intent.status.conditions}"
        return found.status.value, found.reason

    async def approve(self, name: str) -> None:
        intent = await self.store.get_intent(name)
        assert intent is not None and intent.status is not None and intent.status.plan is not None
        await self.store.record_approval(
            Approval(
                intent=name,
                digest=intent.status.plan.digest,
                decision=Decision.APPROVED,
                actor="Alice <a@x>",
                created_at=self.clock(),
            )
        )

    async def heartbeat(
        self,
        agent_id: str = "infra-1",
        *,
        kind: AgentKind = AgentKind.INFRA,
        gpu_free: int = 0,
        labels: dict[str, str] | None = None,
    ) -> None:
        gpus = [GpuInfo(index=0, memory_total_mib=24000, memory_free_mib=gpu_free)] if gpu_free else []
        capacity = Capacity(
            cpu_load_percent=5, cpu_cores=8, memory_total_mib=32000, memory_available_mib=16000, gpus=gpus
        )
        beat = Heartbeat(agent_id=agent_id, kind=kind, labels=labels or {}, capacity=capacity)
        await self.heartbeats.handle(FakeDelivery(make_envelope(beat)))

    async def offline(self, agent_id: str = "infra-1") -> None:
        agents = {a.id: a for a in await self.store.list_agents()}
        await self.store.upsert_agent(agents[agent_id].model_copy(update={"online": False}))

    async def outbox_requests(self) -> list[RunRequest]:
        requests = []
        for message in await self.store.pending_outbox(1000):
            payload = decode_envelope(message.body).payload
            if isinstance(payload, CancelRun):
                continue
            assert isinstance(payload, RunRequest)
            assert message.routing_key == runs_queue(payload.agent_id or "")
            requests.append(payload)
        return requests

    async def finish(
        self,
        run_id: str,
        status: str = "successful",
        error: str | None = None,
        *,
        changed: int = 0,
        events: list[AnsibleEvent] | None = None,
    ) -> None:
        """The agent accepts the run, reports ``events`` (if any) and its result on localhost."""
        await self.results.handle(FakeDelivery(make_envelope(RunAccepted(run_id=run_id, agent_id="infra-1"))))
        if events:
            batch = RunEvent(run_id=run_id, agent_id="infra-1", events=events)
            await self.results.handle(FakeDelivery(make_envelope(batch)))
        self.clock.advance(5)
        result = RunResult(
            run_id=run_id,
            agent_id="infra-1",
            status=status,
            rc=0 if status == "successful" else 2,
            stats={"localhost": HostStats(ok=3, changed=changed)},
            duration_seconds=5,
            error=error,
        )
        await self.results.handle(FakeDelivery(make_envelope(result)))


async def make_world(store: Store, tmp_path: Path) -> World:
    """A reconciler on ``store`` with a copy of the example homelab-infra, a fake clock and consumers."""
    infra = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples/homelab-infra", infra)
    clock = Clock()
    enqueued: list[str] = []
    dispatches: list[int] = []
    reconciler = IntentReconciler(
        store,
        Planner(infra, syntax_check=False),
        epoch=lambda: 7,
        on_dispatch=lambda: dispatches.append(1),
        clock=clock,
    )
    return World(
        store,
        reconciler,
        ResultConsumer(store, enqueue=enqueued.append, clock=clock),
        HeartbeatConsumer(store, on_capacity=lambda: enqueued.append("capacity"), clock=clock),
        clock,
        enqueued,
        dispatches,
    )
