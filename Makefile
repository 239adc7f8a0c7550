# Shortcuts; the scripts and commands they run are the real interface (see README.md).
PYTHON ?= .venv/bin/python

.PHONY: bench bench-quick chaos

# Every benchmark at full size: the table against the anchors, bench/results/latest.json,
# docs/performance/*.png and the figures block of docs/performance.md (docs/performance.md).
bench:
	$(PYTHON) -m bench $(ARGS)

# Small sizes and the regression gate CI runs (ratios vs bench/baseline-quick.json).
bench-quick:
	$(PYTHON) -m bench --quick $(ARGS)

# The chaos suite at full size (restarts PostgreSQL and RabbitMQ: a machine of its own).
chaos:
	scripts/chaos $(ARGS)
