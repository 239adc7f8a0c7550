"""Agents: the infra agent (ansible-runner) and desktop agents (capacity).

* :mod:`chiffon.agents.base` — what every agent does: queues, heartbeats,
  ``AgentOffline`` on a clean stop, surviving broker outages;
* :mod:`chiffon.agents.infra` — the infra agent: RunRequest → RunAccepted →
  ack → ansible-runner → RunEvents → RunResult, per docs/protocol.md §4;
* :mod:`chiffon.agents.journal` — its on-disk memory of runs (never run a run
  id twice, across restarts);
* :mod:`chiffon.agents.runner` — the one module that imports ansible-runner;
* :mod:`chiffon.agents.capacity` — the one module that imports psutil and
  pynvml: CPU, memory, GPUs, busy override, process-tree usage;
* :mod:`chiffon.agents.desktop` — the desktop agent: capacity only.

Agents import resources and the core adapters (bus, settings), never
controllers (``tests/unit/test_layers.py``).
"""
