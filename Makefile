# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv browser postgres demo ui docs test checks pytest test-pythons other-pythons test-versions oldest-versions wheel-check mutants typecheck lint bench screenshots clean

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

test: venv browser postgres docs pytest
	$(MAKE) --no-print-directory -j4 --output-sync=target checks

# What `make test` runs after the suite, side by side: each of these mostly waits on processes it
# starts (servers, pip), and mypy takes one core. Each one's output is printed when it ends.
checks: other-pythons oldest-versions wheel-check typecheck lint

# The documentation site, into site/; --strict turns every warning (a broken link, a bad docstring) into an error.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# The browser tests drive Debian's headless chromium; install it where it is missing.
browser:
	@command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# tests/test_postgres.py starts a throwaway PostgreSQL with Debian's server; install it where it is missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)

# Both cores: each test module runs whole on one of two workers, so its module fixtures start once,
# in the order collected (tests/conftest.py puts the longest modules first; xdist would order them by
# their number of tests).
pytest: venv
	$(PY) -m pytest --durations=15 -n 2 --dist loadfile --no-loadscope-reorder

# A fast end-to-end subset on every CPython 3.10+ found (pyenv, PATH), each in its own cached venv
# under .venv-pythons/ (see tools/test_pythons.py).
test-pythons: venv
	$(PY) tools/test_pythons.py

# What `make test` runs of it: every version but .venv's, where the whole suite runs.
other-pythons: venv
	$(PY) tools/test_pythons.py --skip-current

# The wheel as a user installs it: built, checked against the source tree, installed into a fresh
# venv in a temporary directory, and the smoke test run against it there (see tools/wheel_check.py).
wheel-check: venv
	$(PY) tools/wheel_check.py

# The fast end-to-end subset on every mlflow and flyte pair the README claims, each in its own cached
# venv under .venv-versions/ (see tools/test_versions.py).
test-versions: venv
	$(PY) -m tools.test_versions

# What `make test` runs of it: the oldest pair (mlflow 3.4.0, flyte 2.12.0); .venv has the newest.
oldest-versions: venv
	$(PY) -m tools.test_versions --oldest

# Named breaking changes, each applied to a temporary copy: fails if the tests meant to catch one pass
# (see tools/mutants.py). Not part of `make test`.
mutants: venv
	$(PY) tools/mutants.py

# Re-take the pictures in docs/images from the browser tests (they are committed).
screenshots: venv browser
	FLYTE_MLFLOW_SCREENSHOTS=1 $(PY) -m pytest -m browser

typecheck: venv
	$(PY) -m mypy

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

bench: venv
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .venv-pythons .venv-versions .mypy_cache .ruff_cache .pytest_cache .demo mlruns site
