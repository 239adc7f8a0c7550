"""Every benchmark in one run: the figures next to their anchors and goals, plots, and the quick gate.

    python -m bench [--quick] [--only NAMES] [--jobs N] [--output FILE] [--plots DIR]
                    [--no-docs] [--baseline FILE] [--write-baseline | --widen-baseline] [-v]

The run is cut into **parts**, each a child process (``python -m bench.suite
--part NAME``) that imports one bench module's measuring function and calls
it — nothing is measured twice and nothing is re-implemented here:

* ``commit:<setup>``: ``bench.commit_latency.measure`` (30 rounds; 8 with ``--quick``);
* ``burst:<setup>:<n>``: ``bench.burst_dispatch.measure``, n = 100, 300, 1,000 (100);
* ``resync:<setup>:<n>``: ``bench.resync.measure`` with 5 resyncs, n = 100, 1,000,
  10,000 (100, 1,000);
* ``overhead:<bus>``: ``bench.agent_overhead.measure``, in-process and RabbitMQ
  (in-process);
* ``heartbeats:<db>``: ``bench.heartbeat_load.measure``, PostgreSQL and SQLite (SQLite);
* ``catalog``: ``bench.catalog.run``, 1,000 playbooks (100);
* ``compiler``: ``bench.compiler.run``, 5 passes (1);
* ``bus``: ``bench.bus_throughput.measure``, 2,000 messages (400).

``<setup>`` is ``embedded`` (SQLite + in-process bus) and ``distributed``
(PostgreSQL + RabbitMQ). A process per part gives each a clean heap (the
resync's RSS is its process's peak) and keeps one crash from ending the run.
A part whose result is missing, or whose broker dropped while it measured
(another suite restarting RabbitMQ), is run once more.

Then :mod:`bench.figures` puts each figure next to its anchor and goal, the
table and the machine are printed, the results written to
``bench/results/latest.json`` (``latest-quick.json`` with ``--quick``), and
:mod:`bench.plots` draws ``latency.png`` and ``scaling.png``: into
``docs/performance/`` after a full run of everything, which also rewrites
the figures block of ``docs/performance.md`` (``--no-docs``: neither);
otherwise into ``bench/results/``.

``--quick`` compares the ratios with ``bench/baseline-quick.json`` (see
:func:`bench.figures.checks`). Exit status: 0 fine; 1 a goal missed (full)
or a gate failed (quick); 2 a figure could not be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import figures as figs  # noqa: E402
from bench.common import (  # noqa: E402
    LOG_WATCH,
    RESULTS_DIR,
    _console_filter,
    _guarded,
    describe_machine,
    load_average,
    machine,
    now_iso,
    sigterm_interrupts,
)

BASELINE = ROOT / "bench" / "baseline-quick.json"
DOCS = ROOT / "docs" / "performance.md"
DOCS_PLOTS = ROOT / "docs" / "performance"
FIGURES_START, FIGURES_END = "<!-- figures -->", "<!-- /figures -->"
SETUPS = ("embedded", "distributed")
GROUPS = ("commit", "burst", "resync", "overhead", "catalog", "bus", "heartbeats", "compiler")
ALIASES = {
    "scaling": ("resync", "burst"),
    "reconcile": ("commit", "burst", "resync"),
    "agents": ("overhead", "heartbeats"),
}


@dataclass(frozen=True)
class Sizes:
    resync: tuple[int, ...]
    burst: tuple[int, ...]
    buses: tuple[str, ...]
    databases: tuple[str, ...]
    playbooks: int
    queries: int
    warm_runs: int
    compiler_passes: int
    resync_repeats: int
    part_timeout: float


FULL = Sizes(
    resync=(100, 1000, 10_000),
    burst=(100, 300, 1000),
    buses=("memory", "amqp"),
    databases=("postgres", "sqlite"),
    playbooks=1000,
    queries=300,
    warm_runs=3,
    compiler_passes=5,
    resync_repeats=5,
    part_timeout=1800,
)
QUICK = Sizes(
    resync=(100, 1000),
    burst=(100,),
    buses=("memory",),
    databases=("sqlite",),
    playbooks=100,
    queries=60,
    warm_runs=1,
    compiler_passes=1,
    resync_repeats=5,
    part_timeout=400,
)

# Rough seconds each part takes with --quick on two busy CPUs: the longest start first.
WEIGHTS = {
    "overhead": 45,
    "catalog": 35,
    "compiler": 25,
    "heartbeats": 20,
    "commit": 13,
    "burst": 12,
    "bus": 12,
}


Unit = tuple[str, ...]  # parts run one after the other in one child process


def plan(sizes: Sizes, only: Sequence[str] = ()) -> list[Unit]:
    """The units to run, longest first.

    The catalog and the compiler share a unit: one model load instead of two,
    and their embedding never competes with itself for the CPUs.
    """
    chosen = set(only or GROUPS)
    parts: list[str] = []
    if "commit" in chosen:
        parts += [f"commit:{setup}" for setup in SETUPS]
    if "burst" in chosen:
        parts += [f"burst:{setup}:{count}" for setup in SETUPS for count in sizes.burst]
    if "resync" in chosen:
        parts += [f"resync:{setup}:{count}" for setup in SETUPS for count in sizes.resync]
    if "overhead" in chosen:
        parts += [f"overhead:{bus}" for bus in sizes.buses]
    if "heartbeats" in chosen:
        parts += [f"heartbeats:{database}" for database in sizes.databases]
    if "bus" in chosen:
        parts.append("bus")
    units: list[Unit] = [(part,) for part in parts]
    language = tuple(name for name in ("catalog", "compiler") if name in chosen)
    if language:
        units.append(language)
    return sorted(units, key=lambda unit: sum(_weight(part) for part in unit), reverse=True)


def _weight(part: str) -> float:
    kind, *params = part.split(":")
    if kind in ("resync", "burst"):
        return 4 + int(params[1]) / 100
    return WEIGHTS.get(kind, 10)


def parse_only(value: str | None) -> list[str]:
    if not value:
        return []
    names: list[str] = []
    for name in (part.strip() for part in value.split(",")):
        if name in ALIASES:
            names += ALIASES[name]
        elif name in GROUPS:
            names.append(name)
        elif name:
            known = ", ".join([*GROUPS, *ALIASES])
            raise SystemExit(f"bench: unknown figure {name!r} for --only; choose from {known}")
    return names


# One part, in a child process ----------------------------------------------------------------------


async def measure_part(name: str, sizes: Sizes, quick: bool) -> Any:
    """Call the measuring function ``name`` stands for; its row(s) or results, as JSON-able data."""
    kind, *params = name.split(":")
    if kind in ("commit", "burst", "resync"):
        from bench import burst_dispatch, commit_latency, resync

        count = int(params[1]) if len(params) > 1 else None
        args = argparse.Namespace(
            quick=quick, count=count, profile=None, verbose=False, repeat=sizes.resync_repeats
        )
        module = {"commit": commit_latency, "burst": burst_dispatch, "resync": resync}[kind]
        return await module.measure(params[0], args)
    if kind == "overhead":
        from bench import agent_overhead

        return await agent_overhead.measure(params[0], quick=quick)
    if kind == "heartbeats":
        from bench import heartbeat_load

        return await heartbeat_load.measure(params[0], quick=quick)
    if kind == "bus":
        from bench import bus_throughput

        return await bus_throughput.measure(quick=quick)
    if kind == "catalog":
        from bench import catalog

        args = argparse.Namespace(playbooks=sizes.playbooks, queries=sizes.queries, warm_runs=sizes.warm_runs)
        return await asyncio.to_thread(catalog.run, args)
    if kind == "compiler":
        from bench import compiler

        results = await compiler.run(argparse.Namespace(data=compiler.DATA, repeat=sizes.compiler_passes))
        results.pop("_first", None)
        return results
    raise ValueError(f"unknown part {name!r}")


def unit_child(names: Sequence[str], out: Path, *, quick: bool, verbose: bool) -> int:
    """Measure each part of a unit in turn; write ``{"parts": {name: {…}}}`` to ``out``."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    root = logging.getLogger()
    if not verbose:
        for handler in root.handlers:
            handler.addFilter(_console_filter)
    root.addHandler(LOG_WATCH)
    sizes = QUICK if quick else FULL

    async def measure_all() -> dict[str, Any]:
        measured: dict[str, Any] = {}
        for name in names:
            started = time.monotonic()
            try:
                result, error = await measure_part(name, sizes, quick), None
            except Exception as exc:  # the next part of the unit still runs
                logging.getLogger("bench").exception("part %s failed", name)
                result, error = None, f"{type(exc).__name__}: {exc}"
            measured[name] = {
                "part": name,
                "result": result,
                "error": error,
                "seconds": round(time.monotonic() - started, 1),
            }
        return measured

    try:
        parts = asyncio.run(_guarded(measure_all()))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"bench: {', '.join(names)} interrupted; cleaned up", file=sys.stderr)
        return 130
    out.write_text(json.dumps({"parts": parts}, default=str) + "\n")
    return 0


