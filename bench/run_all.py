"""Run every benchmark against one freshly started ``mlflow server`` and print their figures.

``make bench`` runs this file. Each scenario runs in a process of its own (so process-wide caches,
such as resolved experiment names, start empty), against the server started here:

* (a) ``requests_per_task``: the plugin's own requests per task, counted at the server;
* (b) ``parallel_trials``: 32 nested trials under ``asyncio.gather``, tracked vs untracked;
* (c) ``async_logging``: 2,000 metrics behind 5 ms of latency, synchronous vs ``async_logging``;
* (d) ``history``: requests and overhead per task with 10 vs 10,000 runs in the experiment;
* (e) ``sigterm``: the time from SIGTERM to exit of a pod blocked in native code, with and without the plugin;
* (f) ``epoch_logging``: parallel trials logging every epoch, untracked vs synchronous vs ``async_logging``;
* (g) ``outage``: a 20 s restart of the tracking server in the middle of a queued 16-trial study, against
  the same study with no outage (on a server of its own, which it stops and starts again);
* (h) ``import_cost``: import time and memory of the plugin, and of an untracked task beside it;
* (i) ``tracing``: wall time and requests of a small study untraced, traced (``tracing=True``) and with
  bare ``mlflow.start_span`` calls making the same spans.

Each scenario can also run alone: ``python -m bench.parallel_trials`` starts its own server.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python bench/run_all.py``: make ``bench`` importable
    sys.path.insert(0, str(ROOT))

from bench._support import start_server  # noqa: E402

SCENARIOS = (
    "requests_per_task",
    "parallel_trials",
    "async_logging",
    "history",
    "sigterm",
    "epoch_logging",
    "outage",
    "import_cost",
    "tracing",
)


def main() -> int:
    """Start the server, run each scenario against it, and return non-zero if one of them failed."""
    print(
        f"flyteplugins-mlflow benchmarks: python {platform.python_version()}, flyte {version('flyte')}, "
        f"mlflow {version('mlflow')}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    print("starting mlflow server (SQLite in a temporary directory, gunicorn with 2 workers) ...", flush=True)
    started = time.perf_counter()
    failed = []
    with start_server() as server:
        for name in SCENARIOS:
            command = [
                sys.executable,
                "-m",
                f"bench.{name}",
                "--tracking-uri",
                server.uri,
                "--db",
                str(server.db),
            ]
            if server.pgid is not None:
                command += ["--pgid", str(server.pgid)]
            begun = time.perf_counter()
            result = subprocess.run(command, cwd=ROOT, check=False)
            print(f"[{name}: {time.perf_counter() - begun:.0f}s]", flush=True)
            if result.returncode:
                failed.append(name)
    print(
        f"\nall benchmarks: {time.perf_counter() - started:.0f}s" + (f"; FAILED: {failed}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
