"""The plugin's own round-trips to the tracking server, counted in the real server's access log.

Tasks here log nothing (or a known number of metrics), so the requests the server answers while a
workflow runs are the plugin's. A regression that adds a lookup or a search to the task path fails
these tests. Also here: ``async_logging=True`` queues the task's logging and loses none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import flyte
import flyte.io
import mlflow
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking import MlflowClient, fluent
from mlflow.utils.rest_utils import MlflowHostCreds

from flyteplugins.mlflow import MlflowConfig, get_mlflow_run, mlflow_config, mlflow_run
from flyteplugins.mlflow._buffer.queue import RunQueue
from flyteplugins.mlflow._buffer.values import MAX_ENTITIES
from flyteplugins.mlflow._patches import run_reads
from flyteplugins.mlflow._tags import PARENT_EXPERIMENT_KEY, PARENT_RUN_KEY
from flyteplugins.mlflow._transport.client import client_for
from flyteplugins.mlflow._transport.rest import RestClient
from tests.conftest import MlflowServer
from tests.helpers.support import (
    BY_NAME,
    CREATE,
    GET_RUN,
    LOG_BATCH,
    LOG_INPUTS,
    LOG_METRIC,
    SEARCH,
    UPDATE,
    Relay,
    own_run_id,
)

env = flyte.TaskEnvironment(name="request-counts")


@mlflow_run
@env.task
async def top() -> str:
    run = get_mlflow_run()
    assert run is not None
    return str(run.info.run_id)


@mlflow_run(rank=1)
@env.task
async def rank_one() -> bool:
    return get_mlflow_run() is None


@mlflow_run
@env.task
async def auto_child() -> str:
    run = get_mlflow_run()
    assert run is not None
    return str(run.info.run_id)


@mlflow_run(run_mode="nested")
@env.task
async def nested_child() -> str:
    run = get_mlflow_run()
    assert run is not None
    return str(run.info.run_id)


@mlflow_run(run_mode="new")
@env.task
async def new_child() -> str:
    run = get_mlflow_run()
    assert run is not None
    return str(run.info.run_id)


@mlflow_run
@env.task
async def parent(kind: str, n: int) -> list[str]:
    child = {"auto": auto_child, "nested": nested_child, "new": new_child}[kind]
    ids = [await child() for _ in range(n)]
    run = get_mlflow_run()
    assert run is not None
    return [str(run.info.run_id), *ids]


@mlflow_run
@env.task
async def log_metrics(n: int) -> str:
    for i in range(n):
        mlflow.log_metric("loss", float(i), step=i)
    run = get_mlflow_run()
    assert run is not None
    return str(run.info.run_id)


class PlannedFailure(Exception):
    """Raised on purpose by a task after it has logged."""


@mlflow_run
@env.task
async def log_metrics_then_fail(n: int, marker: str) -> None:
    mlflow.set_tag("marker", marker)
    for i in range(n):
        mlflow.log_metric("loss", float(i), step=i)
    raise PlannedFailure(marker)


@mlflow_run(run_mode="nested")
@env.task
async def logging_trial(i: int, n: int) -> str:
    for step in range(n):
        mlflow.log_metric("score", float(i * 1000 + step), step=step)
        await asyncio.sleep(0.001 * (i % 4))  # trials finish at different times, others still logging
    run = get_mlflow_run()
    assert run is not None
    return str(run.info.run_id)


@mlflow_run
@env.task
async def logging_study(trials: int, n: int) -> list[str]:
    return list(await asyncio.gather(*(logging_trial(i, n) for i in range(trials))))


def run_local(config: MlflowConfig | dict[str, str], task: Any, **inputs: object) -> object:
    """Run ``task`` in Flyte's local mode with ``config`` as its context; return its first output."""
    return flyte.with_runcontext(mode="local", custom_context=config).run(task, **inputs).outputs()[0]


def counted(
    server: MlflowServer, config: MlflowConfig | dict[str, str], task: Any, **inputs: object
) -> tuple[object, list[tuple[str, str]]]:
    """Run ``task`` locally; return its output and the tracking requests the server answered meanwhile."""
    mark = server.mark()
    output = run_local(config, task, **inputs)
    return output, server.requests(mark)


