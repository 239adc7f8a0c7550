"""The suite's plots (matplotlib, Agg backend, PNG): latency distributions and scaling with intent count.

* ``latency.png``: four panels — commit → dispatch latency per setup (empirical
  CDF, Argo CD's 180 s poll written beside it), a no-op playbook bare vs
  through Chiffon (every run of the alternating pairs), the catalog's query and
  the offline compiler's latency (CDF), and the bus's publish time per message,
  Chiffon vs raw aio-pika (every round).
* ``scaling.png``: two panels — seconds against intents (no-op resync, the
  cold resync it is compared with, burst → all dispatched; log-log, goals
  dashed) and the resync process's peak RSS against intents.

Each has the machine and the date under its title. Only figures that were
measured are drawn; an empty panel says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.figures import GOALS

COLORS = {"embedded": "tab:blue", "distributed": "tab:orange", "memory": "tab:blue", "amqp": "tab:orange"}


def _by_id(document: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {fig["id"]: fig for fig in document.get("figures", []) if fig.get("value") is not None}


def _cdf(ax: Axes, values: Sequence[float], label: str, **style: Any) -> None:
    ordered = sorted(values)
    if not ordered:
        return
    shares = [(index + 1) / len(ordered) for index in range(len(ordered))]
    ax.step(ordered, shares, where="post", label=f"{label} (n={len(ordered)})", **style)


def _empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: not measured in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _subtitle(document: Mapping[str, Any]) -> str:
    quick = " (--quick: small sizes, not figures to quote)" if document.get("quick") else ""
    return f"{document.get('machine_text', '')}\n{document.get('generated_at', '')}{quick}"


def latency_plot(document: Mapping[str, Any], path: Path) -> Path:
    figs = _by_id(document)
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    commit_ax, overhead_ax, query_ax, bus_ax = axes.flat

    drawn = False
    for setup in ("embedded", "distributed"):
        fig = figs.get(f"commit.{setup}")
        if fig:
            _cdf(commit_ax, [x * 1000 for x in fig["details"]["latencies_s"]], setup, color=COLORS[setup])
            drawn = True
    if drawn:
        commit_ax.axvline(
            GOALS["commit_p50_s"] * 1000, color="grey", linestyle="--", label="goal: p50 ≤ 500 ms"
        )
        commit_ax.set_title("commit → RunRequest at the agent\n(Argo CD's default poll: up to 180,000 ms)")
        commit_ax.set_xlabel("ms")
        commit_ax.set_ylabel("share of commits")
        commit_ax.legend(fontsize=8)
    else:
        _empty(commit_ax, "commit → dispatch latency")

    series = [(bus, figs[f"overhead.{bus}"]) for bus in ("memory", "amqp") if f"overhead.{bus}" in figs]
    if series:
        labels, data = [], []
        for bus, fig in series:
            name = "in-process" if bus == "memory" else "RabbitMQ"
            labels += ["bare ansible-playbook", f"Chiffon ({name})"]
            data += [fig["details"]["bare_seconds"], fig["details"]["agent_seconds"]]
        overhead_ax.boxplot(data, showmeans=True)
        overhead_ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
        for position, values in enumerate(data, start=1):
            overhead_ax.scatter([position] * len(values), values, s=10, alpha=0.6, color="black")
        ratios = ", ".join(f"{fig['ratio']:.2f}x" for _, fig in series)
        overhead_ax.set_title(f"no-op playbook on localhost, alternating pairs\n(median pair ratio {ratios})")
        overhead_ax.set_ylabel("seconds per run")
    else:
        _empty(overhead_ax, "orchestration overhead")

    query, compiler = figs.get("catalog.query"), figs.get("compiler.latency")
    if query or compiler:
        if query:
            _cdf(query_ax, query["details"]["timings_ms"], "catalog query", color="tab:green")
            alone = query["details"].get("embedding_alone_ms")
            if alone:
                _cdf(query_ax, alone, "the model alone (anchor)", color="tab:green", linestyle=":")
            query_ax.axvline(
                GOALS["catalog_query_p50_ms"], color="tab:green", linestyle="--", label="query goal"
            )
        if compiler:
            _cdf(query_ax, compiler["details"]["first_pass_ms"], "offline compiler", color="tab:purple")
            query_ax.axvline(
                GOALS["compiler_p50_ms"], color="tab:purple", linestyle="--", label="compiler goal"
            )
        query_ax.set_title("catalog query and offline compiler (p50 goals dashed)")
        query_ax.set_xlabel("ms")
        query_ax.set_ylabel("share of requests")
        query_ax.legend(fontsize=8)
    else:
        _empty(query_ax, "catalog and compiler latency")

    modes = [(mode, figs[f"bus.{mode}"]) for mode in ("batched", "sequential") if f"bus.{mode}" in figs]
    if modes:
        labels, data = [], []
        for mode, fig in modes:
            count = fig["details"]["messages"]
            labels += [f"raw aio-pika\n{mode}", f"Chiffon bus\n{mode}"]
            data += [
                [1e3 * s / count for s in fig["details"]["raw_seconds"]],
                [1e3 * s / count for s in fig["details"]["chiffon_seconds"]],
            ]
        bus_ax.boxplot(data, showmeans=True)
        bus_ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
        ratios = ", ".join(f"{mode} {fig['ratio']:.2f}x" for mode, fig in modes)
        bus_ax.set_title(f"publish with confirm, same RabbitMQ\n(Chiffon / raw aio-pika: {ratios})")
        bus_ax.set_ylabel("ms per message (per round)")
    else:
        _empty(bus_ax, "bus throughput")

    figure.suptitle("Chiffon latency distributions\n" + _subtitle(document), fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def scaling_plot(document: Mapping[str, Any], path: Path) -> Path:
    series: Mapping[str, Sequence[Mapping[str, Any]]] = document.get("scaling", {})
    figure, (time_ax, rss_ax) = plt.subplots(1, 2, figsize=(13, 5.5))
    if not series:
        _empty(time_ax, "scaling series")
        _empty(rss_ax, "resync memory")
    else:
        for ax in (time_ax, rss_ax):
            ax.set_xscale("log")
        time_ax.set_yscale("log")
    for name, points in series.items():
        kind, setup = name.split(".")
        counts = [point["intents"] for point in points]
        color = COLORS.get(setup, "black")
        if kind == "resync":
            time_ax.plot(
                counts, [p["resync_s"] for p in points], "o-", color=color, label=f"no-op resync, {setup}"
            )
            colds = [
                (c, p["cold_resync_s"]) for c, p in zip(counts, points, strict=True) if p.get("cold_resync_s")
            ]
            if colds:
                time_ax.plot(
                    [c for c, _ in colds],
                    [s for _, s in colds],
                    "s:",
                    color=color,
                    alpha=0.6,
                    label=f"cold resync (anchor), {setup}",
                )
            rss_ax.plot(
                counts, [p["peak_rss_mb"] for p in points], "o-", color=color, label=f"resync, {setup}"
            )
        else:
            time_ax.plot(
                counts,
                [p["dispatch_s"] for p in points],
                "^--",
                color=color,
                label=f"burst → dispatched, {setup}",
            )
    if series:
        time_ax.axhline(GOALS["resync_s"], color="grey", linestyle="--", linewidth=0.8)
        time_ax.text(
            time_ax.get_xlim()[0], GOALS["resync_s"], " resync goal (10,000)", va="bottom", fontsize=7
        )
        time_ax.axhline(GOALS["burst_s"], color="grey", linestyle="-.", linewidth=0.8)
        time_ax.text(time_ax.get_xlim()[0], GOALS["burst_s"], " burst goal (1,000)", va="bottom", fontsize=7)
        time_ax.set_xlabel("intents")
        time_ax.set_ylabel("seconds")
        time_ax.set_title("scaling with intent count")
        time_ax.legend(fontsize=7)
        rss_ax.axhline(GOALS["resync_rss_mb"], color="grey", linestyle="--", label="goal")
        rss_ax.set_xlabel("intents")
        rss_ax.set_ylabel("process peak RSS, MB")
        rss_ax.set_title("resync process memory (initial load included)")
        rss_ax.legend(fontsize=8)
    figure.suptitle("Chiffon at scale\n" + _subtitle(document), fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_plots(document: Mapping[str, Any], directory: Path) -> list[Path]:
    return [
        latency_plot(document, directory / "latency.png"),
        scaling_plot(document, directory / "scaling.png"),
    ]
