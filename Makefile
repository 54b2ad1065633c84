# streamseg developer entry points. Run twice: the second run reuses the venv and the jar cache.
#   make setup   system packages, .venv, Kafka jars
#   make test    setup, then the whole test suite against a real Kafka and Redis
#   make demo    setup, then the end-to-end demo
#   make bench   setup, then the benchmarks
#   make lint    ruff + mypy
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Inside the venv: deleting .venv also forgets the install.
STAMP := $(VENV)/.streamseg-installed
# Programs the stack needs and the Debian packages that provide them.
SYSTEM_PACKAGES := redis-server:redis-server kcat:kcat java:default-jre-headless mvn:maven
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages fetch test demo bench lint constraints clean distclean

setup: system-packages $(STAMP) fetch

system-packages:
	@missing=""; \
	for pair in $(SYSTEM_PACKAGES); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependency declarations changed since the last install.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -c constraints.txt -e '.[test,dev]'
	touch $@

fetch: $(STAMP)
	$(PY) -m devstack fetch

test: setup
	$(PY) -m pytest

demo: setup
	if [ -f scripts/demo.py ]; then $(PY) scripts/demo.py; else $(PY) scripts/demo_smoke.py; fi

bench: setup
	if [ -f benchmarks/run.py ]; then $(PY) benchmarks/run.py; \
	else echo "no benchmarks yet (benchmarks/run.py does not exist)"; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

# Pin what is installed now, for the next fresh machine.
constraints: $(STAMP)
	{ echo "# Exact versions for a reproducible install: pip install -c constraints.txt -e '.[test,dev]'"; \
	  echo "# Regenerate after changing dependencies: make constraints"; \
	  $(PY) -m pip freeze --exclude-editable; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	touch $(STAMP)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# Also the venv; the Kafka jar cache lives outside the repository (python -m devstack --help).
distclean: clean
	rm -rf $(VENV)
