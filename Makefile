# Two commands on a fresh machine with only Python 3.11+:  make run  /  make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint audit bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 'setuptools>=83'
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(BIN)/syncnode up

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
