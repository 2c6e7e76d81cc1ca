# The two commands a new user needs: `make demo` (one SSD round on the demo model, on the CPU) and
# `make test`. Both run `make setup` first, which skips whatever is already done.
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.ssd-stamps/done

.PHONY: setup demo lint test test-fast bench clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml scripts/setup.sh common/models.py
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/ssd run --config configs/demo.yaml

# The habits, checked: the layers contract (pyproject's [tool.importlinter]), ruff, mypy.
lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest tests

test-fast: lint
	$(PY) -m pytest tests -m "not engine"

bench: setup
	$(PY) bench/sampling.py

clean:
	rm -rf $(VENV) models runs
