# audience-sync — `make demo` runs the demo end to end, `make test` runs the whole test suite.
# Both set up .venv first (Python 3.11 through uv), so they work on a fresh machine.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(shell command -v uv 2>/dev/null)

.PHONY: help setup demo test lint sandbox bench clean

help: ## list targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

# --compile-bytecode writes every .pyc at install time: where PYTHONDONTWRITEBYTECODE is set, each
# process (every Airflow task, every CLI call) would otherwise compile Airflow from source, ~3 s each.
$(BIN)/audience-sync: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@if [ -z "$(UV)" ] && ! [ -x .tools/bin/uv ]; then \
	  echo "uv not found: installing it into .tools/ from PyPI"; \
	  $(PYTHON) -m venv .tools && .tools/bin/python -m pip install --quiet uv; fi
	@UVBIN=$$(command -v uv || echo .tools/bin/uv); \
	  $$UVBIN venv --quiet --allow-existing -p "$$($(PYTHON) -c 'import sys; print(sys.executable)')" $(VENV) && \
	  $$UVBIN pip install --quiet --compile-bytecode -p $(BIN)/python -r requirements.txt -r requirements-dev.txt -c constraints.txt && \
	  $$UVBIN pip install --quiet -p $(BIN)/python --no-deps -e .
	@touch $@

setup: $(BIN)/audience-sync ## create .venv and install everything

demo: setup ## generate a demo CRM, start the sandbox, run the demo campaign through Airflow, print a summary
	$(BIN)/audience-sync demo

test: setup ## lint, then the whole test suite (starts its own PostgreSQL and sandbox)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup ## ruff (incl. Airflow AIR rules)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

sandbox: setup ## serve the local platform sandbox on port 8990
	$(BIN)/audience-sync sandbox --port 8990

clean: ## remove the venv and local state
	rm -rf $(VENV) .tools .airflow .demo
