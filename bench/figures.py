"""The suite's figures: each measurement next to its anchor and goal, the table, and the quick gate.

Pure functions over the results the parts of :mod:`bench.suite` wrote (no I/O,
no measuring), so they are tested with fabricated results.

A **figure** is a dictionary::

    {"id": "overhead.memory", "title": …, "group": "overhead",
     "value": 1.07, "unit": "x", "measured": "1.07x (agent 1.21 s / bare 1.13 s, 15 pairs)",
     "anchor": "bare ansible-playbook, same run (measured)",
     "goal": "≤ 1.10x", "ratio": 1.07, "ratio_text": "1.07x bare",
     "pass": True, "disturbed": False,
     "gates": [{"key": "ratio", "kind": "baseline", "value": 1.07}], "details": {…}}

``pass`` says whether the goal is met (None: information only, no goal).

**Gates** are what ``--quick`` checks, every one "lower is better":

* ``baseline``: a ratio of Chiffon to an anchor measured *in the same run*
  (over bare ansible-playbook, over raw aio-pika, a no-op resync over a cold
  one, a catalog query over the embedding model alone). Both sides slow down alike on a slow
  or busy machine, so the ratio travels: it fails when it is more than
  :data:`FACTOR` times the one in the committed baseline
  (``bench/baseline-quick.json``);
* ``limit``: an absolute figure (a latency, a CPU share, rows written), which
  depends on the machine: it fails only when it is over ``limit``, which is
  :data:`FACTOR` times a generous goal (zero stays zero).

A figure that could not be measured fails the gate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FACTOR = 2.0
ARGO_POLL_S = 180.0
ARGO_ANCHOR = "Argo CD's default poll, 180 s (its documented default; not measured)"

GOALS = {
    "commit_p50_s": 0.5,
    "burst_s": 5.0,
    "resync_s": 2.0,
    "resync_rss_mb": 300.0,
    "overhead_ratio": 1.10,
    "catalog_query_p50_ms": 25.0,
    "catalog_cold_s": 90.0,
    "catalog_warm_s": 2.0,
    "bus_ratio": 1.25,
    "heartbeat_cpu_percent": 20.0,
    "compiler_p50_ms": 100.0,
    "compiler_accuracy": 0.95,
}

Part = Mapping[str, Any]  # what one part of the suite wrote: {"part", "result", "error", …}


# Numbers -----------------------------------------------------------------------------------------


def ratio_text(value: float, of: str) -> str:
    """``1.07x bare``, ``0.043x first load``, ``1/530 of Argo CD's poll``."""
    if value <= 0 or math.isnan(value):
        return f"0 of {of}" if value == 0 else "n/a"
    if value < 0.01:
        return f"1/{1 / value:,.0f} of {of}"
    if value < 1:
        return f"{value:.2g}x {of}"
    return f"{value:.2f}x {of}"


def seconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def median(values: Iterable[float]) -> float:
    listed = list(values)
    return statistics.median(listed) if listed else math.nan


# Building figures from the parts' results ----------------------------------------------------------


def figure(
    id_: str,
    title: str,
    *,
    value: float | None,
    unit: str,
    measured: str,
    anchor: str,
    goal: str,
    ratio: float | None = None,
    ratio_of: str = "",
    passed: bool | None = None,
    gates: Sequence[Mapping[str, Any]] = (),
    disturbed: bool = False,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": id_,
        "title": title,
        "group": id_.split(".")[0],
        "value": value,
        "unit": unit,
        "measured": measured,
        "anchor": anchor,
        "goal": goal,
        "ratio": ratio,
        "ratio_text": ratio_text(ratio, ratio_of) if ratio is not None else "",
        "pass": passed,
        "disturbed": disturbed,
        "gates": [dict(gate) for gate in gates],
        "details": dict(details or {}),
    }


def unmeasured(id_: str, title: str, anchor: str, goal: str, why: str) -> dict[str, Any]:
    return figure(
        id_, title, value=None, unit="", measured=f"FAILED: {why}", anchor=anchor, goal=goal, passed=False
    )


