"""Load: hundreds of parallel trials in one local run, each in its own run, none lost, none stuck.

The trials reach the session server through a loopback proxy that measures how many requests are
in flight at once, by kind: the plugin's own (``runs/create``, ``runs/update``) must never exceed
``MAX_CONCURRENT_REQUESTS``. The server's access log must show every request answered with 200:
past its connection pool, an ``mlflow server`` answers 400, and those failures are not retried.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any, cast

import flyte
import mlflow
import pytest
from flyte.extend import TaskTemplate
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import mlflow_config, mlflow_run
from flyteplugins.mlflow._transport.rest import MAX_CONCURRENT_REQUESTS
from tests.helpers.support import MlflowServer, Relay, own_run_id

env = flyte.TaskEnvironment(name="load")

NESTED_TRIALS = 200
NEW_TRIALS = 50
SYNC_TRIALS = 50
PARENT_TAG = "mlflow.parentRunId"
PLUGIN_PATHS = ("/runs/create", "/runs/update")
_ANSWERED = re.compile(r'"(GET|POST|PATCH|DELETE) (/api/2\.0/mlflow/[^ ?"]*)[^"]*" (\d{3})')


@mlflow_run(run_mode="nested")
@env.task
async def nested_trial(i: int) -> str:
    mlflow.log_param("trial", i)
    await asyncio.sleep(0)
    mlflow.log_metric("score", float(i))
    return own_run_id()


@mlflow_run(run_mode="new")
@env.task
async def new_trial(i: int) -> str:
    mlflow.log_param("trial", i)
    await asyncio.sleep(0)
    mlflow.log_metric("score", float(i))
    return own_run_id()


@mlflow_run(run_mode="nested")
@env.task
def sync_trial(i: int) -> str:
    mlflow.log_param("trial", i)
    mlflow.log_metric("score", float(i))
    return own_run_id()


@mlflow_run
@env.task
async def big_study(n: int) -> list[str]:
    ids = await asyncio.gather(*(nested_trial(i) for i in range(n)))
    return [own_run_id(), *ids]


@mlflow_run
@env.task
async def mixed_study(n_new: int, n_sync: int) -> list[str]:
    new_ids = asyncio.gather(*(new_trial(i) for i in range(n_new)))
    sync_ids = asyncio.gather(*(sync_trial.aio(i) for i in range(n_sync)))
    return [own_run_id(), *(await new_ids), *(await sync_ids)]


@pytest.fixture
def proxy(tracking_uri: str) -> Iterator[Relay]:
    """A relay in front of the session server that counts the plugin's requests in flight apart."""
    counting = Relay(tracking_uri, classify=lambda path: "plugin" if path.endswith(PLUGIN_PATHS) else "other")
    try:
        yield counting
    finally:
        counting.close()


def _answered(server: MlflowServer, since: int) -> list[tuple[str, str]]:
    """``(path, status)`` of every tracking request the server answered since ``since``."""
    server.requests(since)  # waits for the server to flush its log
    with server.log_path.open("rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    return [(m.group(2), m.group(3)) for m in _ANSWERED.finditer(text)]


def _run(task: TaskTemplate[Any, Any, Any], uri: str, experiment_id: str, **inputs: Any) -> list[str]:
    ctx = mlflow_config(tracking_uri=uri, experiment_id=experiment_id)
    run = flyte.with_runcontext(mode="local", custom_context=cast("dict[str, str]", ctx)).run(task, **inputs)
    ids: list[str] = run.outputs()[0]
    return ids


def _check_trial(run: Run, i: int, parent_id: str | None) -> None:
    assert run.info.status == "FINISHED"
    assert run.data.params == {"trial": str(i)}
    assert run.data.metrics == {"score": float(i)}
    assert run.data.tags.get(PARENT_TAG) == parent_id


def test_two_hundred_parallel_nested_trials(
    mlflow_server: MlflowServer,
    proxy: Relay,
    client: MlflowClient,
    experiment: tuple[str, str],
) -> None:
    """200 nested trials gathered at once each log into their own FINISHED run under the parent."""
    mark = mlflow_server.mark()
    parent_id, *trial_ids = _run(big_study, proxy.uri, experiment[1], n=NESTED_TRIALS)
    answered = _answered(mlflow_server, mark)

    runs = {r.info.run_id: r for r in client.search_runs([experiment[1]], max_results=1000)}
    assert len(set(trial_ids)) == NESTED_TRIALS
    assert set(runs) == {parent_id, *trial_ids}
    for i, run_id in enumerate(trial_ids):
        _check_trial(runs[run_id], i, parent_id)
    assert runs[parent_id].info.status == "FINISHED"

    statuses = {status for _, status in answered}
    creates = sum(path.endswith("/runs/create") for path, _ in answered)
    updates = sum(path.endswith("/runs/update") for path, _ in answered)
    print(
        f"\nnested load: {len(runs)} runs ({NESTED_TRIALS} trials + parent), all FINISHED; "
        f"{len(answered)} requests answered, statuses {sorted(statuses)}; "
        f"peak in flight: plugin {proxy.peak['plugin']}, user logging {proxy.peak['other']}"
    )
    assert statuses == {"200"}
    assert (creates, updates) == (NESTED_TRIALS + 1, NESTED_TRIALS + 1)
    assert proxy.peak["plugin"] <= MAX_CONCURRENT_REQUESTS


def test_parallel_new_and_sync_trials(
    mlflow_server: MlflowServer,
    proxy: Relay,
    client: MlflowClient,
    experiment: tuple[str, str],
) -> None:
    """50 "new" async trials and 50 nested sync trials in worker threads, all at once, each in its own run."""
    mark = mlflow_server.mark()
    parent_id, *trial_ids = _run(mixed_study, proxy.uri, experiment[1], n_new=NEW_TRIALS, n_sync=SYNC_TRIALS)
    answered = _answered(mlflow_server, mark)
    new_ids, sync_ids = trial_ids[:NEW_TRIALS], trial_ids[NEW_TRIALS:]

    runs = {r.info.run_id: r for r in client.search_runs([experiment[1]], max_results=1000)}
    assert len(set(trial_ids)) == NEW_TRIALS + SYNC_TRIALS
    assert set(runs) == {parent_id, *trial_ids}
    for i, run_id in enumerate(new_ids):
        _check_trial(runs[run_id], i, None)
    for i, run_id in enumerate(sync_ids):
        _check_trial(runs[run_id], i, parent_id)
    assert runs[parent_id].info.status == "FINISHED"
    assert runs[parent_id].data.params == {}

    statuses = {status for _, status in answered}
    print(
        f"\nmixed load: {len(runs)} runs ({NEW_TRIALS} new + {SYNC_TRIALS} sync nested + parent), "
        f"all FINISHED; {len(answered)} requests answered, statuses {sorted(statuses)}; "
        f"peak in flight: plugin {proxy.peak['plugin']}, user logging {proxy.peak['other']}"
    )
    assert statuses == {"200"}
    assert proxy.peak["plugin"] <= MAX_CONCURRENT_REQUESTS
