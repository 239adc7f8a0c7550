"""Figure 3: a resync of 10,000 unchanged intents (targets ≤ 2 s, no database writes, RSS ≤ 300 MB).

    python -m bench.resync [--quick] [--setup embedded|distributed|both]

No controller here: a ``GitSource`` on a ``Store``, as the controller's git
source loop has. The intents (``bench-00001`` …) are committed in one commit
and loaded with one ``sync()``; then a second ``sync()`` of the same source,
with nothing changed, is measured:

* **wall time** of that ``sync()``;
* **database writes** three ways: calls of the store's write methods (a thin
  counting proxy between the source and the store), write transactions the
  store opened (``Store._write`` wrapped on this instance), and rows that
  changed (every row's key and ``updated_at``/id in ``resources``,
  ``resource_status``, ``audit_events`` and ``sources``, compared before and
  after). The target is no intent row written; a write of the source's own
  status row (``sources``) is reported apart;
* **memory**: the peak VmRSS sampled during the resync, and the process's peak
  (VmHWM) over its whole life, initial load included — the target is checked
  against the latter. Each setup runs in a process of its own.

For information it also times a *cold* resync: a new ``GitSource`` (an empty
parse cache, as after a controller restart) over the same unchanged store.
``bench.suite`` asks for five resyncs (``args.repeat``) and three cold ones:
the medians, and the ratio of the two, are its figure and anchor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from bench.common import (
    BENCH_AUTHOR,
    GcPauses,
    RssSampler,
    StoreMeter,
    exit_status,
    intent_files,
    intent_name,
    maybe_profile,
    observed,
    open_setup,
    parser,
    proc_status_kib,
    run_figure,
)
from chiffon.controllers.source import GitSource, SourceConfig
from chiffon.gitrepo import GitRepo
from chiffon.store import Store

FIGURE = "resync unchanged"
TARGET_SECONDS = 2.0
TARGET_RSS_MB = 300.0
COUNT, QUICK_COUNT = 10_000, 1_000

# What identifies a row, and what changes whenever it is written.
ROW_KEYS = {
    "resources": "uid, updated_at, generation",
    "resource_status": "uid, updated_at",
    "audit_events": "id, id",
    "sources": "name, updated_at",
}


async def row_versions(store: Store) -> dict[str, dict[str, tuple[Any, ...]]]:
    """Every row's key → (updated_at, …) in the tables a sync may write."""
    versions: dict[str, dict[str, tuple[Any, ...]]] = {}
    async with store.engine.connect() as connection:
        for table, columns in ROW_KEYS.items():
            rows = (await connection.exec_driver_sql(f"SELECT {columns} FROM {table}")).all()
            versions[table] = {str(row[0]): tuple(str(value) for value in row[1:]) for row in rows}
    return versions


def row_changes(
    before: dict[str, dict[str, tuple[Any, ...]]], after: dict[str, dict[str, tuple[Any, ...]]]
) -> dict[str, dict[str, int]]:
    changes = {}
    for table in ROW_KEYS:
        old, new = before[table], after[table]
        changes[table] = {
            "inserted": len(new.keys() - old.keys()),
            "deleted": len(old.keys() - new.keys()),
            "updated": sum(1 for key in old.keys() & new.keys() if old[key] != new[key]),
        }
    return changes