def baseline_gate(value: float) -> dict[str, Any]:
    return {"key": "ratio", "kind": "baseline", "value": value}


def limit_gate(key: str, value: float, goal: float) -> dict[str, Any]:
    return {"key": key, "kind": "limit", "value": value, "limit": FACTOR * goal}


def _row_of(part: Part | None) -> tuple[dict[str, Any] | None, str]:
    """The single row a part measured, or None and why not."""
    if part is None:
        return None, "not run"
    result = part.get("result")
    if isinstance(result, list):
        result = result[0] if result else None
    if not isinstance(result, dict) or result.get("measured") is None:
        why = part.get("error") or (result or {}).get("summary") or "no result"
        return None, str(why).removeprefix("FAILED: ")
    return result, ""


def commit_figure(setup: str, part: Part | None) -> dict[str, Any]:
    id_, title = f"commit.{setup}", f"commit → dispatch latency, {setup}"
    goal = f"p50 ≤ {GOALS['commit_p50_s']:g} s"
    row, why = _row_of(part)
    if row is None:
        return unmeasured(id_, title, ARGO_ANCHOR, goal, why)
    measured = row["measured"]
    p50, p95 = measured["p50_s"], measured["p95_s"]
    return figure(
        id_,
        title,
        value=p50,
        unit="s",
        measured=f"p50 {seconds(p50)}, p95 {seconds(p95)} (n={row['details']['rounds']})",
        anchor=ARGO_ANCHOR,
        goal=goal,
        ratio=p95 / ARGO_POLL_S,
        ratio_of="Argo CD's poll (p95)",
        passed=p50 <= GOALS["commit_p50_s"],
        gates=[limit_gate("p50_s", p50, GOALS["commit_p50_s"])],
        disturbed=bool(row.get("disturbed")),
        details={"latencies_s": row["details"]["latencies_s"], "p50_s": p50, "p95_s": p95},
    )


def burst_figure(setup: str, part: Part | None) -> dict[str, Any]:
    row, why = _row_of(part)
    count = (row or {}).get("measured", {}).get("intents") or (part or {}).get("count") or 0
    id_, title = f"burst.{setup}", f"{count:,}-intent burst → all dispatched, {setup}"
    goal_value = GOALS["burst_s"]
    goal = f"≤ {goal_value:g} s" + (" (1,000 intents)" if setup == "distributed" else " (information)")
    if row is None:
        return unmeasured(id_, title, ARGO_ANCHOR, goal, why)
    measured = row["measured"]
    dispatched = measured["dispatch_all_s"]
    if dispatched is None:
        return unmeasured(id_, title, ARGO_ANCHOR, goal, row["summary"])
    ready = measured.get("all_ready_s")
    return figure(
        id_,
        title,
        value=dispatched,
        unit="s",
        measured=f"{seconds(dispatched)}; answered → all Ready {seconds(ready)}",
        anchor=ARGO_ANCHOR,
        goal=goal,
        ratio=dispatched / ARGO_POLL_S,
        ratio_of="Argo CD's poll",
        passed=dispatched <= goal_value if setup == "distributed" else None,
        gates=[limit_gate("dispatch_s", dispatched, goal_value)],
        disturbed=bool(row.get("disturbed")),
        details={
            "intents": count,
            "dispatch_all_s": dispatched,
            "all_ready_s": ready,
            "requests_at_percent_s": measured.get("requests_at_percent_s"),
        },
    )


