"""Figure 1: commit → RunRequest at the agent, one Auto intent at a time (target p50 ≤ 0.5 s).

    python -m bench.commit_latency [--quick] [--setup embedded|distributed|both]

A controller leads in process; a recording agent consumes its runs queue. Each
round commits one new intent (``bench-00001`` …) to the local intents repo and
measures from the moment ``GitRepo.commit`` has returned (the commit exists)
to the moment the agent's handler receives that intent's RunRequest. The path
in between is the product's: watchfiles notices the new commit, the git source
syncs, the work queue reconciles (plan → approval → schedule → dispatch into
the outbox), the outbox relay publishes, the bus delivers.

Rounds are spaced: the next commit waits until the previous intent is Ready
(its RunResult consumed and reconciled), then a quiet 0.1 s, so each round
starts from an idle controller. Warm-up intents go first (see
``bench.common.running_controller``) and are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from bench.common import (
    BENCH_AUTHOR,
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

FIGURE = "commit→RunRequest"
TARGET_P50 = 0.5
ROUNDS, QUICK_ROUNDS = 30, 8
QUIET = 0.1


async def measure(setup_name: str, args: argparse.Namespace) -> dict[str, Any]:
    async with open_setup(setup_name) as setup, running_controller(setup) as harness:
        return await rounds_on(harness, args)


async def rounds_on(harness: Harness, args: argparse.Namespace, *, first: int = 1) -> dict[str, Any]:
    """The figure on a running, warmed-up controller; intents ``bench-<first>`` onwards."""
    rounds = args.count or (QUICK_ROUNDS if args.quick else ROUNDS)
    latencies: list[float] = []
    to_ready: list[float] = []
    to_sync: list[float] = []
    with observed() as seen, maybe_profile(args.profile):
        for index in range(first, first + rounds):
            name = intent_name(index)
            syncs_before = len(harness.syncs)
            await harness.repo.commit(intent_files([name]), f"add {name}", BENCH_AUTHOR)
            committed = time.monotonic()
            await harness.agent.wait_for([name], within=30)
            latencies.append(harness.agent.arrivals[name] - committed)
            synced = [at for at, _ in harness.syncs[syncs_before:]]
            if synced:
                to_sync.append(synced[0] - committed)
            await harness.wait_ready([name], within=30)
            to_ready.append(time.monotonic() - committed)
            await asyncio.sleep(QUIET)
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    row = {
        "figure": FIGURE,
        "setup": harness.setup.name,
        "summary": f"p50 {p50:.3f}s p95 {p95:.3f}s max {max(latencies):.3f}s (n={rounds})",
        "target": f"p50 ≤ {TARGET_P50} s",
        "pass": p50 <= TARGET_P50,
        "measured": {"p50_s": p50, "p95_s": p95, "max_s": max(latencies), "min_s": min(latencies)},
        "details": {
            "description": harness.setup.describe(),
            "rounds": rounds,
            "latencies_s": [round(x, 4) for x in latencies],
            "commit_to_sync_done_p50_s": percentile(to_sync, 50),
            "commit_to_ready_p50_s": percentile(to_ready, 50),
            "commit_to_ready_max_s": max(to_ready),
            "warmup_s": harness.warmup_seconds,
            "notes": [
                *harness.warmup_notes(),
                f"rounds spaced: the next commit waits for the previous intent to be Ready, then {QUIET:g} s",
            ],
        },
    }
    return seen.annotate(row)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    return exit_status(run_figure("commit_latency", measure, args))


if __name__ == "__main__":
    sys.exit(main())