async def timed(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = await work()
    return result, time.perf_counter() - started


async def measure(setup_name: str, args: argparse.Namespace) -> dict[str, Any]:
    count = args.count or (QUICK_COUNT if args.quick else COUNT)
    names = [intent_name(index) for index in range(1, count + 1)]
    async with open_setup(setup_name, with_bus=False) as setup:
        counting = StoreMeter(setup.store)
        repo = await GitRepo.init(setup.tmp / "intents")
        _, commit_s = await timed(
            lambda: repo.commit(intent_files(names), f"add {count} intents", BENCH_AUTHOR)
        )
        config = SourceConfig(str(repo.path), setup.tmp / "checkout")
        source = GitSource(config, cast(Store, counting))  # the proxy stands in for the Store
        load, load_s = await timed(source.sync)
        assert len(load.changed) == count, f"initial load changed {len(load.changed)} of {count}"
        load_writes = counting.write_transactions
        stored = await setup.store.count_rows("resources")

        before = await row_versions(setup.store)
        counting.reset()
        cpu_before = time.process_time()
        with observed() as seen, GcPauses() as gc_pauses, RssSampler() as rss, maybe_profile(args.profile):
            report, resync_s = await timed(source.sync)
        cpu = time.process_time() - cpu_before
        calls, writes, reads = counting.write_calls(), counting.write_transactions, counting.read_transactions
        changes = row_changes(before, await row_versions(setup.store))
        # More resyncs (``args.repeat``, for bench.suite): their median is steadier than one
        # resync of a few milliseconds; the figure above stays the first one.
        repeats = [resync_s]
        for _ in range(max(1, getattr(args, "repeat", 1) or 1) - 1):
            repeats.append((await timed(source.sync))[1])
        hwm_mib = proc_status_kib("VmHWM") / 1024
        hwm_mb = hwm_mib * 1024 * 1024 / 1e6  # the target is in MB (10^6 bytes)
        rss_after_mib = proc_status_kib("VmRSS") / 1024

        cold: dict[str, Any] = {}
        if not args.quick or len(repeats) > 1:
            # With repeats (bench.suite), three: their median is the anchor of the no-op resync.
            counting.reset()
            colds = []
            for _ in range(3 if len(repeats) > 1 else 1):
                cold_report, cold_s = await timed(GitSource(config, cast(Store, counting)).sync)
                colds.append(cold_s)
            cold = {
                "cold_resync_s": round(colds[0], 2),
                "cold_resync_median_s": statistics.median(colds),
                "cold_resyncs_s": [round(x, 4) for x in colds],
                "cold_resync_write_transactions": counting.write_transactions,
                "cold_resync_changed": len(cold_report.changed),
            }

        intent_rows_written = sum(
            sum(changes[table].values()) for table in ("resources", "resource_status", "audit_events")
        )
        passed = resync_s <= TARGET_SECONDS and intent_rows_written == 0 and hwm_mb <= TARGET_RSS_MB
        row = {
            "figure": FIGURE,
            "setup": setup_name,
            "summary": (
                f"{count}: {resync_s:.2f}s, {writes} write tx, {intent_rows_written} intent rows, "
                f"RSS {hwm_mb:.0f} MB"
            ),
            "target": f"≤{TARGET_SECONDS:g}s, 0 rows, ≤{TARGET_RSS_MB:g}MB",
            "pass": passed,
            "measured": {
                "intents": count,
                "resync_s": resync_s,
                "resync_repeats_s": [round(x, 4) for x in repeats],
                "resync_median_s": statistics.median(repeats),
                "initial_load_s": load_s,
                "write_transactions": writes,
                "write_calls": calls,
                "read_transactions": reads,
                "rows_changed": changes,
                "intent_rows_written": intent_rows_written,
                "peak_rss_during_resync_mib": round(rss.peak_kib / 1024, 1),
                "rss_after_mib": round(rss_after_mib, 1),
                "process_peak_rss_mib": round(hwm_mib, 1),
                "process_peak_rss_mb": round(hwm_mb, 1),
                "process_cpu_s": round(cpu, 3),
                "gc_pauses": gc_pauses.summary(),
            },
            "details": {
                "description": setup.describe(),
                "unchanged_reported": report.unchanged,
                "changed_reported": len(report.changed),
                "initial_commit_s": round(commit_s, 2),
                "initial_load_s": round(load_s, 2),
                "initial_load_write_transactions": load_writes,
                "resources_rows": stored,
                **cold,
                "notes": [
                    "intent rows = resources + resource_status + audit_events (the target: none); "
                    f"the source's own status row (sources) changed: {sum(changes['sources'].values())}",
                    "RSS target checked against the process peak (VmHWM, initial load included)",
                    f"initial load (one sync of {count} new intents, not measured against a target): "
                    f"{load_s:.1f}s, {load_writes} write transactions",
                    *([_cold_note(cold)] if cold else []),
                ],
            },
        }
        return seen.annotate(row)


def _cold_note(cold: dict[str, Any]) -> str:
    return (
        f"cold resync (a new GitSource: empty parse cache, as after a restart) {cold['cold_resync_s']:.2f}s, "
        f"{cold['cold_resync_write_transactions']} write tx in {len(cold['cold_resyncs_s'])}: information"
    )


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    return exit_status(run_figure("resync", measure, args))


if __name__ == "__main__":
    sys.exit(main())