def resync_figure(setup: str, part: Part | None) -> dict[str, Any]:
    row, why = _row_of(part)
    count = (row or {}).get("measured", {}).get("intents") or (part or {}).get("count") or 0
    id_, title = f"resync.{setup}", f"{count:,}-intent no-op resync, {setup}"
    anchor = "a cold resync of the same intents (re-read and re-parse all), same run (measured)"
    goal = f"≤ {GOALS['resync_s']:g} s, 0 rows, ≤ {GOALS['resync_rss_mb']:g} MB"
    if row is None:
        return unmeasured(id_, title, anchor, goal, why)
    measured = row["measured"]
    resync_s = measured.get("resync_median_s", measured["resync_s"])
    load_s = measured.get("initial_load_s") or row["details"]["initial_load_s"]
    details = row["details"]
    cold_s = details.get("cold_resync_median_s") or details.get("cold_resync_s")
    rows_written = measured["intent_rows_written"]
    rss_mb = measured["process_peak_rss_mb"]
    writes = measured["write_transactions"]
    repeats = len(measured.get("resync_repeats_s", [resync_s]))
    return figure(
        id_,
        title,
        value=resync_s,
        unit="s",
        measured=(
            f"{seconds(resync_s)} (median of {repeats}), {rows_written} intent rows / {writes} write tx, "
            f"RSS {rss_mb:.0f} MB; cold resync {seconds(cold_s)}, first load {seconds(load_s)}"
        ),
        anchor=anchor,
        goal=goal,
        ratio=resync_s / cold_s if cold_s else None,
        ratio_of="cold resync",
        passed=(resync_s <= GOALS["resync_s"] and rows_written == 0 and rss_mb <= GOALS["resync_rss_mb"]),
        gates=[
            *([baseline_gate(resync_s / cold_s)] if cold_s else []),
            limit_gate("resync_s", resync_s, GOALS["resync_s"]),
            {"key": "intent_rows_written", "kind": "limit", "value": rows_written, "limit": 0},
            limit_gate("peak_rss_mb", rss_mb, GOALS["resync_rss_mb"]),
        ],
        disturbed=bool(row.get("disturbed")),
        details={
            "intents": count,
            "resync_s": resync_s,
            "resync_repeats_s": measured.get("resync_repeats_s"),
            "initial_load_s": load_s,
            "cold_resync_s": cold_s,
            "write_transactions": writes,
            "intent_rows_written": rows_written,
            "process_peak_rss_mb": rss_mb,
        },
    )


OVERHEAD_ANCHOR = "bare ansible-playbook, same playbook, same run (measured); AWX not measured"


def overhead_figure(bus: str, part: Part | None) -> dict[str, Any]:
    names = {"memory": "embedded (in-process bus)", "amqp": "distributed (RabbitMQ)"}
    id_, title = f"overhead.{bus}", f"orchestration overhead, {names.get(bus, bus)}"
    goal = f"≤ {GOALS['overhead_ratio']:.2f}x"
    row, why = _row_of(part)
    if row is None:
        return unmeasured(id_, title, OVERHEAD_ANCHOR, goal, why)
    details = row["details"]
    ratio = float(row["measured"])
    return figure(
        id_,
        title,
        value=ratio,
        unit="x",
        measured=(
            f"Chiffon {seconds(details['agent_median_s'])} vs bare {seconds(details['bare_median_s'])} "
            f"(median of {details['pairs']} alternating pairs' ratios)"
        ),
        anchor=OVERHEAD_ANCHOR,
        goal=goal,
        ratio=ratio,
        ratio_of="bare",
        passed=ratio <= GOALS["overhead_ratio"],
        gates=[baseline_gate(ratio)],
        disturbed=bool(row.get("disturbed")),
        details={
            "pair_ratios": details["pair_ratios"],
            "bare_seconds": details["bare_seconds"],
            "agent_seconds": details["agent_seconds"],
        },
    )


