# The two set-up commands in the README are `make demo` and `make test`; CI runs `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test check lint types pytest browser fault-tools bench clean

# The venv: daybook with its test extras, then the harness the tests and the bench share
# (testing/daybook_testing/__init__.py says why it is a distribution of its own).
$(BIN)/daybook: pyproject.toml testing/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet -e ./testing
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

pytest: $(BIN)/daybook browser fault-tools
	$(BIN)/pytest

## Debian's chromium and chromium-driver for the dashboard's browser test, when missing.
## Only root can install them; others get a note (the test fails in CI without them).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
		echo "note: chromium or chromium-driver is missing and cannot be installed here;" \
			"the browser test will be skipped (outside CI) or fail (in CI)"; \
	fi

## iproute2 (`ip`, `ss`) for the fault suite's network-namespace test, when missing.
## Only root can install it, and only root can run that test; others skip it.
fault-tools:
	@if command -v ip >/dev/null && command -v ss >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing iproute2 for the network fault test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq iproute2 >/dev/null; \
	else \
		echo "note: iproute2 is missing and cannot be installed here;" \
			"the network fault test will be skipped"; \
	fi

bench: $(BIN)/daybook
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .demo .mypy_cache .ruff_cache .pytest_cache
