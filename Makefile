# The two commands a newcomer needs: `make up` runs Flash Flow, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: up test install

$(BIN)/flashflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/flashflow

up: install
	$(BIN)/flashflow up

test: install
	$(BIN)/pytest --cov=actors --cov=flashflow --cov-report=term-missing $(PYTEST_ARGS)
	$(BIN)/coverage report --include='actors/*' --fail-under=95
