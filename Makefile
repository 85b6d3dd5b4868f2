# Two commands: `make run` starts everything, `make test` runs the whole suite.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON_PREFERENCE := only-system
UV = $(shell ./scripts/bootstrap.sh | tail -n 1)

.PHONY: run test test-fast lint format bootstrap browser asyncapi bench deploy-smoke migrate

bootstrap:
	@./scripts/bootstrap.sh >/dev/null

run:
	@uv_bin="$$(./scripts/bootstrap.sh | tail -n 1)" && exec "$$uv_bin" run --frozen brokerlink-run

# `make migrate LEGACY=path/to/investment_tracker.db [ARGS="--dry-run"]`: import a legacy database
# into the running `make run` stack (its data in BROKERLINK_DATA_DIR, default .data), or into
# DATABASE_URL when set; account-api keeps running. `make migrate ARGS=--rollback` undoes the last.
migrate:
	@uv_bin="$$(./scripts/bootstrap.sh | tail -n 1)" && exec "$$uv_bin" run --frozen brokerlink-migrate \
	  --stack "$${BROKERLINK_DATA_DIR:-.data}" $(if $(LEGACY),--source "$(LEGACY)") $(ARGS)

test:
	@uv_bin="$$(./scripts/bootstrap.sh | tail -n 1)" && \
	  ./scripts/install-browser.sh && \
	  $(MAKE) --no-print-directory lint UV_BIN="$$uv_bin" && \
	  "$$uv_bin" run --frozen pytest

# The fast layer (pure rules, use cases over in-memory fakes, TestNatsBroker wiring): no servers,
# seconds. Plugins only the full suite needs stay off to keep start-up cheap.
test-fast:
	@uv_bin="$$(./scripts/bootstrap.sh | tail -n 1)" && \
	  "$$uv_bin" run --frozen pytest -m fast -q -p no:schemathesis -p no:hypothesispytest shared/tests services tests/house_rules

lint:
	@uv_bin="$${UV_BIN:-$$(./scripts/bootstrap.sh | tail -n 1)}" && \
	  "$$uv_bin" run --frozen ruff check . && \
	  "$$uv_bin" run --frozen ruff format --check . && \
	  "$$uv_bin" run --frozen mypy shared/src shared-dev/src && \
	  "$$uv_bin" run --frozen lint-imports

format:
	@uv_bin="$$(./scripts/bootstrap.sh | tail -n 1)" && "$$uv_bin" run ruff check --fix . && "$$uv_bin" run ruff format .

# Every bench in its short mode, compared with bench/budgets.json; not part of `make test`.
bench:
	@uv_bin="$$(./scripts/bootstrap.sh | tail -n 1)" && "$$uv_bin" run --frozen python bench/gate.py

asyncapi:
	@uv_bin="$$(./scripts/bootstrap.sh | tail -n 1)" && "$$uv_bin" run --frozen python -m brokerlink_shared.asyncapi > docs/asyncapi.json

# docker-compose.yml and the production Kubernetes overlay started as local processes, exactly as
# written, and used through the REST API (also part of `make test`).
deploy-smoke:
	@uv_bin="$$(./scripts/bootstrap.sh | tail -n 1)" && "$$uv_bin" run --frozen pytest tests/deploy/test_deploy_smoke.py -q
