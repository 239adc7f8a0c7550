"""All three reconcile figures, a table, and ``bench/results/reconcile-latest.json``.

    python -m bench.reconcile [--quick] [--setup embedded|distributed|both]

Per setup it starts two child processes, one after the other:

1. a controller session: one leading controller and recording agent, warmed
   up once, measuring figure 1 (commit → RunRequest) and then figure 2 (a
   burst of intents in one commit) on it — what ``python -m
   bench.commit_latency`` and ``python -m bench.burst_dispatch`` measure,
   without paying for a second start and warm-up;
2. ``python -m bench.resync`` — figure 3 in a fresh process, so its RSS is
   its own.

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

from bench import burst_dispatch, commit_latency
from bench.common import (
    RESULTS_DIR,
    SETUPS,
    describe_machine,
    format_row,
    load_average,
    machine,
    now_iso,
    open_setup,
    parser,
    run_child,
    run_figure,
    running_controller,
)

RESULTS_FILE = RESULTS_DIR / "reconcile-latest.json"
HEADER = f"│ {'figure':<18} {'setup':<12} {'measured':<52} {'target':<22} result"


async def controller_session(setup_name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Figures 1 and 2 on one controller: rounds of single commits, then the burst."""
    rounds = commit_latency.QUICK_ROUNDS if args.quick else commit_latency.ROUNDS
    figure_args = argparse.Namespace(**{**vars(args), "count": None})
    async with open_setup(setup_name) as setup, running_controller(setup) as harness:
        latency = await commit_latency.rounds_on(harness, figure_args)
        burst = await burst_dispatch.burst_on(harness, figure_args, first=rounds + 1)
    return [latency, burst]


def main(argv: list[str] | None = None) -> int:
    command = parser(__doc__.splitlines()[0])
    command.add_argument("--session", action="store_true", help=argparse.SUPPRESS)  # the child of step 1
    command.add_argument("--output", type=Path, default=RESULTS_FILE, help="where to write the results")
    args = command.parse_args(argv)
    if args.session:
        return _session_child(args)

    info = machine()
    print(f"Chiffon reconcile benchmarks{' (--quick)' if args.quick else ''}, {now_iso()}")
    print(f"machine: {describe_machine(info)}")
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    setups = SETUPS if args.setup == "both" else (args.setup,)
    try:
        for setup in setups:
            session = argparse.Namespace(**{**vars(args), "count": None})
            rows += run_child("reconcile", setup, session, extra=["--session"])
            rows += run_child("resync", setup, session)
    except KeyboardInterrupt:
        print("bench: interrupted; nothing written", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    info["load_average_1_5_15_at_end"] = load_average()

    print(HEADER)
    for row in rows:
        print(format_row(row))
    for row in rows:
        for note in row.get("details", {}).get("notes", []):
            print(f"  · {row['figure']} / {row['setup']}: {note}")
    print(f"total {elapsed:.1f}s")

    report = {
        "generated_at": now_iso(),
        "quick": args.quick,
        "machine": info,
        "elapsed_s": round(elapsed, 1),
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.output}")
    if any(row["measured"] is None for row in rows):
        return 2
    return 0 if all(row["pass"] for row in rows) else 1


def _session_child(args: argparse.Namespace) -> int:
    """``--session --setup X --json out``: figures 1 and 2 on one controller, rows to ``out``."""
    run_figure("reconcile", controller_session, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