def test_top_level_task_with_experiment_id_makes_three_requests(
    mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """A top-level task configured by experiment id creates its run with its tags, sets the status, then
    sweeps once for runs left RUNNING under it."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    _, seen = counted(mlflow_server, config, top)
    assert seen == [CREATE, UPDATE, SEARCH]


def test_experiment_name_is_resolved_once_per_process(
    mlflow_server: MlflowServer, client: MlflowClient
) -> None:
    """The first task that names an experiment looks it up once; later tasks in the process do not."""
    name = f"by-name-{uuid.uuid4().hex[:12]}"
    experiment_id = client.create_experiment(name)
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_name=name)
    first_id, first = counted(mlflow_server, config, top)
    second_id, second = counted(mlflow_server, config, top)
    assert first == [BY_NAME, CREATE, UPDATE, SEARCH]
    assert second == [CREATE, UPDATE, SEARCH]
    assert {client.get_run(str(r)).info.experiment_id for r in (first_id, second_id)} == {experiment_id}


def test_auto_children_in_the_parents_process_make_no_requests(
    mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """Children that share their parent's run in its process cost nothing: only the parent's requests."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    ids, seen = counted(mlflow_server, config, parent, kind="auto", n=5)
    assert isinstance(ids, list) and len(set(ids)) == 1
    assert seen == [CREATE, UPDATE, SEARCH]


def test_auto_child_in_a_process_of_its_own_makes_one_request(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A child that shares a run it did not see start (as in a remote pod) only fetches that run."""
    parent_run = client.create_run(experiment[1])
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    # What a parent in another process hands its children through the Flyte context:
    remote = {**config, PARENT_RUN_KEY: parent_run.info.run_id, PARENT_EXPERIMENT_KEY: experiment[1]}
    shared_id, seen = counted(mlflow_server, remote, auto_child)
    assert shared_id == parent_run.info.run_id
    assert seen == [GET_RUN]
    assert client.get_run(parent_run.info.run_id).info.status == "RUNNING"  # the child never ends it
    client.set_terminated(parent_run.info.run_id)


@pytest.mark.parametrize("kind", ["nested", "new"])
def test_children_with_their_own_run_make_two_requests_each(
    mlflow_server: MlflowServer, experiment: tuple[str, str], kind: str
) -> None:
    """A nested or new child creates its run (tags included) and sets its status: two requests, no more.
    The parent, the workflow's root, closes last and then sweeps once."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    ids, seen = counted(mlflow_server, config, parent, kind=kind, n=4)
    assert isinstance(ids, list) and len(set(ids)) == 5
    assert Counter(seen) == Counter({CREATE: 5, UPDATE: 5, SEARCH: 1})
    assert seen[0] == CREATE and seen[-2:] == [UPDATE, SEARCH]  # the parent's run opens first, closes last


def test_children_of_a_parent_configured_by_name_make_no_lookups(
    mlflow_server: MlflowServer, client: MlflowClient
) -> None:
    """The parent resolves the experiment name once and its nested children reuse the resolved id."""
    name = f"children-by-name-{uuid.uuid4().hex[:12]}"
    experiment_id = client.create_experiment(name)
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_name=name)
    ids, seen = counted(mlflow_server, config, parent, kind="new", n=3)
    assert Counter(seen) == Counter({BY_NAME: 1, CREATE: 4, UPDATE: 4, SEARCH: 1})
    assert seen[0] == BY_NAME
    assert isinstance(ids, list)
    assert {client.get_run(str(r)).info.experiment_id for r in ids} == {experiment_id}


def test_non_zero_rank_makes_no_requests(mlflow_server: MlflowServer, experiment: tuple[str, str]) -> None:
    """A task on rank 1 runs untracked and never contacts the server."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    untracked, seen = counted(mlflow_server, config, rank_one)
    assert untracked is True
    assert seen == []


def test_rank_from_the_environment_makes_no_requests(
    mlflow_server: MlflowServer, experiment: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``RANK=3`` in the environment a default tracker stays silent, so does its child."""
    monkeypatch.setenv("RANK", "3")
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    _, seen = counted(mlflow_server, config, rank_one)
    assert seen == []


def test_cost_does_not_grow_with_history(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """With 300 runs already in the experiment a parent and a nested child still make 2 requests each,
    plus the root's one sweep, whose cost is one request however many runs the experiment holds."""
    experiment_id = experiment[1]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: client.create_run(experiment_id), range(300)))
    assert len(client.search_runs([experiment_id], max_results=1000)) == 300
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment_id)
    _, seen = counted(mlflow_server, config, parent, kind="nested", n=1)
    assert seen == [CREATE, CREATE, UPDATE, UPDATE, SEARCH]


