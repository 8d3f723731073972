# Tenantry — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_PYTHON_DOWNLOADS := never
PYTHON ?= python3
# uv runs as a module of the machine's Python, so it works wherever pip put it.
UV ?= $(PYTHON) -m uv

.PHONY: help uv install lint format test soak bench dev stop tenantctl up down

help: ## Show the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

uv: ## Install uv (from PyPI) when it is missing
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv 2>/dev/null || $(PYTHON) -m pip install --quiet --user uv
	@$(UV) --version >/dev/null 2>&1 || { echo "uv is missing and '$(PYTHON) -m pip install uv' failed: install uv"; exit 1; }

install: uv ## Create .venv with every workspace package and the dev tools
	@$(UV) sync --frozen --all-packages --python $(PYTHON) --quiet

lint: install ## ruff (lint + format check) and mypy --strict
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy libs/common/src libs/devtools/src services/tenant-service/src services/gateway/src libs/app/src services/notes/src

format: install ## Apply ruff's fixes and formatting
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

test: install ## All tests, against real PostgreSQL and Redis (installs postgresql, redis-server, wrk and chromium when missing)
	@$(UV) run python -c "from tenantry_devtools import ensure_binaries; ensure_binaries(install=True, wrk=True, chromium=True)" \
		|| [ -n "$$TEST_DATABASE_URL" ]
	$(UV) run pytest -n 2 --dist loadfile $(PYTEST_ARGS)

SOAK_SECONDS ?= 300

soak: install ## Long load runs (tests/soak, SOAK_SECONDS=300): wrk, memory, fds, create/purge cycles
	@$(UV) run python -c "from tenantry_devtools import ensure_binaries; ensure_binaries(install=True)" \
		|| [ -n "$$TEST_DATABASE_URL" ]
	SOAK_SECONDS=$(SOAK_SECONDS) $(UV) run pytest tests/soak $(PYTEST_ARGS)

bench: install ## Benchmarks vs nginx and raw Postgres -> docs/benchmarks.md, bench/results.json (ARGS="--only gateway --runs 3")
	$(UV) run python -m bench $(ARGS)

dev: install ## Run the platform locally (state in .run/; Ctrl-C stops it)
	@$(UV) run python -m tenantry_devtools.dev up

stop: ## Stop what `make dev` started
	@$(UV) run python -m tenantry_devtools.dev stop

tenantctl: install ## tenantctl against the platform of `make dev` (ARGS="tenants list")
	@$(UV) run python -m tenantry_devtools.dev tenantctl $(ARGS)

up: install ## Build and start the stack with Docker Compose; writes .env with generated secrets when missing
	@$(UV) run python -m tenantry_devtools.stack up

down: install ## Stop the Docker Compose stack (data stays in its volumes; add ARGS=-v to delete them)
	@$(UV) run python -m tenantry_devtools.stack down $(ARGS)