def catalog_figures(part: Part | None) -> list[dict[str, Any]]:
    query_goal = f"p50 ≤ {GOALS['catalog_query_p50_ms']:g} ms"
    index_goal = (
        f"cold ≤ {GOALS['catalog_cold_s']:g} s (1,000 playbooks), warm ≤ {GOALS['catalog_warm_s']:g} s"
    )
    query_anchor = "the embedding model alone on the same query, same run (measured)"
    index_anchor = "the cold index of the same repo, same run (measured)"
    result = (part or {}).get("result")
    if not isinstance(result, dict) or "query" not in result:
        why = str((part or {}).get("error") or "not run")
        return [
            unmeasured("catalog.query", "catalog query latency", query_anchor, query_goal, why),
            unmeasured("catalog.index", "catalog cold / warm index", index_anchor, index_goal, why),
        ]
    query, cold, warm = result["query"], result["cold"], result["warm"]
    playbooks = result["repository"]["playbooks"]
    p50 = query["p50_ms"]
    # Older results have no anchor: the ratio is then to the goal, and only the limit gates it.
    floor = query.get("embedding_alone_p50_ms")
    # The model load is left out of both sides: the warm start does not load it either.
    cold_s = cold["discovery_s"] + cold["embed_and_index_s"]
    warm_s = warm["warm_start_s"]
    return [
        figure(
            "catalog.query",
            "catalog query latency",
            value=p50,
            unit="ms",
            measured=f"p50 {p50:.1f} ms, p95 {query['p95_ms']:.1f} ms ({query['count']} distinct queries)"
            + (f"; the model alone p50 {floor:.1f} ms" if floor else ""),
            anchor=query_anchor,
            goal=query_goal,
            ratio=p50 / floor if floor else p50 / GOALS["catalog_query_p50_ms"],
            ratio_of="the model alone" if floor else "goal",
            passed=p50 <= GOALS["catalog_query_p50_ms"],
            # No absolute limit: one query embeds on one thread, which a busy CPU slows as much as
            # it slows the model; the ratio to the model alone is what travels between machines.
            gates=[baseline_gate(p50 / floor)] if floor else [],
            details={
                "timings_ms": query.get("timings_ms", []),
                "embedding_alone_ms": query.get("embedding_alone_ms", []),
                "playbooks": playbooks,
            },
        ),
        figure(
            "catalog.index",
            f"catalog index, {playbooks:,} playbooks",
            value=warm_s,
            unit="s",
            measured=(
                f"cold {seconds(cold['cold_index_s'])} (model load {seconds(cold['model_load_s'])}), "
                f"warm {seconds(warm_s)}"
            ),
            anchor=index_anchor,
            goal=index_goal,
            ratio=warm_s / cold_s,
            ratio_of="cold (model load excluded)",
            passed=cold["cold_index_s"] <= GOALS["catalog_cold_s"] and warm_s <= GOALS["catalog_warm_s"],
            # Not gated on the ratio: the cold index embeds on every core and the warm start on one, so
            # the ratio moves with the number of cores; the warm start's limit is enough.
            gates=[limit_gate("warm_s", warm_s, GOALS["catalog_warm_s"])],
            details={"cold": cold, "warm_start_s": warm_s, "playbooks": playbooks},
        ),
    ]


BUS_ANCHOR = "raw aio-pika, same broker, messages and queue type, same run (measured)"


def bus_figures(part: Part | None) -> list[dict[str, Any]]:
    goal = f"≤ {GOALS['bus_ratio']:.2f}x"
    result = (part or {}).get("result")
    rows = result if isinstance(result, list) else []
    figures = []
    for mode in ("batched", "sequential"):
        id_, title = f"bus.{mode}", f"bus publish-with-confirm, {mode}"
        row = next((r for r in rows if r.get("details", {}).get("mode") == mode), None)
        if row is None or row.get("measured") is None:
            why = (row or {}).get("summary") or (part or {}).get("error") or "not run"
            figures.append(unmeasured(id_, title, BUS_ANCHOR, goal, str(why).removeprefix("FAILED: ")))
            continue
        details = row["details"]
        ratio = float(row["measured"])
        figures.append(
            figure(
                id_,
                title,
                value=ratio,
                unit="x",
                measured=(
                    f"{details['chiffon_msgs_per_s']:,.0f} vs {details['raw_msgs_per_s']:,.0f} msg/s "
                    f"({details['messages']} x {details['body_bytes'][0]} B, {details['rounds']} rounds)"
                ),
                anchor=BUS_ANCHOR,
                goal=goal if mode == "batched" else "(information)",
                ratio=ratio,
                ratio_of="raw aio-pika (time)",
                passed=ratio <= GOALS["bus_ratio"] if mode == "batched" else None,
                gates=[baseline_gate(ratio)],
                disturbed=bool(row.get("disturbed")),
                details={
                    "chiffon_seconds": details["chiffon_seconds"],
                    "raw_seconds": details["raw_seconds"],
                    "messages": details["messages"],
                    "chiffon_msgs_per_s": details["chiffon_msgs_per_s"],
                    "raw_msgs_per_s": details["raw_msgs_per_s"],
                },
            )
        )
    return figures


