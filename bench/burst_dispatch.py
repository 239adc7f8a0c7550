"""Figure 2: 1,000 Auto intents in one commit → every RunRequest at the agent (target ≤ 5 s distributed).

    python -m bench.burst_dispatch [--quick] [--setup embedded|distributed|both]

After the warm-up, the intent files ``bench-00001.yaml`` … are written and
committed at once (one ``GitRepo.commit``). From the moment that call has
returned it measures: the git source's sync done (all intents upserted), and
the first and the last RunRequest received by the agent — which, as the
issue defines the figure, is a consumer acking requests and nothing more
(on the distributed setup a process of its own). Once all have arrived the
agent answers every one (RunAccepted, RunResult) and the time from then to
every intent Ready is reported too. The target is for dispatch (last
RunRequest) on the distributed setup; the embedded setup and the time to
Ready are reported for information.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench.common import (
    BENCH_AUTHOR,
    GcPauses,
    Harness,
    exit_status,
    intent_files,
    intent_name,
    maybe_profile,
    observed,
    open_setup,
    parser,
    percentile,
    run_figure,
    running_controller,
)
from chiffon.resources import ConditionType, DeploymentIntent, is_condition_true

FIGURE = "burst dispatch"
TARGET_SECONDS = 5.0
COUNT, QUICK_COUNT = 1000, 100


async def measure(setup_name: str, args: argparse.Namespace) -> dict[str, Any]:
    async with open_setup(setup_name) as setup, running_controller(setup) as harness:
        return await burst_on(harness, args)


async def burst_on(harness: Harness, args: argparse.Namespace, *, first: int = 1) -> dict[str, Any]:
    """The figure on a running, warmed-up controller; intents ``bench-<first>`` onwards."""
    count = args.count or (QUICK_COUNT if args.quick else COUNT)
    names = [intent_name(index) for index in range(first, first + count)]
    files = intent_files(names)
    # Generous limits: the figure is what it is, the run only has to end.
    within = max(120.0, count * 1.0)
    notes: list[str] = []
    passes_before = harness.passes
    harness.meter.reset()
    cpu_before = time.process_time()
    dispatched: float | None = None
    ready: float | None = None
    released = time.monotonic()
    with observed() as seen, GcPauses() as gc_pauses, maybe_profile(args.profile):
        syncs_before = len(harness.syncs)
        # The figure's consumer only acks requests; the answers come once all have arrived.
        await harness.agent.hold()
        await harness.repo.commit(files, f"add {count} intents", BENCH_AUTHOR)
        committed = time.monotonic()
        try:
            await harness.agent.wait_for(names, within=within)
            dispatched = max(harness.agent.arrivals[name] for name in names) - committed
        except TimeoutError:
            notes.append(f"gave up waiting for RunRequests after {within:g}s")
        finally:
            await harness.agent.release()
            released = time.monotonic()
        if dispatched is not None:
            try:
                await harness.wait_ready(names, within=within)
                ready = time.monotonic() - released
            except TimeoutError:
                notes.append(f"gave up waiting for every intent to be Ready after {within:g}s")
    cpu = time.process_time() - cpu_before
    store_use = harness.meter.snapshot()
    passes = harness.passes - passes_before
    received = harness.agent.arrivals
    arrivals = sorted(received[name] - committed for name in names if name in received)
    synced = [(at - committed, changed) for at, changed in harness.syncs[syncs_before:]]
    wanted = set(names)
    stored = await harness.setup.store.list_intents()
    ready_in_store = sum(1 for intent in stored if intent.metadata.name in wanted and _ready(intent))
    distributed = harness.setup.name == "distributed"
    shown_ready = f"{ready:.2f}s" if ready is not None else f"not within {within:g}s ({ready_in_store} Ready)"
    summary = (
        f"{count} RunRequests {dispatched:.2f}s; answered → all Ready {shown_ready}"
        if dispatched is not None
        else f"{len(arrivals)} of {count} RunRequests in {within:g}s"
    )
    row = {
        "figure": FIGURE,
        "setup": harness.setup.name,
        "summary": summary,
        "target": f"dispatch ≤ {TARGET_SECONDS:g} s" if distributed else "(information)",
        "pass": (dispatched is not None and dispatched <= TARGET_SECONDS) if distributed else True,
        "measured": {
            "intents": count,
            "dispatch_all_s": dispatched,
            "all_ready_s": ready,
            "sync_done_s": synced[0][0] if synced else None,
            "requests_at_percent_s": {
                str(q): round(percentile(arrivals, q), 3) for q in (0, 10, 50, 90, 100) if arrivals
            },
            "dispatch_rate_per_s": count / dispatched if dispatched else None,
        },
        "details": {
            "description": harness.setup.describe(),
            "syncs_after_commit": [(round(at, 3), changed) for at, changed in synced],
            "ready_in_store": ready_in_store,
            "requests_received": len(harness.agent.received),
            "duplicate_executions": len(harness.agent.duplicates()),
            "reconcile_passes": passes,
            "store_use": store_use,
            "store_transactions_per_intent": round(
                (store_use["write_transactions"] + store_use["read_transactions"]) / count, 1
            ),
            "process_cpu_s": round(cpu, 2),
            "gc_pauses": gc_pauses.summary(),
            "warmup_s": harness.warmup_seconds,
            "notes": [
                *harness.warmup_notes(),
                "one commit of all files; times from the commit call's return",
                f"process CPU {cpu:.1f}s while measured; {passes} reconcile passes; "
                f"{store_use['write_transactions']} write + {store_use['read_transactions']} read "
                "store transactions",
                *notes,
            ],
        },
    }
    return seen.annotate(row)


def _ready(intent: DeploymentIntent) -> bool:
    return bool(is_condition_true(intent.status.conditions if intent.status else [], ConditionType.READY))


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    return exit_status(run_figure("burst_dispatch", measure, args))


if __name__ == "__main__":
    sys.exit(main())
