# wa-relay developer commands. Each target creates or reuses .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench faults clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,postgresql]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m demo

lint: $(VENV)/.installed
	$(BIN)/ruff check relay storage cli tests bench demo faults

# Two pytest-xdist workers (docs/testing.md); TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

bench: $(VENV)/.installed
	$(BIN)/python -m bench

# The fault suite (docs/reliability.md): make faults [ROUNDS=1000] [SEED=7] [KINDS=a,b] [MAX_SECONDS=3600]
ROUNDS ?= 15
SEED ?= 1
FAULTS_JSON ?= faults-report.json
faults: $(VENV)/.installed
	$(BIN)/python -m faults --seed $(SEED) --rounds $(ROUNDS) --json $(FAULTS_JSON) $(if $(KINDS),--kinds $(KINDS)) $(if $(MAX_SECONDS),--max-seconds $(MAX_SECONDS))

clean:
	rm -rf $(VENV) build *.egg-info