def test_async_logging_stores_every_metric_before_the_status(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """With ``async_logging=True`` 300 queued metrics all land, in a few batches, before ``FINISHED``."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=True)
    run_id, seen = counted(mlflow_server, config, log_metrics, n=300)
    history = client.get_metric_history(str(run_id), "loss")
    assert sorted(m.step for m in history) == list(range(300))
    assert client.get_run(str(run_id)).info.status == "FINISHED"
    batches = seen.count(LOG_BATCH)
    assert 1 <= batches < 10, f"{batches} log-batch requests: the metrics were not queued"
    assert LOG_METRIC not in seen
    assert seen[-2:] == [UPDATE, SEARCH]  # the status is set after the last batch, then the sweep
    assert "MLFLOW_ENABLE_ASYNC_LOGGING" not in os.environ
    assert "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS" not in os.environ


def test_sync_logging_sends_each_metric_as_it_is_logged(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Without ``async_logging`` each ``log_metric`` is its own request (the baseline the option improves)."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    run_id, seen = counted(mlflow_server, config, log_metrics, n=20)
    assert seen.count(LOG_METRIC) == 20
    assert LOG_BATCH not in seen
    assert len(client.get_metric_history(str(run_id), "loss")) == 20


def test_async_logging_stores_every_metric_when_the_task_fails(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A task failing after it queued 300 metrics still gets all of them stored; its run is ``FAILED``."""
    marker = uuid.uuid4().hex
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=True)
    mark = mlflow_server.mark()
    with pytest.raises(Exception, match=marker):
        run_local(config, log_metrics_then_fail, n=300, marker=marker)
    seen = mlflow_server.requests(mark)
    (run,) = client.search_runs([experiment[1]], filter_string=f"tags.marker = '{marker}'")
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(300))
    assert run.info.status == "FAILED"
    assert seen[-2:] == [UPDATE, SEARCH]


