# The two commands a fresh machine needs: `make demo` and `make test`. Everything they need is
# installed here: Python packages into .venv, and etcd (etcd-server) and RabbitMQ (rabbitmq-server)
# from Debian when missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-pythons demo bench scale gen lint fuzz etcd rabbitmq venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,oslo]'
	touch $(STAMP)

venv: $(STAMP)

# etcd for discovery tests and the demo: Debian's package, never a downloaded binary.
etcd:
	@command -v etcd >/dev/null && command -v etcdctl >/dev/null || { \
	  echo "installing etcd-server from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq etcd-server etcd-client >/dev/null; }

# RabbitMQ for the oslo bridge-mode tests (tests/oslo/test_migration.py): Debian's package. The
# tests start a private node of their own (grpcrpc.testing.rabbit); no system broker is started.
rabbitmq:
	@command -v rabbitmq-server >/dev/null || test -x /usr/sbin/rabbitmq-server || { \
	  echo "installing rabbitmq-server from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq rabbitmq-server >/dev/null; }

gen: $(STAMP)
	scripts/gen_protos.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check grpcrpc tests bench
	$(VENV)/bin/mypy

test: $(STAMP) etcd rabbitmq lint
	$(VENV)/bin/pytest -q

# The suite under the other Python versions the package supports (pyproject's classifiers), each
# in its own venv (.venv312, .venv313), found as python3.X on PATH or under ~/.pyenv; a version
# that is not installed is skipped. Not part of `make test`. A subset:
# `make test-pythons PYTEST_ARGS=tests/unit`, one version: `make test-pythons PYTHONS=3.13`.
PYTHONS ?= 3.12 3.13
PYTEST_ARGS ?=
test-pythons: etcd
	@for v in $(PYTHONS); do \
	  py=""; \
	  for c in $$(ls -d $$HOME/.pyenv/versions/$$v.*/bin/python 2>/dev/null | sort -V -r) \
	           $$(command -v python$$v); do \
	    if "$$c" -c 'import sys' 2>/dev/null; then py=$$c; break; fi; \
	  done; \
	  if [ -z "$$py" ]; then echo "== python$$v: not installed, skipped"; continue; fi; \
	  venv=.venv$${v/./}; \
	  if [ ! $$venv/.installed -nt pyproject.toml ]; then \
	    { test -x $$venv/bin/python || $$py -m venv $$venv; } && \
	    $$venv/bin/python -m pip install -q --upgrade pip && \
	    $$venv/bin/python -m pip install -q -e '.[dev,oslo]' && touch $$venv/.installed || exit 1; \
	  fi; \
	  echo "== python$$v ($$py)"; \
	  $$venv/bin/pytest -q $(PYTEST_ARGS) || exit 1; \
	done

# The long fuzzing run (make test runs the same properties with a bounded number of cases).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=long $(VENV)/bin/pytest -q tests/security/test_fuzz.py --hypothesis-show-statistics

demo: $(STAMP) etcd
	$(PY) -m grpcrpc.demo

# Benchmarks are not part of `make test` (a smoke run of each is). They want an idle machine.
bench: $(STAMP) etcd
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench.run

# A simulated region of 10,000 hypervisors (HYPERVISORS=... for another size; SCALE_ARGS=... for
# more options, e.g. --parts or --no-proxy): an etcd cluster, its grpc-proxy, 30,000 leases, the
# faults and the RabbitMQ storm. Hours on 2 cores; `make test` runs it at smoke size.
HYPERVISORS ?= 10000
scale: $(STAMP) etcd rabbitmq
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench.scale --hypervisors $(HYPERVISORS) $(SCALE_ARGS)

clean:
	rm -rf $(VENV) .venv3?? build *.egg-info
