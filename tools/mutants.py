"""Named breaking changes, each applied to a temporary copy of the project: every test listed for one
must fail, or the change "survives" and this script exits 1 (``make mutants``).

Each mutant is one exact text replacement in one module. It must match exactly once, so a change to
the module that moves the text makes the mutant fail loudly instead of silently testing nothing. The
tests of a mutant run in the copy, so the worktree is never touched; the copy is checked to be the
``flyteplugins.mlflow`` that Python imports there.

Usage: ``python tools/mutants.py [NAME ...]`` (all mutants without names; ``--list`` lists them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "flyteplugins/mlflow"
SKIP = shutil.ignore_patterns(
    ".git", ".venv*", "site", "mlruns", ".demo", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"
)

_THREAD_LOCAL_BINDING = """import threading as _threading


class _PerThread(_threading.local):
    value = None

    def get(self):
        return self.value

    def set(self, value):
        old, self.value = self.value, value
        return old

    def reset(self, token):
        self.value = token


_CALL = _PerThread()
"""


@dataclass(frozen=True)
class Mutant:
    """One breaking change: replace ``old`` (found exactly once) by ``new`` in ``module``."""

    name: str
    why: str
    module: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant(
        "runstack-thread-local",
        "the run stack's binding is kept per thread instead of per contextvars context",
        "_patches/current.py",
        "_CALL: contextvars.ContextVar[TrackedCall | None] = contextvars.ContextVar(\n"
        '    "flyteplugins_mlflow_call", default=None\n)\n',
        _THREAD_LOCAL_BINDING,
        (
            "tests/test_concurrency.py::test_parallel_trials_log_into_their_own_runs[gather-nested-async]",
            "tests/test_concurrency.py::test_parallel_trials_log_into_their_own_runs[gather-nested-sync-threads]",
            "tests/test_runstack.py::test_binding_follows_copied_context_into_threads",
        ),
    ),
    Mutant(
        "run-not-on-stack",
        "a tracked call binds an empty stack, so MLflow's fluent calls do not find the task's run",
        "_engine/binding.py",
        "        runs=[opened.run],\n",
        "        runs=[],\n",
        (
            "tests/test_concurrency.py::test_parallel_trials_log_into_their_own_runs[gather-nested-sync-threads]",
        ),
    ),
    Mutant(
        "owner-check-dropped",
        "the run stack's owner check is gone: an untracked child task sees its caller's run",
        "_patches/current.py",
        "if call is None or (call.owner is not None and call.owner != current_task()):",
        "if call is None:",
        (
            "tests/test_runstack.py::test_an_untracked_child_does_not_see_its_callers_run[async-child]",
            "tests/test_runstack.py::test_an_untracked_child_does_not_see_its_callers_run[sync-child]",
        ),
    ),
    Mutant(
        "failure-ends-finished",
        "a run whose task raised ends FINISHED instead of FAILED",
        "_runs/finish.py",
        "        return KILLED\n    return FAILED\n",
        "        return KILLED\n    return FINISHED\n",
        ("tests/test_status.py::test_failure_fails_the_run_and_propagates",),
    ),
    Mutant(
        "cancel-ends-failed",
        "a cancelled task's run ends FAILED instead of KILLED",
        "_runs/finish.py",
        "        return KILLED\n    return FAILED\n",
        "        return FAILED\n    return FAILED\n",
        ("tests/test_status.py::test_cancelled_and_timed_out_children_are_killed",),
    ),
    Mutant(
        "request-share-fetches",
        "a child sharing its caller's run in the same process fetches it (0 requests become 1 each)",
        "_runs/open.py",
        "if local_run is not None and local_run.info.run_id == p.run_id:",
        "if False:",
        ("tests/test_request_counts.py::test_auto_children_in_the_parents_process_make_no_requests",),
    ),
    Mutant(
        "request-tags-apart",
        "a child with its own run sets its tags in a request of their own (2 requests become 3)",
        "_runs/open.py",
        "                run = ActiveRun(create(tags))\n",
        "                run = ActiveRun(create({}))\n"
        "                client.set_tags(run.info.run_id, tags)\n",
        (
            "tests/test_request_counts.py::test_children_with_their_own_run_make_two_requests_each[nested]",
            "tests/test_request_counts.py::test_children_with_their_own_run_make_two_requests_each[new]",
        ),
    ),
    Mutant(
        "nodes-not-waited",
        "rank 0 sets the final status without waiting for the other nodes' system-metrics monitors",
        "_distributed/system_metrics.py",
        "        if self.node is None or not succeeded:\n            return\n",
        "        if True:\n            return\n",
        ("tests/test_nodes.py::test_every_node_monitors_into_rank_0s_run",),
    ),
    Mutant(
        "sigterm-watcher-not-started",
        "the SIGTERM watcher thread is created but never started",
        "_runs/sigterm.py",
        '        name="flyteplugins-mlflow-sigterm",\n        daemon=True,\n    ).start()\n',
        '        name="flyteplugins-mlflow-sigterm",\n        daemon=True,\n    )\n',
        (
            "tests/test_kills.py::test_sigterm_to_a_process_blocked_in_native_code[tracked-main-thread-in-gloo]",
            "tests/test_kills.py::test_sigterm_to_a_process_blocked_in_native_code[tracked-sync-task-in-gloo]",
        ),
    ),
)


def apply(root: Path, mutant: Mutant) -> None:
    """Make the change in the copy at ``root``.

    Raises:
        SystemExit: the text to replace does not occur exactly once.
    """
    path = root / PACKAGE / mutant.module
    text = path.read_text()
    found = text.count(mutant.old)
    if found != 1:
        msg = f"mutant {mutant.name}: the text to replace occurs {found} times in {mutant.module}, not once"
        raise SystemExit(msg)
    path.write_text(text.replace(mutant.old, mutant.new))


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root)}


def _check_imported_from(root: Path) -> None:
    probe = "import flyteplugins.mlflow as m; print(m.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, env=_env(root), capture_output=True, text=True, check=True
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(root.resolve()):
        msg = f"the copy is not what Python imports there: flyteplugins.mlflow comes from {out}"
        raise SystemExit(msg)


def outcomes(root: Path, tests: tuple[str, ...]) -> dict[str, str]:
    """Run ``tests`` in the copy; map each test id to ``passed``, ``failed``, ``error`` or ``skipped``."""
    report = root / "mutant-report.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *tests],
        cwd=root,
        env=_env(root),
        stdout=subprocess.DEVNULL,
        check=False,
    )
    if not report.exists():
        return {}
    results: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        test_id = f"{module}.py::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        results[test_id] = {"failure": "failed"}.get(outcome, outcome)
    return results


def trial(mutant: Mutant) -> list[str]:
    """Apply ``mutant`` to a fresh copy and run its tests; return its survivors (tests that did not fail,
    or were not found)."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        root = Path(tmp) / "project"
        shutil.copytree(ROOT, root, ignore=SKIP)
        apply(root, mutant)
        _check_imported_from(root)
        results = outcomes(root, mutant.tests)
    survivors = []
    for listed in mutant.tests:  # a test without its [parameters] stands for every one of its cases
        cases = {t: r for t, r in results.items() if t == listed or t.startswith(listed + "[")}
        survivors += [f"{t} ({r})" for t, r in cases.items() if r != "failed"] or (
            [] if cases else [f"{listed} (not run)"]
        )
    return survivors


def main(argv: list[str]) -> int:
    """Try the named mutants (all by default); 1 if any survives."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to try (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, then stop")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTANTS}
    unknown = sorted(set(args.names) - set(by_name))
    if unknown:
        parser.error(f"unknown mutant(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.names] or list(MUTANTS)
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.why}\n  " + "\n  ".join(m.tests))
        return 0
    survived = 0
    started = time.monotonic()
    for m in chosen:
        began = time.monotonic()
        survivors = trial(m)
        took = time.monotonic() - began
        verdict = "SURVIVED" if survivors else "caught"
        print(f"{m.name}: {verdict} in {took:.0f}s ({m.why})", flush=True)
        for s in survivors:
            print(f"  did not fail: {s}", flush=True)
        survived += bool(survivors)
    print(f"{len(chosen) - survived} of {len(chosen)} mutants caught in {time.monotonic() - started:.0f}s")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
