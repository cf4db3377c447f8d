"""Scenario (c): 2,000 ``mlflow.log_metric`` calls to a server 5 ms away, synchronous vs ``async_logging``.

A loopback proxy (:class:`bench._support.Proxy`) adds 5 ms to every request, as a tracking server
on another machine would. The same tracked task logs 2,000 metrics once with synchronous logging
and once with ``async_logging=True``. Afterwards every metric is read back and counted, for those
two runs and for a task that fails right after queueing its 2,000 metrics.

Run: ``python -m bench.async_logging`` (or ``make bench`` for every scenario).
"""

from __future__ import annotations

import logging
import time

import attrs
import flyte
import mlflow
from mlflow.tracking import MlflowClient

from bench._support import Proxy, scenario_server, unique
from flyteplugins.mlflow import get_mlflow_run, mlflow_config, mlflow_run

env = flyte.TaskEnvironment(name="bench-async-logging")

METRICS = 2000
LATENCY = 0.005
TARGET = 5.0


@mlflow_run
@env.task
async def log_many(n: int, marker: str, fail: bool) -> float:
    mlflow.set_tag("bench.marker", marker)
    started = time.perf_counter()
    for i in range(n):
        mlflow.log_metric("loss", 1.0 / (i + 1), step=i)
    if fail:
        raise RuntimeError(f"failing on purpose after logging ({marker})")
    run = get_mlflow_run()
    assert run is not None
    return time.perf_counter() - started


@attrs.frozen
class Outcome:
    """One run of the task: wall time, time in the logging loop, requests sent, what the server holds."""

    label: str
    wall: float
    body: float | None
    requests: int
    stored: int
    status: str


def run_once(uri: str, experiment_id: str, label: str, *, queued: bool, fail: bool) -> Outcome:
    """Run the logging task behind the 5 ms proxy and read back what the server stored."""
    marker = unique("marker")
    body: float | None = None
    with Proxy(uri, delay=LATENCY) as proxy:
        config = mlflow_config(tracking_uri=proxy.uri, experiment_id=experiment_id, async_logging=queued)
        started = time.perf_counter()
        try:
            run = flyte.with_runcontext(mode="local", custom_context=config).run(
                log_many, n=METRICS, marker=marker, fail=fail
            )
            body = float(run.outputs()[0])
        except Exception:
            if not fail:
                raise
        wall = time.perf_counter() - started
        requests = len(proxy.requests())
    client = MlflowClient(uri)
    (found,) = client.search_runs([experiment_id], filter_string=f"tags.`bench.marker` = '{marker}'")
    stored = len(client.get_metric_history(found.info.run_id, "loss"))
    return Outcome(label, wall, body, requests, stored, found.info.status)


def main() -> None:
    """Print sync and async wall times for 2,000 metrics behind 5 ms of latency, and check every metric."""
    flyte.init()
    logging.getLogger("flyte").setLevel(logging.CRITICAL)  # the failing variant's traceback is expected
    with scenario_server("2,000 log_metric calls, synchronous vs async_logging") as server:
        experiment_id = MlflowClient(server.uri).create_experiment(unique("async-logging"))
        rows = [
            run_once(server.uri, experiment_id, "synchronous", queued=False, fail=False),
            run_once(server.uri, experiment_id, "async_logging=True", queued=True, fail=False),
            run_once(server.uri, experiment_id, "async, task fails", queued=True, fail=True),
        ]

    print()
    latency = f"{LATENCY * 1000:.0f} ms"
    print(f"(c) {METRICS} mlflow.log_metric calls in one tracked task, {latency} added to each request")
    print(f"{'logging':<20} {'task wall':>10} {'log loop':>9} {'requests':>9} {'metrics stored':>15}  status")
    for r in rows:
        body = f"{r.body:.2f}s" if r.body is not None else "-"
        print(f"{r.label:<20} {r.wall:>9.2f}s {body:>9} {r.requests:>9} {r.stored:>10}/{METRICS}  {r.status}")
    speedup = rows[0].wall / rows[1].wall
    complete = all(r.stored == METRICS for r in rows)
    verdict = "holds" if speedup >= TARGET and complete else "MISSED"
    print(f"target: async >= {TARGET:g}x faster than sync, every metric stored: {verdict} ({speedup:.1f}x)")


if __name__ == "__main__":
    main()
