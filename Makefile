# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv browser demo ui docs test pytest typecheck lint bench screenshots clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: venv
	$(PY) examples/quickstart.py

# The MLflow UI on the demo's store (run `make demo` first), at the address it prints; Ctrl-C stops it.
ui: venv
	$(PY) examples/ui.py

test: venv browser docs pytest typecheck lint

# The documentation site, into site/; --strict turns every warning (a broken link, a bad docstring) into an error.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# The browser tests drive Debian's headless chromium; install it where it is missing.
browser:
	@command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# Both cores: each test module runs whole on one of two workers, so its module fixtures start once.
pytest: venv
	$(PY) -m pytest --durations=15 -n 2 --dist loadfile

# Re-take the pictures in docs/images from the browser tests (they are committed).
screenshots: venv browser
	FLYTE_MLFLOW_SCREENSHOTS=1 $(PY) -m pytest -m browser

typecheck: venv
	$(PY) -m mypy

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: venv
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .demo mlruns site
