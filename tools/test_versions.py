"""The versions of mlflow and flyte that the README claims, each pair tested in a venv of its own
(``make test-versions``).

For each pair, a venv under ``.venv-versions/`` named after the two versions and a hash of
``pyproject.toml`` (built once, and again when the dependencies change) gets the package, that mlflow
and that flyte, and whatever else pip resolves for them: nothing else is pinned, so the venv is what
``pip install flyteplugins-mlflow mlflow==X flyte==Y`` gives a user (SQLAlchemy included). Then:

- ``demo``: ``examples/quickstart.py`` (``make demo``) into a fresh SQLite file, MLflow's embedded
  SQL store, the README's first promise;
- ``pytest``: a fast end-to-end subset against ``mlflow server`` on SQLite: the documented API, parallel
  trials, each trial's models (logged and autologged, read back, with their provenance), the run stack
  and state patches that reach into MLflow's internals, the outage journal with its replay, and queued
  metrics that fetch no run.

Pairs run two at a time (two cores: each pair's tests are mostly one process waiting on another).
Each pair's output goes to ``.venv-versions/<pair>.log``; a failing pair's tail is printed. Exits 1
if any pair fails.

Usage: ``python -m tools.test_versions [--list] [--oldest] [--only MLFLOW-FLYTE ...] [--jobs N]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from tools.test_pythons import ROOT, build_venv, run_in

VENVS = ROOT / ".venv-versions"


class Pair(NamedTuple):
    """An mlflow release and a flyte release, installed together."""

    mlflow: str
    flyte: str

    @property
    def name(self) -> str:
        """``<mlflow>-<flyte>``, the venv's and the log's name."""
        return f"{self.mlflow}-{self.flyte}"


# The README claims mlflow 3.4 or newer and flyte 2.12 or newer: mlflow's floor, a release in the middle
# and the last 3.17, each with both flyte 2.12 releases, and the newest mlflow (what .venv resolves).
PAIRS = (
    Pair("3.4.0", "2.12.0"),
    Pair("3.4.0", "2.12.1"),
    Pair("3.10.1", "2.12.0"),
    Pair("3.10.1", "2.12.1"),
    Pair("3.17.2", "2.12.0"),
    Pair("3.17.2", "2.12.1"),
    Pair("3.18.0", "2.12.1"),
)
OLDEST = PAIRS[0]

TESTS = (
    "tests/test_smoke.py",  # the documented API's first run: shared, nested and new runs
    "tests/test_concurrency.py",  # 32 parallel trials, three ways
    "tests/test_state.py",  # each trial's logged, last and active model; autologged fits, one model each
    "tests/test_provenance.py",  # models carry the task's provenance (MLflow's context registry)
    "tests/test_runstack.py",  # the run stack that stands in for MLflow's thread-local one
    # The outage journal and its replay. Its SIGTERM case is left out: it needs torch's gloo.
    "tests/test_outages.py::test_past_outage_timeout_a_journal_keeps_everything_and_replays_exactly_once",
    "tests/test_outages.py::test_a_journal_under_a_remote_prefix_goes_through_flytes_storage",
    "tests/test_outages.py::test_the_replay_command_has_help",
    # Queued metrics fetch no run (MLflow 3.4 did, per call), and still link to a model at their step.
    "tests/test_request_counts.py::test_queued_metrics_never_fetch_the_run",
    "tests/test_request_counts.py::test_queued_metrics_at_a_models_step_are_linked_to_it_as_mlflow_links_them",
)
_REPORT = (
    "from importlib.metadata import version; "
    "print(', '.join(f'{n} {version(n)}' for n in ('mlflow', 'flyte', 'sqlalchemy')))"
)


def venv_for(pair: Pair) -> Path:
    """The venv for ``pair``, built once per ``pyproject.toml``: the package, the pair, the tools."""
    requirements = ["-e", f"{ROOT}[versions]", f"mlflow=={pair.mlflow}", f"flyte=={pair.flyte}"]
    return build_venv(Path(sys.executable), VENVS, pair.name, requirements)


def check(pair: Pair, log: Path) -> list[str]:
    """Build ``pair``'s venv if needed and run the demo and the subset with it, into ``log``; what failed."""
    with log.open("w") as out:
        try:
            venv = venv_for(pair)
        except subprocess.CalledProcessError as e:
            out.write(f"venv set-up failed: {e}\n")
            return ["venv"]
        out.flush()
        run_in(venv, "-c", _REPORT, log=out)
        failed: list[str] = []
        with tempfile.TemporaryDirectory(prefix="demo-") as demo:
            if not run_in(venv, "examples/quickstart.py", f"sqlite:///{demo}/mlflow.db", log=out):
                failed.append("demo")
        if not run_in(venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, log=out):
            failed.append("pytest")
    return failed


def main(argv: list[str]) -> int:
    """Run every pair (or those asked for); 1 if any fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the pairs, then stop")
    parser.add_argument("--oldest", action="store_true", help=f"only the oldest pair, {OLDEST.name}")
    parser.add_argument("--only", nargs="+", metavar="MLFLOW-FLYTE", help="only these pairs")
    parser.add_argument("--jobs", type=int, default=2, help="pairs at a time (default 2)")
    args = parser.parse_args(argv)
    pairs = [OLDEST] if args.oldest else list(PAIRS)
    if args.only:
        unknown = set(args.only) - {p.name for p in PAIRS}
        if unknown:
            parser.error(
                f"--only: no pair {', '.join(sorted(unknown))}; the pairs: {' '.join(p.name for p in PAIRS)}"
            )
        pairs = [p for p in pairs if p.name in args.only]
    if args.list:
        for pair in pairs:
            print(f"mlflow {pair.mlflow}, flyte {pair.flyte}")
        return 0
    VENVS.mkdir(exist_ok=True)
    results: dict[Pair, str] = {}
    started = time.monotonic()

    def one(pair: Pair) -> None:
        log = VENVS / f"{pair.name}.log"
        print(f"--- mlflow {pair.mlflow}, flyte {pair.flyte}: started (log: {log})", flush=True)
        began = time.monotonic()
        failed = check(pair, log)
        took = time.monotonic() - began
        installed = log.read_text().split("\n", 1)[0] if log.exists() else ""
        results[pair] = (
            f"{'failed: ' + ', '.join(failed) if failed else 'passed'} in {took:.0f}s ({installed})"
        )
        print(f"--- mlflow {pair.mlflow}, flyte {pair.flyte}: {results[pair]}", flush=True)
        if failed:
            print("\n".join(log.read_text().splitlines()[-60:]), flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, pairs))
    for pair in pairs:
        print(f"mlflow {pair.mlflow}, flyte {pair.flyte}: {results[pair]}")
    print(f"{len(pairs)} pair(s) in {time.monotonic() - started:.0f}s, venvs included")
    return 1 if any(not r.startswith("passed") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