# Running the parts ------------------------------------------------------------------------------------


def _needs_rerun(part: dict[str, Any]) -> bool:
    result = part.get("result")
    rows = result if isinstance(result, list) else [result]
    if part.get("error") or result is None:
        return True
    return any(_is_row(row) and (row.get("disturbed") or row.get("measured") is None) for row in rows)


def _is_row(value: Any) -> TypeGuard[dict[str, Any]]:
    """A bench row (``figure``, ``measured``, …), as opposed to the catalog's or compiler's results."""
    return isinstance(value, dict) and "figure" in value


def run_units(
    units: Sequence[Unit], *, quick: bool, jobs: int, timeout: float, verbose: bool
) -> dict[str, Any]:
    """Every unit in a child process, ``jobs`` at a time, once more if a part failed or was disturbed.

    Returns each part's result by part name, in the order of ``units``.
    """
    pending = [(unit, 1) for unit in units]
    running: list[tuple[Unit, int, subprocess.Popen[bytes], Path, Path, float]] = []
    done: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="chiffon-bench-suite-") as scratch, sigterm_interrupts():
        try:
            while pending or running:
                while pending and len(running) < max(1, jobs):
                    unit, attempt = pending.pop(0)
                    stem = "+".join(unit).replace(":", "-") + f"-{attempt}"
                    out, log = Path(scratch) / f"{stem}.json", Path(scratch) / f"{stem}.log"
                    command = [
                        sys.executable,
                        "-m",
                        "bench.suite",
                        "--part",
                        ",".join(unit),
                        "--out",
                        str(out),
                    ]
                    command += [*(["--quick"] if quick else []), *(["--verbose"] if verbose else [])]
                    with log.open("wb") as output:
                        child = subprocess.Popen(
                            command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
                        )
                    running.append((unit, attempt, child, out, log, time.monotonic()))
                time.sleep(0.2)
                for entry in list(running):
                    unit, attempt, child, out, log, started = entry
                    elapsed = time.monotonic() - started
                    timed_out = elapsed >= timeout * len(unit)
                    if child.poll() is None and not timed_out:
                        continue
                    running.remove(entry)
                    if child.poll() is None:
                        _stop(child)
                    parts = _collected(unit, child, out, log, timed_out)
                    troubled = {name: _why(part) for name, part in parts.items() if _needs_rerun(part)}
                    name = "+".join(unit)
                    if troubled and attempt == 1:
                        print(f"· {name}: {'; '.join(troubled.values())}; running it once more", flush=True)
                        pending.append((unit, 2))
                        continue
                    for part in parts.values():
                        part["attempt"] = attempt
                    done.update(parts)
                    outcome = "; ".join(troubled.values()) if troubled else "done"
                    print(f"· {name}: {outcome} in {elapsed:.0f}s", flush=True)
        except KeyboardInterrupt:
            print("\nbench: interrupted; waiting for the running parts to clean up…", file=sys.stderr)
            for _, _, child, *_ in running:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGINT)
            for _, _, child, *_ in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=120)
            raise
        finally:
            for _, _, child, *_ in running:
                if child.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.pid, signal.SIGKILL)
    return {name: done[name] for unit in units for name in unit if name in done}


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Ran past its time: SIGINT (it cleans up), then SIGKILL after a minute."""
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _collected(
    unit: Unit, child: subprocess.Popen[bytes], out: Path, log: Path, timed_out: bool
) -> dict[str, dict[str, Any]]:
    """Each part's result as the child wrote it, or an error saying why there is none."""
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-12:])
    written = json.loads(out.read_text())["parts"] if out.exists() else {}
    why = "ran past its time" if timed_out else f"exited with status {child.returncode}"
    parts: dict[str, dict[str, Any]] = {}
    for name in unit:
        part = written.get(name) or {
            "part": name,
            "result": None,
            "error": f"{why}: {tail.splitlines()[-1] if tail else ''}",
        }
        part["log_tail"] = tail
        kind, *params = name.split(":")
        if kind in ("resync", "burst"):
            part["count"] = int(params[1])
        parts[name] = part
    return parts


