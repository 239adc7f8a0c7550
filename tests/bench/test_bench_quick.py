"""``python -m bench --quick`` end to end, and the gate that makes it fail on a regression.

The end-to-end test runs the whole quick suite (about two minutes on two
CPUs) against the real PostgreSQL and RabbitMQ, as CI does, into a temp dir:
it must exit 0 — no figure unmeasured, no ratio more than twice the committed
baseline's (``bench/baseline-quick.json``), no absolute figure over twice its
goal — and write the results and both plots. The other tests feed the gate
fabricated results to show it does fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import figures
from bench.suite import BASELINE, GROUPS, QUICK, ROOT, exit_status, parse_only, plan, update_docs


def overhead_part(ratio: float, *, disturbed: bool = False) -> dict[str, Any]:
    """What an ``overhead:memory`` part writes (``bench.agent_overhead.measure``'s row), made up."""
    return {
        "part": "overhead:memory",
        "error": None,
        "result": {
            "figure": "orchestration overhead",
            "setup": "in-process bus",
            "measured": ratio,
            "summary": "",
            "target": "",
            "pass": ratio <= 1.10,
            "disturbed": disturbed,
            "details": {
                "pairs": 6,
                "agent_median_s": 1.0 * ratio,
                "bare_median_s": 1.0,
                "pair_ratios": [ratio] * 6,
                "bare_seconds": [1.0] * 6,
                "agent_seconds": [ratio] * 6,
            },
        },
    }


def commit_part(p50: float) -> dict[str, Any]:
    return {
        "part": "commit:embedded",
        "error": None,
        "result": {
            "figure": "commit→RunRequest",
            "setup": "embedded",
            "measured": {"p50_s": p50, "p95_s": p50 * 1.5, "max_s": p50 * 2, "min_s": p50 / 2},
            "summary": "",
            "pass": True,
            "details": {"rounds": 8, "latencies_s": [p50] * 8},
        },
    }


BASELINE_DOC = {"figures": {"overhead.memory": {"ratio": 1.2}}}


def gate(
    parts: dict[str, dict[str, Any]], baseline: dict[str, Any] | None = BASELINE_DOC
) -> list[figures.Check]:
    return figures.checks(figures.build(parts), baseline)


def test_a_ratio_within_twice_the_baseline_passes() -> None:
    found = gate({"overhead:memory": overhead_part(2.3)})
    assert [(check.figure, check.key, check.ok) for check in found] == [("overhead.memory", "ratio", True)]
    assert found[0].limit == pytest.approx(2.4)


def test_a_ratio_more_than_twice_the_baseline_fails() -> None:
    (check,) = gate({"overhead:memory": overhead_part(2.5)})
    assert not check.ok
    assert check.reference == 1.2
    assert "2.08x the baseline" in check.note
    figs = figures.build({"overhead:memory": overhead_part(2.5)})
    assert exit_status(figs, [check], quick=True) == 1


def test_without_a_baseline_value_the_ratio_passes_with_a_note() -> None:
    (check,) = gate({"overhead:memory": overhead_part(50.0)}, baseline=None)
    assert check.ok
    assert check.note == "no baseline"


def test_an_absolute_figure_fails_only_over_twice_its_goal() -> None:
    # Goal p50 ≤ 0.5 s: 0.9 s misses the goal but is not a regression; 1.1 s is.
    (slow,) = gate({"commit:embedded": commit_part(0.9)})[:1]
    assert slow.kind == "limit" and slow.limit == pytest.approx(1.0) and slow.ok
    (slower,) = gate({"commit:embedded": commit_part(1.1)})[:1]
    assert not slower.ok


def test_a_figure_that_was_not_measured_fails() -> None:
    parts = {"overhead:memory": {"part": "overhead:memory", "result": None, "error": "exited with status 1"}}
    figs = figures.build(parts)
    found = figures.checks(figs, BASELINE_DOC)
    assert [check.ok for check in found] == [False]
    assert exit_status(figs, found, quick=True) == 2


def test_resync_writes_must_stay_zero() -> None:
    part = {
        "part": "resync:embedded:1000",
        "count": 1000,
        "error": None,
        "result": {
            "figure": "resync unchanged",
            "setup": "embedded",
            "measured": {
                "intents": 1000,
                "resync_s": 0.05,
                "resync_median_s": 0.05,
                "resync_repeats_s": [0.05] * 5,
                "initial_load_s": 1.0,
                "intent_rows_written": 3,
                "write_transactions": 1,
                "process_peak_rss_mb": 100.0,
            },
            "details": {"initial_load_s": 1.0, "cold_resync_median_s": 0.5},
        },
    }
    found = {check.key: check for check in gate({"resync:embedded:1000": part})}
    assert found["ratio"].ok and found["ratio"].value == pytest.approx(0.1)  # no baseline for it here
    assert not found["intent_rows_written"].ok
    assert found["peak_rss_mb"].ok


def test_the_baseline_keeps_only_the_ratios() -> None:
    parts = {"overhead:memory": overhead_part(1.3), "commit:embedded": commit_part(0.2)}
    kept = figures.baseline_of({"figures": figures.build(parts)})
    assert kept["figures"] == {"overhead.memory": {"ratio": 1.3}}


def test_a_widened_baseline_keeps_the_larger_ratio() -> None:
    old = {"runs": 2, "figures": {"overhead.memory": {"ratio": 1.3}, "bus.batched": {"ratio": 1.1}}}
    new = {"runs": 1, "figures": {"overhead.memory": {"ratio": 1.1}, "bus.batched": {"ratio": 1.2}}}
    both = figures.widened(old, new)
    assert both["runs"] == 3
    assert both["figures"] == {"bus.batched": {"ratio": 1.2}, "overhead.memory": {"ratio": 1.3}}


def test_the_committed_baseline_covers_every_ratio_of_the_quick_run() -> None:
    baseline = json.loads(BASELINE.read_text())["figures"]
    wanted = {"overhead.memory", "bus.batched", "bus.sequential", "catalog.query"}
    wanted |= {f"resync.{setup}" for setup in ("embedded", "distributed")}
    assert wanted <= baseline.keys()
    assert all(value > 0 for ratios in baseline.values() for value in ratios.values())


def test_a_full_run_rewrites_only_the_figures_block(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text("# Performance\n\nintro\n\n<!-- figures -->\nold\n<!-- /figures -->\n\nafter\n")
    parts = {"overhead:memory": overhead_part(1.05), "commit:embedded": commit_part(0.2)}
    document = {
        "generated_at": "2026-01-01T00:00:00+00:00",
        "quick": False,
        "elapsed_s": 600.0,
        "machine": {"load_average_1_5_15": [0.1, 0.2, 0.3], "load_average_1_5_15_at_end": [0.4, 0.5, 0.6]},
        "machine_text": "2 CPU x Test",
        "figures": figures.build(parts),
        "scaling": figures.scaling(parts),
    }
    assert update_docs(document, [tmp_path / "latency.png"], page)
    text = page.read_text()
    assert text.startswith("# Performance\n\nintro\n\n<!-- figures -->\nMeasured 2026-01-01")
    assert "old" not in text and text.endswith("<!-- /figures -->\n\nafter\n")
    assert "| orchestration overhead, embedded (in-process bus) |" in text
    assert "![latency](performance/latency.png)" in text
    assert "load average 0.1/0.2/0.3 at start" in text


def test_only_and_plan() -> None:
    assert parse_only("scaling") == ["resync", "burst"]
    assert set(parse_only(",".join(GROUPS))) == set(GROUPS)
    with pytest.raises(SystemExit):
        parse_only("nope")
    assert sorted(plan(QUICK, ["resync"])) == [
        ("resync:distributed:100",),
        ("resync:distributed:1000",),
        ("resync:embedded:100",),
        ("resync:embedded:1000",),
    ]
    # The catalog and the compiler share one process (one model load).
    assert ("catalog", "compiler") in plan(QUICK)
    assert plan(QUICK, ["compiler"]) == [("compiler",)]
    assert sum(len(unit) for unit in plan(QUICK)) == 13


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_suite_end_to_end(tmp_path: Path) -> None:
    output = tmp_path / "latest-quick.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--no-docs",
            "--output",
            str(output),
            "--plots",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        capture_output=True,
        text=True,
        timeout=560,
        check=False,
    )
    assert done.returncode == 0, (
        f"python -m bench --quick exited {done.returncode}:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    )
    document = json.loads(output.read_text())
    groups = {fig["group"] for fig in document["figures"]}
    assert groups == set(GROUPS)
    assert all(check["ok"] for check in document["gate"]["checks"])
    assert "| figure | measured | anchor | goal | ratio | result |" in done.stdout
    for plot in ("latency.png", "scaling.png"):
        assert (tmp_path / plot).stat().st_size > 10_000
