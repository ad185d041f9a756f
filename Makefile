# The two commands of the README: `make demo` and `make test`. Both create the venv when it is missing.
# The newest of Python 3.13, 3.12 and 3.11 that runs here; `make PYTHON=python3.12 ...` picks another.
PYTHON ?= $(firstword $(foreach p,python3.13 python3.12 python3.11,$(shell $(p) -c 'import sys' >/dev/null 2>&1 && echo $(p))))
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test workers (pytest-xdist): a test file runs whole on one worker, so module fixtures start once.
TEST_WORKERS ?= 2

.PHONY: demo test venv sysdeps lint generate-check bench lock clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || test -n "$(PYTHON)" || { echo "Python 3.11, 3.12 or 3.13 is needed (or PYTHON=...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,orchestration,sandbox,spark]"
	@touch $(STAMP)

venv: $(STAMP)

## System packages the tests need (OpenSSH's sshd); installed with apt when absent.
sysdeps:
	@bash .ci/system-deps

demo: venv
	$(BIN)/elt demo

test: venv sysdeps
	$(BIN)/elt generate --check
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: venv
	$(BIN)/ruff check loaders tests bench examples
	$(BIN)/ruff format --check loaders tests bench examples
	$(BIN)/mypy
	$(BIN)/sqlfluff lint models --disable-progress-bar

## The benchmark harness (not a test): bench/results/results.md and results.png. BENCH_ARGS="--size-mb 200" to size it.
bench: venv sysdeps
	$(BIN)/python -m bench.run $(BENCH_ARGS)

generate-check: venv
	$(BIN)/elt generate --check

## Refresh the lock (constraints.txt) after changing pyproject.toml.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev,orchestration,sandbox,spark]"
	$(BIN)/python -m pip freeze --exclude-editable > constraints.txt

clean:
	rm -rf target warehouse/* .pytest_cache  # warehouse/.gitkeep stays: dbt needs the folder
