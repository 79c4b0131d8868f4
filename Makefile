# wa-relay developer commands. Each target creates or reuses .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,postgresql]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m demo

lint: $(VENV)/.installed
	$(BIN)/ruff check relay storage cli tests bench demo

test: lint
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