def _why(part: dict[str, Any]) -> str:
    if part.get("error"):
        return str(part["error"])
    result = part.get("result")
    rows = result if isinstance(result, list) else [result]
    for row in rows:
        if _is_row(row) and row.get("measured") is None:
            return str(row.get("summary", "not measured"))
    return "the broker dropped while it measured (DISTURBED)"


# The report -------------------------------------------------------------------------------------------


def report_markdown(document: dict[str, Any]) -> str:
    """The figures table, the scaling table and the machine, as Markdown."""
    parts = [
        f"Measured {document['generated_at']} with `python -m bench{' --quick' * document['quick']}` "
        f"in {document['elapsed_s'] / 60:.1f} min on: {document['machine_text']}; "
        f"load average {_load(document['machine'].get('load_average_1_5_15'))} at start, "
        f"{_load(document['machine'].get('load_average_1_5_15_at_end'))} at end.",
        "",
        figs.markdown_table(document["figures"]),
    ]
    scaling = figs.scaling_table(document["scaling"])
    if scaling:
        parts += ["", "Scaling with intent count (seconds):", "", scaling]
    return "\n".join(parts)


def _load(values: Sequence[float] | None) -> str:
    return "/".join(f"{value:g}" for value in values) if values else "?"


def update_docs(document: dict[str, Any], plots: Sequence[Path], path: Path = DOCS) -> bool:
    """Rewrite the block between the figures markers of ``docs/performance.md``; False if none."""
    text = path.read_text()
    start, end = text.find(FIGURES_START), text.find(FIGURES_END)
    if start < 0 or end < start:
        return False
    images = "\n".join(f"![{plot.stem}](performance/{plot.name})" for plot in plots)
    block = f"{FIGURES_START}\n{report_markdown(document)}\n\n{images}\n"
    path.write_text(text[:start] + block + text[end:])
    return True


