# Entry points for operators and CI. Each target installs what it needs into .venv first.
#   make demo   run the nightly job end to end on the embedded local stack and show its result
#   make test   run the test suite against real services (starts the local stack as needed)
#   make up / make down   start / stop the local stack (S3 API, Redis if none, SQLite registry)
#   make serve  the feature server (127.0.0.1:6566) and the inference API (127.0.0.1:8000) on the local stack
#   make bench  run the benchmarks
#   make airflow  the Airflow UI on http://127.0.0.1:8080 over the local stack

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed

.PHONY: venv up serve down demo test bench mutate airflow lock clean

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found " + sys.version.split()[0] + ")")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q uv==$(UV_VERSION)
	$(UV) pip sync -q --python $(PY) --compile-bytecode requirements.txt
	$(UV) pip install -q --python $(PY) --no-deps -e .
	@touch $@

venv: $(STAMP)

up: venv
	$(PY) -m devstack up

serve: venv
	$(PY) -m devstack serve

down:
	@if [ -x $(PY) ]; then $(PY) -m devstack down; fi

demo: up
	$(PY) -m pipeline demo

test: venv
	@command -v docker-registry >/dev/null || { echo "installing docker-registry (the container registry the image-pinning tests push to) from Debian"; \
	  apt-get update -qq && apt-get install -y -qq docker-registry >/dev/null; } || echo "docker-registry could not be installed: the image-pinning tests will say so"
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { echo "installing redis-server (TLS-capable, for the online store's deployment tests) from Debian"; \
	  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } || echo "redis-server could not be installed: the online store's deployment tests will say so"
	$(PY) -m pytest $(PYTEST_ARGS)

bench: up
	@command -v hey >/dev/null || { echo "installing hey (HTTP load generator) from Debian"; \
	  apt-get update -qq && apt-get install -y -qq hey >/dev/null; } || echo "hey could not be installed: the serving benchmark will say so"
	$(PY) -m bench $(BENCH_ARGS)

airflow: up
	$(PY) -m orchestration.local_airflow

# Mutation testing (mutmut, configured in pyproject.toml): every mutant must fail a test.
mutate: venv
	rm -rf mutants
	$(VENV)/bin/mutmut run
	$(VENV)/bin/mutmut export-cicd-stats >/dev/null
	@$(PY) -c "import json; s = json.load(open('mutants/mutmut-cicd-stats.json')); print(f\"mutation score: {s['killed']}/{s['total']} killed ({s['killed'] / s['total']:.1%}), {s['survived']} survived, {s['no_tests']} not run by the unit tests\")"
	@$(VENV)/bin/mutmut results

# Re-pin requirements.txt after editing requirements.in.
lock: venv
	$(UV) pip compile -q --python-version 3.11 --generate-hashes requirements.in -o requirements.txt
	$(UV) pip compile -q --python-version 3.11 --generate-hashes requirements-worker.in -c requirements.txt -o requirements-worker.txt

clean: down
	rm -rf $(VENV) .local data mutants