def heartbeat_figure(database: str, part: Part | None) -> dict[str, Any]:
    names = {"postgres": "PostgreSQL", "sqlite": "SQLite"}
    id_ = f"heartbeats.{database}"
    title = f"heartbeat ingest, 1,000 agents (100/s), {names.get(database, database)}"
    anchor = "none measured (goal only)"
    goal = f"≤ {GOALS['heartbeat_cpu_percent']:g} % of a core, keeps up"
    row, why = _row_of(part)
    if row is None:
        return unmeasured(id_, title, anchor, goal, why)
    details = row["details"]
    cpu = float(row["measured"])
    keeps_up = bool(details["keeps_up"])
    lag = details["stored_lag_s"]
    return figure(
        id_,
        title,
        value=cpu,
        unit="%",
        measured=(
            f"controller CPU {cpu:.1f} % of a core, {'keeps up' if keeps_up else 'FALLS BEHIND'} "
            f"(stored lag p99 {lag['p99']:.2f} s)"
        ),
        anchor=anchor,
        goal=goal,
        ratio=cpu / GOALS["heartbeat_cpu_percent"],
        ratio_of="goal",
        passed=cpu <= GOALS["heartbeat_cpu_percent"] and keeps_up,
        gates=[limit_gate("cpu_percent", cpu, GOALS["heartbeat_cpu_percent"])],
        disturbed=bool(row.get("disturbed")),
        details={"keeps_up": keeps_up, "stored_lag_s": lag, "cpu_seconds": details["controller_cpu_seconds"]},
    )


def compiler_figure(part: Part | None) -> dict[str, Any]:
    anchor = "none measured: an LLM round trip takes seconds; AWX and Argo CD have no such step"
    goal = f"p50 ≤ {GOALS['compiler_p50_ms']:g} ms, accuracy ≥ {GOALS['compiler_accuracy']:.0%}"
    result = (part or {}).get("result")
    if not isinstance(result, dict) or "latency" not in result:
        why = str((part or {}).get("error") or "not run")
        return unmeasured("compiler.latency", "offline compiler latency", anchor, goal, why)
    first = result["latency"]["first_pass"]
    accuracy = result["accuracy"]["all"]
    p50 = first["p50_ms"]
    return figure(
        "compiler.latency",
        "offline compiler latency",
        value=p50,
        unit="ms",
        measured=(
            f"p50 {p50:.0f} ms, p95 {first['p95_ms']:.0f} ms ({first['count']} requests); "
            f"accuracy {accuracy:.1%} of {result['set']['items']}"
        ),
        anchor=anchor,
        goal=goal,
        ratio=p50 / GOALS["compiler_p50_ms"],
        ratio_of="goal",
        passed=p50 <= GOALS["compiler_p50_ms"] and accuracy >= GOALS["compiler_accuracy"],
        gates=[limit_gate("p50_ms", p50, GOALS["compiler_p50_ms"])],
        details={"first_pass_ms": result["latency"].get("first_pass_ms", []), "accuracy": accuracy},
    )


# The scaling series ---------------------------------------------------------------------------------


