# Two commands on a fresh machine with only Python 3.11+:  make run  /  make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run down test lint audit bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	@echo "Installing SyncNode into $(VENV) (a few minutes the first time)..."
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip 'setuptools>=83'
	@$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

run: install
	@$(BIN)/syncnode up

# Stops a `make run` started in another terminal (or left behind by a closed one).
down:
	@$(BIN)/syncnode down

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# Every installed package against .ci/advisories.json (and pip-audit's PyPI service when it answers).
audit: install
	$(BIN)/python .ci/audit.py

bench: install
	$(BIN)/python -m tests.bench.chat

clean:
	rm -rf $(VENV) .syncnode