def main(argv: list[str] | None = None) -> int:
    command = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").splitlines()[0])
    command.add_argument(
        "--quick", action="store_true", help="small sizes; compare the ratios with the baseline"
    )
    command.add_argument("--only", default=None, help=f"comma-separated: {', '.join([*GROUPS, *ALIASES])}")
    command.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="parts at once (default 1; 2 with --quick, to stay near 2 minutes)",
    )
    command.add_argument(
        "--output", type=Path, default=None, help="results JSON (default bench/results/latest*.json)"
    )
    command.add_argument("--plots", type=Path, default=None, help="where the PNGs go (see above)")
    command.add_argument("--no-docs", action="store_true", help="leave docs/ alone")
    command.add_argument("--baseline", type=Path, default=BASELINE, help="the quick gate's baseline")
    command.add_argument("--write-baseline", action="store_true", help="with --quick: rewrite the baseline")
    command.add_argument(
        "--widen-baseline",
        action="store_true",
        help="with --quick: keep, for each ratio, the larger of the baseline's and this run's",
    )
    command.add_argument(
        "-v", "--verbose", action="store_true", help="show the product's logs (in the part logs)"
    )
    command.add_argument("--part", default=None, help=argparse.SUPPRESS)
    command.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = command.parse_args(argv)
    if args.part:
        return unit_child(args.part.split(","), args.out, quick=args.quick, verbose=args.verbose)

    only = parse_only(args.only)
    sizes = QUICK if args.quick else FULL
    jobs = args.jobs or (2 if args.quick else 1)
    units = plan(sizes, only)
    everything = not only
    output = args.output or RESULTS_DIR / ("latest-quick.json" if args.quick else "latest.json")
    to_docs = everything and not args.quick and not args.no_docs
    plots_dir = args.plots or (DOCS_PLOTS if to_docs else RESULTS_DIR)

    info = machine()
    machine_text = describe_machine({**info, "load_average_1_5_15": []})  # the load is shown apart
    print(
        f"Chiffon benchmarks{' (--quick)' * args.quick}, {now_iso()}: {len(units)} processes, {jobs} at once"
    )
    print(f"machine: {machine_text}; load average {_load(info['load_average_1_5_15'])}")
    if jobs > 1:
        print(
            f"note: --jobs {jobs}: the parts share the CPUs; figures to quote come from a full run (--jobs 1)"
        )
    started = time.monotonic()
    try:
        parts = run_units(
            units, quick=args.quick, jobs=jobs, timeout=sizes.part_timeout, verbose=args.verbose
        )
    except KeyboardInterrupt:
        print("bench: interrupted; nothing written", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    info["load_average_1_5_15_at_end"] = load_average()

    document: dict[str, Any] = {
        "generated_at": now_iso(),
        "quick": args.quick,
        "only": only,
        "jobs": jobs,
        "machine": info,
        "machine_text": machine_text,
        "elapsed_s": round(elapsed, 1),
        "figures": figs.build(parts),
        "scaling": figs.scaling(parts),
        "parts": parts,
    }
    gate: list[figs.Check] = []
    if args.quick:
        baseline = json.loads(args.baseline.read_text()) if args.baseline.exists() else None
        gate = figs.checks(document["figures"], baseline)
        document["gate"] = {
            "baseline": str(args.baseline),
            "factor": figs.FACTOR,
            "checks": [check.__dict__ for check in gate],
        }

    print()
    print(report_markdown(document))
    if gate:
        print(
            f"\nQuick gate (ratios vs {_shown(args.baseline)}, fail above {figs.FACTOR:g}x; limits = "
            f"{figs.FACTOR:g}x a goal):\n"
        )
        print(figs.checks_table(gate))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")
    plots = _plots(document, plots_dir)
    print(f"\nwrote {_shown(output)}" + (f", {', '.join(_shown(plot) for plot in plots)}" if plots else ""))
    if to_docs and update_docs(document, plots):
        print(f"updated the figures block of {_shown(DOCS)}")
    if args.write_baseline or args.widen_baseline:
        if not args.quick:
            print("bench: the baseline is of --quick sizes: add --quick", file=sys.stderr)
            return 2
        baseline = figs.baseline_of(document)
        if args.widen_baseline and args.baseline.exists():
            baseline = figs.widened(json.loads(args.baseline.read_text()), baseline)
        args.baseline.write_text(json.dumps(baseline, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote the baseline {_shown(args.baseline)} ({baseline['runs']} run(s))")
        gate = []  # held to the new baseline from the next run on
    failed = [check for check in gate if not check.ok]
    if failed:
        shown = ", ".join(f"{check.figure} {check.key}" for check in failed)
        print(f"QUICK GATE FAILED: {len(failed)} check(s): {shown}")
    print(f"total {elapsed:.0f}s")
    return exit_status(document["figures"], gate, quick=args.quick)


def _plots(document: dict[str, Any], directory: Path) -> list[Path]:
    try:
        from bench.plots import write_plots
    except ImportError as exc:  # matplotlib is in the dev extra
        print(f"bench: no plots ({exc}); pip install -e '.[dev]'", file=sys.stderr)
        return []
    return write_plots(document, directory)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def exit_status(found: Sequence[dict[str, Any]], gate: Sequence[figs.Check], *, quick: bool) -> int:
    """2: a figure was not measured; 1: a gate failed (quick) or a goal was missed (full); else 0."""
    if any(fig["value"] is None for fig in found):
        return 2
    if quick:
        return 0 if all(check.ok for check in gate) else 1
    return 0 if all(fig["pass"] is not False for fig in found) else 1


if __name__ == "__main__":
    sys.exit(main())
