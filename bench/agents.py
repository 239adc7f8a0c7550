"""The agent figures (issue 4, "Agents"), a table, and ``bench/results/agents-latest.json``.

    python -m bench.agents [--quick] [--bus memory|amqp|both] [--db postgres|sqlite|both]
                           [--figures overhead,idle,heartbeats] [--output FILE] [-v]

1. ``orchestration overhead`` (:mod:`bench.agent_overhead`): RunRequest
   published → RunResult received for a no-op playbook on localhost, over
   bare ``ansible-playbook`` on the same playbook, alternated in one run;
   target ≤ 1.10. On the in-process bus by default; ``--bus amqp|both`` for
   RabbitMQ.
2. ``desktop agent idle`` (:mod:`bench.agent_idle`): a real ``chiffon agent
   desktop`` process on RabbitMQ, heartbeating every second and every 15 s
   (the default); its CPU (% of one core) and RSS; targets ≤ 1 % and ≤ 60 MB.
   It idles while the other figures are measured (its CPU time is its own).
3. ``1,000 agents' heartbeats`` (:mod:`bench.heartbeat_load`): a real
   ``chiffon controller`` process fed 100 heartbeats a second from 1,000
   agent ids; its CPU and whether it keeps up; target ≤ 20 % of one core. On
   PostgreSQL and SQLite (``--db``; ``--quick``: SQLite only).

Every figure is printed next to its target, PASS or MISSED (FAILED: it could
not be measured). Exit status: 0 every target met, 1 one missed, 2 one could
not be measured. ``--quick`` (a CI smoke run, under ~40 s) uses fewer pairs
and shorter windows; its figures are noisier.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench import agent_idle, agent_overhead, heartbeat_load
from bench.agent_support import HEADER, format_row
from bench.common import (
    LOG_WATCH,
    RESULTS_DIR,
    _console_filter,
    describe_machine,
    exit_status,
    load_average,
    machine,
    now_iso,
)

RESULTS_FILE = RESULTS_DIR / "agents-latest.json"
FIGURES = ("overhead", "idle", "heartbeats")


def parse(argv: list[str] | None) -> argparse.Namespace:
    command = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    command.add_argument("--quick", action="store_true", help="fewer pairs, shorter windows (under ~40 s)")
    command.add_argument(
        "--bus", choices=["memory", "amqp", "both"], default="memory", help="bus(es) for the overhead figure"
    )
    command.add_argument(
        "--db",
        choices=["postgres", "sqlite", "both"],
        default=None,
        help="database(s) for the heartbeat figure (default: both; sqlite with --quick)",
    )
    command.add_argument(
        "--figures",
        default=",".join(FIGURES),
        help=f"comma-separated subset of {', '.join(FIGURES)} (default: all)",
    )
    command.add_argument("--pairs", type=int, default=None, help="override the overhead figure's pairs")
    command.add_argument("--window", type=float, default=None, help="override the heartbeat window (s)")
    command.add_argument("--idle-window", type=float, default=None, help="override the idle window (s)")
    command.add_argument("--output", type=Path, default=RESULTS_FILE, help="where to write the results")
    command.add_argument("-v", "--verbose", action="store_true", help="show the product's logs")
    args = command.parse_args(argv)
    args.figures = [name.strip() for name in args.figures.split(",") if name.strip()]
    unknown = set(args.figures) - set(FIGURES)
    if unknown:
        command.error(f"unknown figure(s) {', '.join(sorted(unknown))}; choose from {', '.join(FIGURES)}")
    if args.db is None:
        args.db = "sqlite" if args.quick else "both"
    return args


def chosen(value: str, options: tuple[str, ...]) -> list[str]:
    return list(options) if value == "both" else [value]


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    idle = None
    if "idle" in args.figures:
        idle = agent_idle.IdleRun(quick=args.quick, window=args.idle_window)
        print(f"· idle: starting two desktop agents ({idle.window:g}s window, beside the other figures)")
        await idle.start()
    try:
        if "overhead" in args.figures:
            for bus in chosen(args.bus, ("memory", "amqp")):
                print(f"· overhead: {agent_overhead.BUS_NAMES[bus]} …", flush=True)
                rows.append(await agent_overhead.measure(bus, quick=args.quick, pairs=args.pairs))
                print(format_row(rows[-1]), flush=True)
        if "heartbeats" in args.figures:
            for database in chosen(args.db, ("postgres", "sqlite")):
                print(f"· heartbeats: {heartbeat_load.DATABASES[database]} …", flush=True)
                rows.append(await heartbeat_load.measure(database, quick=args.quick, window=args.window))
                print(format_row(rows[-1]), flush=True)
    finally:
        if idle is not None:
            print("· idle: finishing the window …", flush=True)
            rows.extend(await idle.finish())
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    root = logging.getLogger()
    if not args.verbose:
        for handler in root.handlers:
            handler.addFilter(_console_filter)
    root.addHandler(LOG_WATCH)

    info = machine()
    print(f"Chiffon agent benchmarks{' (--quick)' if args.quick else ''}, {now_iso()}")
    print(f"machine: {describe_machine(info)}")
    started = time.monotonic()
    try:
        rows = asyncio.run(run(args))
    except KeyboardInterrupt:
        print("bench: interrupted; nothing written", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    info["load_average_1_5_15_at_end"] = load_average()

    print(HEADER)
    for result in rows:
        print(format_row(result))
    for result in rows:
        for note in result.get("details", {}).get("notes", [])[1:]:
            print(f"  · {result['figure']} / {result['setup']}: {note}")
    print(f"total {elapsed:.1f}s")

    report = {
        "generated_at": now_iso(),
        "quick": args.quick,
        "machine": info,
        "elapsed_s": round(elapsed, 1),
        "arguments": {"bus": args.bus, "db": args.db, "figures": args.figures},
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.output}")
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
