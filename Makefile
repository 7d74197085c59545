# tokendyn: `make run` (install + main job) and `make test` (default suite) work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
REPORT ?= report

# Debian's chromium for the browser test of `tokendyn view` (installed by `make browser` if absent)
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test test-all bench lint clean docs browser test-browser dist

$(BIN)/tokendyn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# A CPU build of torch first (from this machine's wheel cache); pyproject keeps torch>=2.4.
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[dev,models]"
	touch $(BIN)/tokendyn

install: $(BIN)/tokendyn

# the docs extra (mkdocs-material, mkdocstrings, mkdocs-gallery) on top of the install
$(BIN)/mkdocs: pyproject.toml $(BIN)/tokendyn
	$(BIN)/python -m pip install --quiet -e ".[dev,models,docs]"
	touch $(BIN)/mkdocs

run: install
	$(BIN)/tokendyn reproduce --quick --out $(REPORT)

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: install
	$(BIN)/tokendyn bench --d 2 --d 3 --d 4 --d 8 --d 16 --large

lint: install
	$(BIN)/ruff check src tests examples docs/*.py
	$(BIN)/ruff format --check src tests examples docs/*.py

# the site into site/, warnings as errors (broken links, missing references, a failing example)
docs: $(BIN)/mkdocs
	$(BIN)/mkdocs build --strict --site-dir site

browser:
	@test -x $(CHROMIUM) || command -v chromium >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium)

# the browser test of `tokendyn view`: must run (not skip) here
test-browser: install browser
	TOKENDYN_REQUIRE_BROWSER=1 TOKENDYN_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q tests/viz/test_view.py

# sdist and wheel into dist/
dist: install
	$(BIN)/python -m build --outdir dist

clean:
	rm -rf $(VENV) $(REPORT) .pytest_cache build dist site docs/generated *.egg-info src/*.egg-info
