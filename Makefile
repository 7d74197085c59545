# tokendyn: `make run` (install + main job) and `make test` (default suite) work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
REPORT ?= report

.PHONY: install run test test-all bench lint clean

$(BIN)/tokendyn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# A CPU build of torch first (from this machine's wheel cache); pyproject keeps torch>=2.4.
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/tokendyn

install: $(BIN)/tokendyn

run: install
	$(BIN)/tokendyn reproduce --quick --out $(REPORT)

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: install
	$(BIN)/tokendyn bench --d 2 --d 3 --d 4 --d 8 --d 16 --large

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) $(REPORT) .pytest_cache build *.egg-info src/*.egg-info
