"""The playbook catalog: what homelab-infra can do, found from a few words (DESIGN §5)."""