def scaling(parts: Mapping[str, Part]) -> dict[str, list[dict[str, Any]]]:
    """Every resync and burst point measured, by series (``resync.embedded``, …), sorted by intents."""
    series: dict[str, list[dict[str, Any]]] = {}
    for name, part in parts.items():
        kind, *params = name.split(":")
        if kind not in ("resync", "burst") or len(params) != 2:
            continue
        row, _ = _row_of(part)
        if row is None:
            continue
        measured = row["measured"]
        point: dict[str, Any] = {"intents": int(params[1])}
        if kind == "resync":
            point |= {
                "resync_s": measured.get("resync_median_s", measured["resync_s"]),
                "initial_load_s": measured.get("initial_load_s") or row["details"].get("initial_load_s"),
                "cold_resync_s": row["details"].get("cold_resync_median_s")
                or row["details"].get("cold_resync_s"),
                "peak_rss_mb": measured["process_peak_rss_mb"],
                "intent_rows_written": measured["intent_rows_written"],
            }
        else:
            if measured["dispatch_all_s"] is None:
                continue
            point |= {"dispatch_s": measured["dispatch_all_s"], "all_ready_s": measured.get("all_ready_s")}
        series.setdefault(f"{kind}.{params[0]}", []).append(point)
    for points in series.values():
        points.sort(key=lambda point: point["intents"])
    return dict(sorted(series.items()))


def largest(parts: Mapping[str, Part], kind: str, setup: str) -> Part | None:
    """The part of ``kind`` on ``setup`` with the most intents (the figure's point of the series)."""
    mine = [
        (int(name.split(":")[2]), part) for name, part in parts.items() if name.startswith(f"{kind}:{setup}:")
    ]
    return max(mine, key=lambda item: item[0])[1] if mine else None


def build(parts: Mapping[str, Part]) -> list[dict[str, Any]]:
    """The table's figures, in the order the issue names them, for the parts that ran."""
    ran = {name.split(":")[0] for name in parts}
    figures: list[dict[str, Any]] = []
    setups = ("embedded", "distributed")
    if "commit" in ran:
        figures += [commit_figure(setup, parts.get(f"commit:{setup}")) for setup in setups]
    if "burst" in ran:
        figures += [
            burst_figure(setup, largest(parts, "burst", setup)) for setup in ("distributed", "embedded")
        ]
    if "resync" in ran:
        figures += [
            resync_figure(setup, largest(parts, "resync", setup)) for setup in ("distributed", "embedded")
        ]
    if "overhead" in ran:
        buses = [name.split(":")[1] for name in parts if name.startswith("overhead:")]
        figures += [overhead_figure(bus, parts[f"overhead:{bus}"]) for bus in buses]
    if "catalog" in ran:
        figures += catalog_figures(parts.get("catalog"))
    if "bus" in ran:
        figures += bus_figures(parts.get("bus"))
    if "heartbeats" in ran:
        databases = [name.split(":")[1] for name in parts if name.startswith("heartbeats:")]
        figures += [heartbeat_figure(db, parts[f"heartbeats:{db}"]) for db in databases]
    if "compiler" in ran:
        figures.append(compiler_figure(parts.get("compiler")))
    return figures


# The quick gate ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One gate of one figure against the baseline or its limit."""

    figure: str
    key: str
    kind: str
    value: float | None
    reference: float | None  # the baseline's value, for kind "baseline"
    limit: float | None
    ok: bool
    note: str = ""


def checks(figures: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None) -> list[Check]:
    """Every gate of every figure; ``ok`` False is a regression (or a figure not measured).

    A baseline gate fails when the value is more than :data:`FACTOR` times the
    baseline's; with no baseline value for it, it passes with a note. A limit
    gate fails when the value is over its limit.
    """
    base = (baseline or {}).get("figures", {})
    out: list[Check] = []
    for fig in figures:
        if fig["value"] is None:
            out.append(Check(fig["id"], "measured", "measured", None, None, None, False, fig["measured"]))
            continue
        for gate in fig["gates"]:
            value = float(gate["value"])
            if gate["kind"] == "baseline":
                reference = base.get(fig["id"], {}).get(gate["key"])
                if reference is None:
                    out.append(
                        Check(fig["id"], gate["key"], "baseline", value, None, None, True, "no baseline")
                    )
                    continue
                limit = FACTOR * float(reference)
                ok = value <= limit
                note = "" if ok else f"{value / float(reference):.2f}x the baseline's {float(reference):.3g}"
                out.append(
                    Check(fig["id"], gate["key"], "baseline", value, float(reference), limit, ok, note)
                )
            else:
                limit = float(gate["limit"])
                ok = value <= limit
                out.append(
                    Check(
                        fig["id"],
                        gate["key"],
                        "limit",
                        value,
                        None,
                        limit,
                        ok,
                        "" if ok else "over the limit",
                    )
                )
    return out