def test_async_logging_in_parallel_trials_loses_nothing(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Sixteen nested trials queueing metrics side by side each end with all 100 of theirs stored."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=True)
    ids = run_local(config, logging_study, trials=16, n=100)
    assert isinstance(ids, list) and len(set(ids)) == 16
    for i, run_id in enumerate(ids):
        history = client.get_metric_history(run_id, "score")
        assert sorted(m.value for m in history) == [float(i * 1000 + s) for s in range(100)]
        assert client.get_run(run_id).info.status == "FINISHED"


EXIT_CALLBACKS = """
import asyncio, atexit, sys
import flyte, mlflow
from mlflow.utils.async_logging.async_logging_queue import AsyncLoggingQueue
from flyteplugins.mlflow import mlflow_config, mlflow_run

real = AsyncLoggingQueue._at_exit_callback
def counted(self):
    print("exit callback", flush=True)
    real(self)
AsyncLoggingQueue._at_exit_callback = counted

env = flyte.TaskEnvironment(name="exit-callbacks")

@mlflow_run(run_mode="nested")
@env.task
async def trial(i: int) -> str:
    mlflow.log_metric("score", float(i))
    return mlflow.active_run().info.run_id

@mlflow_run
@env.task
async def study(n: int) -> list[str]:
    return list(await asyncio.gather(*(trial(i) for i in range(n))))

flyte.init()
config = mlflow_config(tracking_uri=sys.argv[1], experiment_id=sys.argv[2], async_logging=True)
for _ in range(3):
    ids = flyte.with_runcontext(mode="local", custom_context=config).run(study, n=10).outputs()[0]
    print("trials", len(set(ids)), "callbacks", atexit._ncallbacks(), flush=True)
"""


def test_async_logging_leaves_no_exit_callbacks_behind(
    mlflow_server: MlflowServer, experiment: tuple[str, str], tmp_path: Path
) -> None:
    """Three studies of ten queued-logging trials leave as many exit callbacks as one: the plugin's
    queue unregisters its own when the last task ends, and MLflow's queue is never started (so its
    callback, which MLflow registers each time its queue starts, never runs at exit).

    Run in a process of its own, so the exit is real.
    """
    script = tmp_path / "exit_callbacks.py"
    script.write_text(EXIT_CALLBACKS)
    done = subprocess.run(
        [sys.executable, str(script), mlflow_server.uri, experiment[1]],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).parent.parent,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    studies = [line for line in lines if line.startswith("trials 10 callbacks")]
    assert len(studies) == 3 and len(set(studies)) == 1, lines
    assert "exit callback" not in lines


def test_async_logging_restores_a_users_own_setting(
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process that had ``MLFLOW_ENABLE_ASYNC_LOGGING=false`` gets exactly that back after the task."""
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=True)
    run_id = run_local(config, log_metrics, n=5)
    assert os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] == "false"
    assert "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS" not in os.environ
    assert len(client.get_metric_history(str(run_id), "loss")) == 5


# --- queued logging in parallel trials (issue 11) ----------------------------------------------

EPOCHS = 20
KEYS = ("loss", "accuracy", "lr")


@mlflow_run(run_mode="nested")
@env.task
async def epoch_trial(i: int, epochs: int) -> str:
    mlflow.log_param("trial", i)
    for epoch in range(epochs):
        await asyncio.sleep(0)  # the trials interleave their calls, as trials that train do
        mlflow.log_metrics({key: i * 1000 + epoch * 10 + k for k, key in enumerate(KEYS)}, step=epoch)
    return own_run_id()


@mlflow_run
@env.task
async def epoch_study(trials: int, epochs: int) -> list[str]:
    return list(await asyncio.gather(*(epoch_trial(i, epochs) for i in range(trials))))


EDGE_VALUES: Final = (float("nan"), float("inf"), float("-inf"), -0.0, 1e-300, -1.5e300, 2.0**53 + 1)


@mlflow_run
@env.task
async def stamped(points: int) -> str:
    for i in range(points):
        mlflow.log_metric(KEYS[i % 3], i / 7, step=i // 3, timestamp=1_700_000_000_000 + i)
    for step, value in enumerate(EDGE_VALUES):  # what JSON cannot carry as a number, and the extremes
        mlflow.log_metric("edge", value, step=step * 2**40, timestamp=1_700_000_000_000 - step)
    mlflow.log_param("name", "trial é ✓")
    mlflow.set_tag("phase", "one")
    mlflow.set_tag("phase", "two")  # the later value wins, as it does logged synchronously
    return own_run_id()


@mlflow_run
@env.task
async def refused() -> str:
    mlflow.log_param("p", 1)
    mlflow.log_param("p", 2)  # the server refuses to change a param: only known once it is sent
    return own_run_id()


def test_a_queued_logging_trial_sends_one_log_batch(
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sixteen queued-logging trials interleaving 20 epochs of 3 metrics each: per trial one create, one
    log-batch with all its 61 values, one status; the study adds its own create, status and sweep.
    (The queue's interval is set beyond the study's length, so only the trials' ends send.)"""
    monkeypatch.setenv("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "60")
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=True)
    ids, seen = counted(mlflow_server, config, epoch_study, trials=16, epochs=EPOCHS)
    assert Counter(seen) == Counter({CREATE: 17, LOG_BATCH: 16, UPDATE: 17, SEARCH: 1})
    assert seen[-2:] == [UPDATE, SEARCH]
    assert isinstance(ids, list) and len(set(ids)) == 16
    for i, run_id in enumerate(ids):
        run = client.get_run(run_id)
        assert run.data.params == {"trial": str(i)} and run.info.status == "FINISHED"
        for k, key in enumerate(KEYS):
            history = client.get_metric_history(run_id, key)
            assert sorted((m.step, m.value) for m in history) == [
                (e, i * 1000 + e * 10 + k) for e in range(EPOCHS)
            ]


def test_a_queued_request_carries_at_most_a_thousand_values(
    mlflow_server: MlflowServer, experiment: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,500 queued metrics of one run go out in three log-batch requests (MLflow's per-request limit),
    however long the queue's interval."""
    monkeypatch.setenv("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "60")
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=True)
    _, seen = counted(mlflow_server, config, log_metrics, n=2500)
    assert seen == [CREATE, LOG_BATCH, LOG_BATCH, LOG_BATCH, UPDATE, SEARCH]


def mlflow_own() -> tuple[object, ...]:
    """What MLflow 3.4's fluent metrics read the run through (run_reads replaces them while it is in)."""
    return (
        fluent._get_model_ids_for_new_metric_if_exist,
        fluent._log_inputs_for_metrics_if_necessary,
        MlflowClient.log_outputs,
    )


MLFLOW_OWN: Final = mlflow_own()


@mlflow_run
@env.task
async def metrics_both_ways(n: int) -> str:
    for i in range(n):
        mlflow.log_metric("loss", float(i), step=i)
        mlflow.log_metrics({"acc": i / n, "lr": 0.1}, step=i)
    return own_run_id()


def test_queued_metrics_never_fetch_the_run(
    mlflow_server: MlflowServer, experiment: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued ``log_metric`` and ``log_metrics`` calls cost no request of their own: MLflow 3.4 fetched
    the run for each (two ``runs/get``), outside the queue and through an outage."""
    monkeypatch.setenv("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "60")
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=True)
    _, seen = counted(mlflow_server, config, metrics_both_ways, n=50)
    assert seen == [CREATE, LOG_BATCH, UPDATE, SEARCH]
    assert mlflow_own() == MLFLOW_OWN, "put back after the last call"


def _metrics_around_a_model(server: MlflowServer) -> str:
    """Log a model at step 1 and metrics at steps 1 and 2 in the active run; return the model's id."""
    model_id, _ = _model_requests(server, step=1)
    mlflow.log_metric("loss", 0.25, step=1)
    mlflow.log_metrics({"acc": 0.75}, step=1)
    mlflow.log_metric("loss", 0.125, step=2)
    return model_id


@mlflow_run
@env.task
def metrics_around_a_model() -> list[str]:
    return [own_run_id(), _metrics_around_a_model(_model_server[0])]


def _linked(client: MlflowClient, model_id: str) -> list[tuple[str, float, int]]:
    return sorted((m.key, m.value, m.step) for m in client.get_logged_model(model_id).metrics or [])


def test_queued_metrics_at_a_models_step_are_linked_to_it_as_mlflow_links_them(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Queued metrics logged after a model, at its step or another, are linked to it exactly as MLflow
    links the same calls in a run started by hand (3.4 by fetching the run per metric, which the
    plugin's queue does not; 3.18 from the active run; some releases between link none)."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=True)
    _model_server.append(mlflow_server)
    try:
        run_id, model_id = cast_strs(run_local(config, metrics_around_a_model))
    finally:
        _model_server.clear()
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        with mlflow.start_run(experiment_id=experiment[1]):
            plain_id = _metrics_around_a_model(mlflow_server)
    finally:
        fluent._last_logged_model_id.set(None)  # MLflow's own thread-locals, as other tests expect them
        fluent._last_active_run_id.set(None)
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert _linked(client, model_id) == _linked(client, plain_id)
    if run_reads.applies():
        assert _linked(client, model_id) == [("acc", 0.75, 1), ("loss", 0.25, 1)], "MLflow 3.4 links them"
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2]


def cast_strs(value: object) -> list[str]:
    """A task's ``list[str]`` output, checked."""
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_queued_logging_stores_what_synchronous_logging_stores(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """The same calls, queued or not, give the same metric history (keys, values, steps, timestamps),
    non-finite and extreme values and huge steps included, the same params and the same final tag value."""
    runs = {}
    for queued in (False, True):
        config = mlflow_config(
            tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=queued
        )
        runs[queued] = str(run_local(config, stamped, points=300))

    def history(run_id: str) -> dict[str, list[tuple[str, str, int, int]]]:
        return {  # repr: NaN equals NaN, and -0.0 is told from 0.0
            key: sorted(
                (m.key, repr(m.value), m.step, m.timestamp) for m in client.get_metric_history(run_id, key)
            )
            for key in (*KEYS, "edge")
        }

    assert history(runs[True]) == history(runs[False])
    assert all(len(history(runs[True])[key]) == 100 for key in KEYS)
    edge = [float(v) for _, v, _, _ in sorted(history(runs[True])["edge"], key=lambda p: p[2])]
    assert len(edge) == len(EDGE_VALUES) and math.isnan(edge[0])  # (the server stores ±inf as ±max float)
    assert {client.get_run(r).data.tags["phase"] for r in runs.values()} == {"two"}
    assert {client.get_run(r).data.params["name"] for r in runs.values()} == {"trial é ✓"}


def test_a_refused_queued_call_fails_the_task_at_its_end(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A queued call that the server refuses does not raise where it was made; the task fails at its
    end with the server's answer, and its run is FAILED."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=True)
    mark = mlflow_server.mark()
    with pytest.raises(
        Exception,
        match=r"queued MLflow logging call.*refused to store queued values "
        r"\(POST runs/log-batch\): HTTP 400",
    ):
        run_local(config, refused)
    assert mlflow_server.requests(mark)[:2] == [CREATE, LOG_BATCH]
    (run,) = client.search_runs([experiment[1]], filter_string="params.p = '1'")
    assert run.info.status == "FAILED"


def test_a_queued_batch_sent_again_is_stored_once(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Queued values go out through the plugin's own request path, which retries a log-batch whose
    answer was lost: the server keeps one copy of each metric point, and a param given again with the
    same value is accepted."""
    run_id = client.create_run(experiment[1]).info.run_id
    points = [Metric("m", float(i), 1_700_000_000_000 + i, i) for i in range(5)]
    server = client_for(mlflow_server.uri)
    assert isinstance(server, RestClient)
    for _ in range(2):
        server.log_batch(run_id, points, [Param("p", "1")], [RunTag("t", "x")])
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "m")] == [
        (i, float(i)) for i in range(5)
    ]
    assert client.get_run(run_id).data.params == {"p": "1"}


def test_a_queued_batch_whose_connection_drops_is_sent_again(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """The first log-batch is hung up on before it reaches the server; the queue's send retries it,
    and the drain reports no error."""
    dropped: list[str] = []

    def drop_first_batch(method: str, path: str) -> bool:
        if path.endswith("/runs/log-batch") and not dropped:
            dropped.append(path)
            return False
        return True

    relay = Relay(mlflow_server.uri, before=drop_first_batch)
    try:
        run_id = client.create_run(experiment[1]).info.run_id
        server = client_for(relay.uri)
        assert isinstance(server, RestClient)
        queue = RunQueue(server.log_batch)
        for i in range(10):
            queue.log_batch_async(run_id, [], [], [Metric("m", float(i), 0, i)])
        assert queue.drain(run_id) == []
        queue.close()
    finally:
        relay.close()
    assert dropped and [m.step for m in client.get_metric_history(run_id, "m")] == list(range(10))


def test_the_queue_holds_at_most_its_limit_when_the_server_is_slow(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Behind a server 50 ms away, 3,000 metrics through a queue limited to 500 values: it never queues
    more than 500 in memory, the rest go to its spool on disk, and every metric is stored, in order.
    What it holds is counted from outside the queue: the live ``Metric`` objects of the test's key, in
    the garbage collector's view, every 500 calls and after the last one. On top of the 500 queued,
    the request being sent holds up to 1,000 values read back from the spool (and one call is being
    looked at); unbounded, the queue would hold most of the 3,000."""

    def slow(method: str, path: str) -> bool:
        time.sleep(0.05)
        return True

    key = f"m-{uuid.uuid4().hex[:8]}"

    def live() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is Metric and o.key == key)

    relay = Relay(mlflow_server.uri, before=slow)
    try:
        store = RestStore(lambda: MlflowHostCreds(relay.uri))
        queue = RunQueue(store.log_batch, limit=500)
        run_id = client.create_run(experiment[1]).info.run_id
        held = []
        for i in range(3000):
            queue.log_batch_async(run_id, [], [], [Metric(key, float(i), 0, i)])
            if i % 500 == 499:
                held.append(live())
        assert max(held) <= 500 + MAX_ENTITIES + 1, f"the queue held {held} metrics in memory"
        assert queue.spilled > 0 and queue.spilled_bytes > 0
        assert queue.drain(run_id) == []
        assert live() == 0
        queue.close()
    finally:
        relay.close()
    history = client.get_metric_history(run_id, key)
    assert sorted(m.step for m in history) == list(range(3000))
    assert all(m.value == float(m.step) for m in history)


_cancelled: list[str] = []


@mlflow_run(run_mode="nested")
@env.task
async def queues_then_waits(n: int) -> str:
    for i in range(n):
        mlflow.log_metric("queued", float(i), step=i)
    _cancelled.append(own_run_id())
    await asyncio.sleep(600)
    return "never"


@mlflow_run
@env.task
async def cancels_its_child(n: int) -> str:
    child = asyncio.ensure_future(queues_then_waits(n))
    while not _cancelled:
        await asyncio.sleep(0.01)
    child.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await child
    return _cancelled[-1]


def test_a_cancelled_queued_logging_task_stores_everything_then_ends_killed(
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trial cancelled with 500 metrics still queued (the interval set beyond the test) stores all of
    them, in one request, before its run is marked KILLED."""
    monkeypatch.setenv("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "60")
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=True)
    run_id, seen = counted(mlflow_server, config, cancels_its_child, n=500)
    assert seen == [CREATE, CREATE, LOG_BATCH, UPDATE, UPDATE, SEARCH]
    assert client.get_run(str(run_id)).info.status == "KILLED"
    assert sorted(m.step for m in client.get_metric_history(str(run_id), "queued")) == list(range(500))


# --- a logged model's Flyte provenance -----------------------------------------------------------

LOGGED_MODELS: Final = "/api/2.0/mlflow/logged-models"
_model_server: list[MlflowServer] = []


def _model_requests(server: MlflowServer, step: int = 0) -> tuple[str, list[tuple[str, str]]]:
    """Log a tiny sklearn model in the active run; return its id and the requests it cost (ids elided)."""
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=100).fit(
        np.array([[0.0], [1.0], [0.1], [0.9]]), np.array([0, 1, 0, 1])
    )
    mark = server.mark()
    info = mlflow.sklearn.log_model(model, name="counted", step=step, pip_requirements=["scikit-learn"])
    seen = [(m, p.replace(str(info.model_id), "{id}")) for m, p in server.requests(mark)]
    return str(info.model_id), seen


@mlflow_run
@env.task
def logs_a_model() -> str:
    model_id, seen = _model_requests(_model_server[0])
    return json.dumps([model_id, seen])


def test_logged_model_provenance_costs_no_request(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Logging a model in a tracked task sends exactly the requests of the same log_model in a run started
    by hand: the Flyte provenance tags ride on MLflow's own create request."""
    _model_server.append(mlflow_server)
    try:
        config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
        tracked_id, tracked = json.loads(str(run_local(config, logs_a_model)))
    finally:
        _model_server.clear()
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        with mlflow.start_run(experiment_id=experiment[1]):
            plain_id, plain = _model_requests(mlflow_server)
    finally:
        fluent._last_logged_model_id.set(None)  # MLflow's own thread-locals, as other tests expect them
        fluent._last_active_run_id.set(None)
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert [tuple(r) for r in tracked] == plain
    one_model = f"{LOGGED_MODELS}/{{id}}"
    assert plain == [  # MLflow's own: the model is created once, with every tag, and finalized once
        GET_RUN,
        ("POST", LOGGED_MODELS),
        ("POST", "/api/2.0/mlflow/runs/outputs"),
        GET_RUN,
        ("GET", one_model),
        ("PATCH", one_model),
    ]
    tagged = client.get_logged_model(str(tracked_id)).tags
    assert tagged["flyte.action_name"] and tagged["flyte.run_name"]
    assert not any(k.startswith("flyte.") for k in client.get_logged_model(plain_id).tags)


# --- log_inputs: a task's inputs as params and datasets (issue 21) -----------------------------


@mlflow_run
@env.task
async def with_inputs(
    lr: float, depth: int, optimizer: str, data: flyte.io.File, table: flyte.io.File
) -> str:
    return own_run_id()


@mlflow_run
@env.task
async def with_inputs_logging(lr: float, depth: int, steps: int) -> str:
    for step in range(steps):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    return own_run_id()


@pytest.mark.parametrize("on", [True, False])
def test_inputs_cost_one_log_batch_and_one_log_inputs(
    on: bool, mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """With ``log_inputs=True`` a task's three params go in one log-batch and its two datasets in one
    log-inputs, between the create and the status; with it off the requests are those of a bare task."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], log_inputs=on)
    files = {"data": flyte.io.File(path="s3://b/train.csv"), "table": flyte.io.File(path="s3://b/t.csv")}
    run_id, seen = counted(mlflow_server, config, with_inputs, lr=0.1, depth=3, optimizer="adam", **files)
    run = client.get_run(str(run_id))
    if on:
        assert seen == [CREATE, LOG_BATCH, LOG_INPUTS, UPDATE, SEARCH]
        assert run.data.params == {"lr": "0.1", "depth": "3", "optimizer": "adam"}
        assert run.inputs is not None and len(run.inputs.dataset_inputs) == 2
    else:
        assert seen == [CREATE, UPDATE, SEARCH]
        assert run.data.params == {}


def test_a_task_without_inputs_records_nothing_and_asks_nothing(
    mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """``log_inputs=True`` on a task that takes no inputs adds no request."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], log_inputs=True)
    _, seen = counted(mlflow_server, config, top)
    assert seen == [CREATE, UPDATE, SEARCH]


@pytest.mark.parametrize("on", [True, False])
def test_with_async_logging_the_inputs_ride_the_queues_first_batch(
    on: bool,
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``async_logging=True`` the params are queued ahead of the body's metrics: the task still sends
    one log-batch, which carries both (the queue's interval is set beyond the task's length)."""
    monkeypatch.setenv("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "60")
    config = mlflow_config(
        tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=True, log_inputs=on
    )
    run_id, seen = counted(mlflow_server, config, with_inputs_logging, lr=0.1, depth=3, steps=5)
    assert seen == [CREATE, LOG_BATCH, UPDATE, SEARCH]
    run = client.get_run(str(run_id))
    assert run.data.params == ({"lr": "0.1", "depth": "3", "steps": "5"} if on else {})
    assert len(client.get_metric_history(str(run_id), "loss")) == 5


def test_more_params_than_a_request_takes_go_in_one_log_batch_per_hundred(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A tracked function whose mapping input flattens to 150 params sends them in two log-batch
    requests (MLflow takes at most 100 params in one)."""

    @mlflow_run(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], log_inputs=True)
    def tracked(grid: dict[str, int]) -> str:
        return own_run_id()

    mark = mlflow_server.mark()
    run_id = tracked({f"p{i:03d}": i for i in range(150)})
    seen = mlflow_server.requests(mark)
    assert seen == [CREATE, LOG_BATCH, LOG_BATCH, UPDATE]
    assert len(client.get_run(run_id).data.params) == 150


_ANY_REQUEST: Final = re.compile(r'"(GET|POST|PATCH|DELETE) (/api/[23]\.0/mlflow/[^ ?"]*|/v1/traces)')


def every_request(server: MlflowServer, since: int) -> list[tuple[str, str]]:
    """Every tracking and tracing request the server answered since ``since`` (traces included)."""
    time.sleep(0.3)
    with server.log_path.open("rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    return [(m.group(1), m.group(2)) for m in _ANY_REQUEST.finditer(text)]


def test_tracing_off_sends_no_trace_requests(
    mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """Without ``tracing``, a task makes its three run requests and not one trace request."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    mark = mlflow_server.mark()
    run_local(config, top)
    assert every_request(mlflow_server, mark) == [CREATE, UPDATE, SEARCH]


def test_tracing_on_sends_the_trace_and_its_spans_once(
    mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """With ``tracing``, the same task adds MLflow's two trace requests: its spans, then the trace."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], tracing=True)
    mark = mlflow_server.mark()
    run_local(config, top)
    seen = every_request(mlflow_server, mark)
    assert [r for r in seen if r in (CREATE, UPDATE, SEARCH)] == [CREATE, UPDATE, SEARCH]
    traced = Counter(r for r in seen if r not in (CREATE, UPDATE, SEARCH))
    assert traced == {("POST", "/v1/traces"): 1, ("POST", "/api/3.0/mlflow/traces"): 1}
