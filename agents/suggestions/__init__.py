"""Improvement suggestions for homelab-infra: ansible-lint and run-based findings (DESIGN §5)."""
