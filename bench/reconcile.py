"""All three reconcile figures, a table, and ``bench/results/reconcile-latest.json``.

    python -m bench.reconcile [--quick] [--setup embedded|distributed|both]

Each setup runs in a child process of its own, one after the other, which
measures, each on a fresh database (a new SQLite file, a new PostgreSQL schema):

1. figure 3 first (``bench.resync``), so the process's peak RSS is that of the
   resync and its initial load, not of the controller session after it;
2. then one leading controller and recording agent, warmed up once, measuring
   figure 1 (``bench.commit_latency``: commit → RunRequest) and then figure 2
   (``bench.burst_dispatch``: a burst of intents in one commit) on it — what
   the separate commands measure, without a second start and warm-up.

Exit status: 0 when every figure met its target, 1 when one missed, 2 when one
could not be measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import burst_dispatch, commit_latency, resync
from bench.common import (
    RESULTS_DIR,
    SETUPS,
    describe_machine,
    exit_status,
    format_row,
    load_average,
    machine,
    now_iso,
    open_setup,
    parser,
    run_children,
    run_figure,
    running_controller,
)

RESULTS_FILE = RESULTS_DIR / "reconcile-latest.json"
HEADER = f"│ {'figure':<18} {'setup':<12} {'measured':<52} {'target':<22} result"


async def session(setup_name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Figure 3, then figures 1 and 2 on one controller (rounds of single commits, then the burst)."""
    figure_args = argparse.Namespace(**{**vars(args), "count": None, "profile": None})
    rows = [await resync.measure(setup_name, figure_args)]
    rounds = commit_latency.QUICK_ROUNDS if args.quick else commit_latency.ROUNDS
    async with open_setup(setup_name) as setup, running_controller(setup) as harness:
        rows.append(await commit_latency.rounds_on(harness, figure_args))
        rows.append(await burst_dispatch.burst_on(harness, figure_args, first=rounds + 1))
    return rows


def main(argv: list[str] | None = None) -> int:
    command = parser(__doc__.splitlines()[0], one_figure=False)
    command.add_argument("--session", action="store_true", help=argparse.SUPPRESS)  # the child of step 1
    command.add_argument("--output", type=Path, default=RESULTS_FILE, help="where to write the results")
    command.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="setups to run at once (default: 2 with --quick, to stay under a minute; 1 otherwise)",
    )
    args = command.parse_args(argv)
    if args.jobs is None:
        args.jobs = 2 if args.quick else 1
    if args.session:
        return _session_child(args)

    info = machine()
    print(f"Chiffon reconcile benchmarks{' (--quick)' if args.quick else ''}, {now_iso()}")
    print(f"machine: {describe_machine(info)}")
    started = time.monotonic()
    setups = SETUPS if args.setup == "both" else (args.setup,)
    if args.jobs > 1:
        print(
            f"note: --jobs {args.jobs}: the setups run at the same time and share the CPUs, which can "
            "inflate the timings; for figures to quote, run with --jobs 1"
        )
    try:
        rows = run_children("reconcile", setups, args, extra=["--session"], jobs=args.jobs)
    except KeyboardInterrupt:
        print("bench: interrupted; nothing written", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    info["load_average_1_5_15_at_end"] = load_average()

    print(HEADER)
    for row in rows:
        print(format_row(row))
    shown: set[tuple[str, str]] = set()
    for row in rows:
        for note in row.get("details", {}).get("notes", []):
            if (row["setup"], note) not in shown:
                shown.add((row["setup"], note))
                print(f"  · {row['setup']} / {row['figure']}: {note}")
    print(f"total {elapsed:.1f}s")

    report = {
        "generated_at": now_iso(),
        "quick": args.quick,
        "machine": info,
        "elapsed_s": round(elapsed, 1),
        "jobs": args.jobs,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.output}")
    return exit_status(rows)


def _session_child(args: argparse.Namespace) -> int:
    """``--session --setup X --json out``: the three figures on one setup, rows to ``out``."""
    run_figure("reconcile", session, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
