# Shortcuts; the scripts and commands they run are the real interface (see README.md).
# Each target makes .venv (with the dev extra) first when it is missing or stale.
PYTHON ?= .venv/bin/python
# The embedding model comes from a package and litellm's cost map from disk: never the network.
export HF_HUB_OFFLINE = 1
export LITELLM_LOCAL_MODEL_COST_MAP = True

.PHONY: venv bench bench-quick chaos

venv:
	bash -c 'source scripts/_venv.sh && ensure_venv dev'

# Every benchmark at full size: the table against the anchors, bench/results/latest.json,
# docs/performance/*.png and the figures block of docs/performance.md (docs/performance.md).
bench: venv
	$(PYTHON) -m bench $(ARGS)

# Small sizes and the regression gate CI runs (ratios vs bench/baseline-quick.json).
bench-quick: venv
	$(PYTHON) -m bench --quick $(ARGS)

# The chaos suite at full size (restarts PostgreSQL and RabbitMQ: a machine of its own).
chaos:
	scripts/chaos $(ARGS)