def baseline_of(document: Mapping[str, Any]) -> dict[str, Any]:
    """What ``--write-baseline`` keeps of a quick run: each figure's baseline-gated values."""
    figures: dict[str, dict[str, float]] = {}
    for fig in document["figures"]:
        kept = {
            gate["key"]: round(float(gate["value"]), 4) for gate in fig["gates"] if gate["kind"] == "baseline"
        }
        if kept and fig["value"] is not None:
            figures[fig["id"]] = kept
    return {
        "about": (
            "Ratios of a `python -m bench --quick` run, each Chiffon over an anchor measured in the same "
            f"run; `--quick` fails when one is more than {FACTOR:g}x its value here. After a deliberate "
            "change: `python -m bench --quick --write-baseline`, then `--widen-baseline` once or twice "
            "(each ratio keeps the highest of the runs)."
        ),
        "generated_at": document.get("generated_at"),
        "machine": document.get("machine_text"),
        "runs": 1,
        "figures": figures,
    }


def widened(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A baseline over several runs: each ratio the larger of ``old``'s and ``new``'s.

    One quick run on a busy machine can land low on a noisy ratio; a baseline
    that holds the higher of a few runs does not fail the next one for that.
    """
    figures = {name: dict(values) for name, values in old.get("figures", {}).items()}
    for name, values in new["figures"].items():
        kept = figures.setdefault(name, {})
        for key, value in values.items():
            kept[key] = max(value, kept.get(key, value))
    return {**new, "runs": int(old.get("runs", 1)) + 1, "figures": dict(sorted(figures.items()))}


# Markdown -----------------------------------------------------------------------------------------------


def verdict(fig: Mapping[str, Any]) -> str:
    if fig["value"] is None:
        return "FAILED"
    text = {True: "pass", False: "MISSED", None: "info"}[fig["pass"]]
    return text + (" (disturbed)" if fig.get("disturbed") else "")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(figures: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| figure | measured | anchor | goal | ratio | result |", "|---|---|---|---|---|---|"]
    for fig in figures:
        cells = (fig["title"], fig["measured"], fig["anchor"], fig["goal"], fig["ratio_text"], verdict(fig))
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def scaling_table(series: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    counts = sorted({point["intents"] for points in series.values() for point in points})
    if not counts:
        return ""
    lines = ["| series | " + " | ".join(f"{count:,}" for count in counts) + " |"]
    lines.append("|---" * (len(counts) + 1) + "|")
    for name, points in series.items():
        key = "resync_s" if name.startswith("resync") else "dispatch_s"
        by_count = {point["intents"]: point[key] for point in points}
        label = {"resync_s": "no-op resync", "dispatch_s": "burst → all dispatched"}[key]
        cells = [seconds(by_count.get(count)) if count in by_count else "" for count in counts]
        lines.append(f"| {label}, {name.split('.')[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks_table(found: Sequence[Check]) -> str:
    lines = ["| figure | check | value | baseline | limit | result |", "|---|---|---|---|---|---|"]
    for check in found:
        value = "n/a" if check.value is None else f"{check.value:.4g}"
        reference = "" if check.reference is None else f"{check.reference:.4g}"
        limit = "" if check.limit is None else f"{check.limit:.4g}"
        result = ("ok" if check.ok else "REGRESSION") + (f" ({check.note})" if check.note else "")
        lines.append(f"| {check.figure} | {check.key} | {value} | {reference} | {limit} | {_cell(result)} |")
    return "\n".join(lines)
