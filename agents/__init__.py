"""Agents: the infra agent (ansible-runner) and desktop agents (capacity)."""
