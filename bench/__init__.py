"""Benchmarks of the reconcile engine (run from the repository root).

    python -m bench.reconcile [--quick] [--setup embedded|distributed|both]

runs the three figures below and writes ``bench/results/reconcile-latest.json``;
each figure is also a command of its own:

* ``python -m bench.commit_latency`` — commit → RunRequest at the agent, p50/p95/max;
* ``python -m bench.burst_dispatch`` — 1,000 intents in one commit → all RunRequests, all Ready;
* ``python -m bench.resync`` — a resync of 10,000 unchanged intents: time, database writes, RSS.
"""
