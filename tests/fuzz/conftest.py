"""The fuzz suite's bookkeeping: long-mode timeouts, and the summary of what was tried.

At the end of a session that ran fuzz tests, pytest prints one line per
target (examples, accepted, refused with the documented error, crashes, time)
and, with ``CHIFFON_FUZZ_REPORT=path.json``, writes the same figures there.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz import harness

HERE = Path(__file__).parent
_WALL: dict[str, float] = {}
_FAILED: dict[str, int] = {}


def _target(item: pytest.Item) -> str | None:
    module = getattr(item, "module", None)
    return getattr(module, "FUZZ_TARGET", None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not harness.long_mode():
        return
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.timeout(harness.LONG_TEST_TIMEOUT))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        target = _target(item)
        if target is not None:
            _WALL[target] = _WALL.get(target, 0.0) + time.perf_counter() - started


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and HERE.name in report.nodeid:
        module = report.nodeid.split("::")[0]
        _FAILED[module] = _FAILED.get(module, 0) + 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not harness.TALLIES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fuzzing summary")
    write(f"{'target':<34} {'examples':>9} {'accepted':>9} {'refused':>9} {'crashes':>8} {'seconds':>9}")
    for name, tally in sorted(harness.TALLIES.items()):
        write(
            f"{name:<34} {tally.examples:>9} {tally.accepted:>9} {tally.refused:>9} "
            f"{tally.crashes:>8} {tally.seconds:>9.1f}"
        )
        for note, count in sorted(tally.notes.items()):
            write(f"    {note}: {count}")
    for target, seconds in sorted(_WALL.items()):
        write(f"wall time of the {target} tests: {seconds:.1f} s")
    if _FAILED:
        write(f"failed fuzz tests: {_FAILED}")
    report = os.environ.get(harness.REPORT_ENV)
    if report:
        figures = {
            "examples_env": os.environ.get(harness.EXAMPLES_ENV),
            "api_examples_env": os.environ.get(harness.API_EXAMPLES_ENV),
            "targets": {name: tally.as_dict() for name, tally in sorted(harness.TALLIES.items())},
            "wall_seconds": {name: round(seconds, 1) for name, seconds in sorted(_WALL.items())},
            "failed_tests": _FAILED,
        }
        Path(report).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        write(f"fuzzing figures written to {report}")
