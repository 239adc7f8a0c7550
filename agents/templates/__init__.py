"""Playbook templates for common homelab jobs (DESIGN §5)."""
