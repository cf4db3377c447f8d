"""Scenario (d): the plugin's cost per task with 10 versus 10,000 runs already in the experiment.

The history is written straight into the server's SQLite file (copies of one real run, with its
tags and a metric), which takes a second instead of the minutes that 10,000 ``create_run`` calls
would. Then, for each experiment, the same workflows run: requests are counted by a proxy in front
of the server, and the time a tracked task adds over an untracked one is measured directly. For
contrast, the last column times one ``search_runs`` by a tag every run of the history carries, the
kind of lookup a plugin that searched for its parent's run would make: that cost grows with the
history, the plugin's does not. The one search the plugin does make per workflow, the root's sweep
for runs left ``RUNNING`` under it, is timed too, with every run of the history carrying the sweep's
tag (for another root), as an experiment full of the plugin's own runs would.

Run: ``python -m bench.history`` (or ``make bench`` for every scenario).
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
import uuid
from pathlib import Path

import attrs
import flyte
from mlflow.tracking import MlflowClient

from bench._support import Proxy, scenario_server, unique
from flyteplugins.mlflow import MlflowConfig, mlflow_config, mlflow_run
from flyteplugins.mlflow._tags import ROOT_TAG, tag_equals

env = flyte.TaskEnvironment(name="bench-history")

HISTORIES = (10, 10_000)
CHILDREN = 4
REPEAT = 15


@env.task
async def plain_top() -> int:
    return 0


@mlflow_run
@env.task
async def tracked_top() -> int:
    return 0


@mlflow_run(run_mode="nested")
@env.task
async def nested_child(i: int) -> int:
    return i


@mlflow_run
@env.task
async def parent(n: int) -> int:
    return sum(await asyncio.gather(*(nested_child(i) for i in range(n))))


def add_history(db: Path, template_run_id: str, count: int) -> None:
    """Copy one run (row, tags, metrics) ``count`` times straight into the server's SQLite file."""
    ids = [(uuid.uuid4().hex, template_run_id) for _ in range(count)]
    with sqlite3.connect(db, timeout=60) as con:
        con.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status,"
            " start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id,"
            " deleted_time) SELECT ?, name, source_type, source_name, entry_point_name, user_id, status,"
            " start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id,"
            " deleted_time FROM runs WHERE run_uuid = ?",
            ids,
        )
        con.executemany(
            'INSERT INTO tags ("key", value, run_uuid) SELECT "key", value, ? FROM tags WHERE run_uuid = ?',
            ids,
        )
        con.executemany(
            'INSERT INTO latest_metrics ("key", value, timestamp, step, is_nan, run_uuid)'
            ' SELECT "key", value, timestamp, step, is_nan, ? FROM latest_metrics WHERE run_uuid = ?',
            ids,
        )
        con.executemany(
            'INSERT INTO metrics ("key", value, timestamp, run_uuid, step, is_nan)'
            ' SELECT "key", value, timestamp, ?, step, is_nan FROM metrics WHERE run_uuid = ?',
            ids,
        )


def run_count(db: Path, experiment_id: str) -> int:
    """How many runs the experiment holds, read from the database."""
    with sqlite3.connect(db, timeout=60) as con:
        row = con.execute(
            "SELECT COUNT(*) FROM runs WHERE experiment_id = ?", (int(experiment_id),)
        ).fetchone()
        return int(row[0])


def run_local(config: MlflowConfig, task: object, **inputs: object) -> None:
    """Run ``task`` once in Flyte's local mode."""
    flyte.with_runcontext(mode="local", custom_context=config).run(task, **inputs)


def median_wall(config: MlflowConfig, task: object) -> float:
    """The median wall time of ``REPEAT`` local runs of ``task``, after one warm-up."""
    run_local(config, task)
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        run_local(config, task)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@attrs.frozen
class Row:
    """The figures for one experiment."""

    runs: int
    top_requests: int
    child_requests: float
    searches: int
    overhead_ms: float
    sweep_ms: float
    search_ms: float


def measure(server_uri: str, db: Path, history: int) -> Row:
    """Build an experiment with ``history`` runs and measure the plugin's per-task cost in it."""
    client = MlflowClient(server_uri)
    experiment_id = client.create_experiment(unique(f"history-{history}"))
    tags = {"flyte.run_name": "template", "team": "bench", ROOT_TAG: "bench/history/another-run/a0"}
    template = client.create_run(experiment_id, tags=tags)
    client.log_metric(template.info.run_id, "loss", 0.5)
    client.set_terminated(template.info.run_id)
    add_history(db, template.info.run_id, history - 1)
    runs = run_count(db, experiment_id)

    with Proxy(server_uri) as proxy:
        config = mlflow_config(tracking_uri=proxy.uri, experiment_id=experiment_id)
        mark = proxy.mark()
        run_local(config, tracked_top)
        top = proxy.requests(mark)
        mark = proxy.mark()
        run_local(config, parent, n=CHILDREN)
        family = proxy.requests(mark)
    searches = sum(1 for _, path in [*top, *family] if "search" in path)
    child_requests = (len(family) - len(top)) / CHILDREN

    direct = mlflow_config(tracking_uri=server_uri, experiment_id=experiment_id)
    overhead = median_wall(direct, tracked_top) - median_wall(direct, plain_top)

    def median_search(query: str, max_results: int) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            client.search_runs([experiment_id], filter_string=query, max_results=max_results)
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    sweep = f"{tag_equals(ROOT_TAG, 'bench/history/this-run/a0')} and attributes.status = 'RUNNING'"
    return Row(
        runs,
        len(top),
        child_requests,
        searches,
        overhead * 1000,
        median_search(sweep, 1000),
        median_search("tags.team = 'bench'", 1),
    )


def main() -> None:
    """Print requests and overhead per task next to the size of the experiment's history."""
    flyte.init()
    with scenario_server("per-task cost with 10 vs 10,000 runs in the experiment") as server:
        rows = [measure(server.uri, server.db, history) for history in HISTORIES]

    print()
    print("(d) the plugin's cost per task against the experiment's history")
    print(
        f"{'runs in experiment':>18} {'requests/top-level':>18} {'requests/nested child':>21} "
        f"{'searches':>8} {'overhead/task':>13} {'the sweep':>9} {'one search by tag':>17}"
    )
    for r in rows:
        print(
            f"{r.runs:>18} {r.top_requests:>18} {r.child_requests:>21.1f} {r.searches:>8} "
            f"{r.overhead_ms:>11.1f}ms {r.sweep_ms:>7.1f}ms {r.search_ms:>15.1f}ms"
        )
    small, large = rows
    same = small.top_requests == large.top_requests and small.child_requests == large.child_requests
    verdict = "holds" if same and large.searches == 2 else "MISSED"
    print(
        f"target: same requests per task with {large.runs} runs, and one search per workflow "
        f"(the root's sweep; 2 workflows here): {verdict}"
    )
    print("overhead/task: median wall time of a tracked top-level task minus an untracked one")
    print("the sweep: the root's search for runs left RUNNING under it, every history run carrying its tag")
    print(
        "one search by tag: search_runs(filter_string=\"tags.team = 'bench'\", max_results=1), for contrast"
    )


if __name__ == "__main__":
    main()
