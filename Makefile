# The two set-up commands in the README are `make demo` and `make test`; CI runs `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test check lint types pytest bench clean

$(BIN)/daybook: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## Run the local demo on the embedded defaults (no S3, no Consul needed).
demo: $(BIN)/daybook
	PATH="$(abspath $(BIN)):$$PATH" bash deploy/demo.sh

## Lint, types and the whole test suite: what CI runs.
test: check

check: lint types pytest

lint: $(BIN)/daybook
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(BIN)/daybook
	$(BIN)/mypy

pytest: $(BIN)/daybook
	$(BIN)/pytest

bench: $(BIN)/daybook
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .demo .mypy_cache .ruff_cache .pytest_cache
