"""PostgreSQL as the tracking store: an ``mlflow server`` on a throwaway PostgreSQL, and the plugin's
documented API, parallel queued trials and the outage journal's replay against it.

The rest of the suite tracks into servers on SQLite; production servers mostly keep their runs in
PostgreSQL (or MySQL), whose transactions, locks and connection pool behave differently under many
writers. PostgreSQL is started by pytest-postgresql's ``postgresql_proc`` factory; PostgreSQL refuses
to run as root, so its ``pg_ctl`` is ``tests/helpers/pg_ctl_as_postgres``, which runs the real one as the
``postgres`` user when the tests run as root (as ``make test`` does here and in CI). ``make test``
installs Debian's ``postgresql`` where it is missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flyte
import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pytest_postgresql import factories
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor

from flyteplugins.mlflow import MlflowConfig, MlflowRun, RunMode, get_mlflow_run, mlflow_config, mlflow_run
from tests.helpers.support import REPLAY, MlflowServer, free_port, own_run_id, replayed_twice, serving

PG_CTL = Path(__file__).resolve().parent / "helpers" / "pg_ctl_as_postgres"
PARENT_TAG = "mlflow.parentRunId"

env = flyte.TaskEnvironment(name="postgres-tests")

postgresql_server = factories.postgresql_proc(executable=str(PG_CTL), host="127.0.0.1", port=None)


@pytest.fixture(scope="module")
def pg_server(
    postgresql_server: PostgreSQLExecutor, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """An ``mlflow server`` whose backend store is a fresh database on the throwaway PostgreSQL."""
    dbname = f"mlflow_{uuid.uuid4().hex[:8]}"
    pg = postgresql_server
    with DatabaseJanitor(user=pg.user, host=pg.host, port=pg.port, dbname=dbname, password=pg.password):
        # SQLAlchemy 2.x maps plain postgresql:// to psycopg2; name psycopg 3, the driver installed.
        backend = f"postgresql+psycopg://{pg.user}@{pg.host}:{pg.port}/{dbname}"
        server = MlflowServer(tmp_path_factory.mktemp("mlflow-postgres-server"), free_port(), backend=backend)
        yield from serving(server)


@pytest.fixture
def where(pg_server: MlflowServer) -> tuple[MlflowClient, str]:
    """A client of the PostgreSQL-backed server, and a fresh experiment on it."""
    client = MlflowClient(pg_server.uri)
    return client, client.create_experiment(f"pg-{uuid.uuid4().hex[:12]}")


def test_the_server_keeps_its_runs_in_postgresql(pg_server: MlflowServer) -> None:
    """The server under test really is on PostgreSQL (not a SQLite file next to it)."""
    assert pg_server.backend.startswith("postgresql+psycopg://")
    assert not (pg_server.root / "mlflow.db").exists()


# --- (c) the documented API: run modes auto, new and nested ---------------------------------------


@mlflow_run(run_mode="nested")
@env.task
async def nested_trial(i: int) -> str:
    mlflow.log_param("i", i)
    mlflow.log_metric("score", float(i))
    return own_run_id()


@mlflow_run
@env.task
async def shares() -> str:
    mlflow.log_metric("shared", 1.0)
    return own_run_id()


independent = MlflowRun(run_mode=RunMode.NEW, tags={"kind": "independent"})


@independent
@env.task
async def starts_its_own() -> str:
    mlflow.log_param("own", "yes")
    return own_run_id()


@mlflow_run
@env.task
async def smoke_parent(n: int) -> list[str]:
    run = get_mlflow_run()
    assert run is not None
    mlflow.log_param("n", n)
    trials = await asyncio.gather(*(nested_trial(i) for i in range(n)))
    return [run.info.run_id, await shares(), await starts_its_own(), *trials]


def test_the_documented_api_on_postgresql(pg_server: MlflowServer, where: tuple[MlflowClient, str]) -> None:
    """A parent with an ``auto`` child (it shares the parent's run), a ``new`` child (a top-level run
    of its own) and four ``nested`` trials in parallel (each its own run under the parent's): every
    run FINISHED with exactly what its task logged, all read back from PostgreSQL."""
    client, experiment_id = where
    ctx = mlflow_config(tracking_uri=pg_server.uri, experiment_id=experiment_id)
    ids = flyte.with_runcontext(mode="local", custom_context=ctx).run(smoke_parent, n=4).outputs()[0]
    parent_id, shared_id, own_id, *trials = ids
    assert shared_id == parent_id
    parent = client.get_run(parent_id)
    assert parent.data.params == {"n": "4"}
    assert parent.data.metrics == {"shared": 1.0}
    assert PARENT_TAG not in parent.data.tags
    own = client.get_run(own_id)
    assert own_id != parent_id and PARENT_TAG not in own.data.tags
    assert own.data.params == {"own": "yes"} and own.data.tags["kind"] == "independent"
    assert len(set(trials)) == 4 and parent_id not in trials
    for i, run_id in enumerate(trials):
        run = client.get_run(run_id)
        assert run.data.tags[PARENT_TAG] == parent_id
        assert (run.data.params, run.data.metrics) == ({"i": str(i)}, {"score": float(i)})
    runs = client.search_runs([experiment_id])
    assert {r.info.run_id for r in runs} == {parent_id, own_id, *trials}
    assert {r.info.status for r in runs} == {"FINISHED"}


@mlflow_run
@env.task
async def fails() -> str:
    mlflow.log_param("before", "failing")
    raise ValueError("the training diverged")


def test_a_failing_task_ends_its_run_failed_on_postgresql(
    pg_server: MlflowServer, where: tuple[MlflowClient, str]
) -> None:
    """A task that raises ends its run FAILED, with what it logged before."""
    client, experiment_id = where
    ctx = MlflowConfig(tracking_uri=pg_server.uri, experiment_id=experiment_id)
    with pytest.raises(Exception, match="the training diverged"):
        flyte.with_runcontext(mode="local", custom_context=ctx).run(fails)
    (run,) = client.search_runs([experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.params == {"before": "failing"}


# --- (b) queued parallel trials ---------------------------------------------------------------------

TRIALS = 48
POINTS = 25


@mlflow_run(run_mode="nested", async_logging=True)
@env.task
async def queued_trial(i: int, points: int) -> str:
    mlflow.log_params({"trial": i, "lr": 0.01 * (i + 1)})
    for step in range(points):
        mlflow.log_metric("loss", 1.0 / (i + step + 1), step=step)
        if step % 5 == 0:
            await asyncio.sleep(0)  # let the other trials log between this trial's points
    mlflow.log_metric("best", float(i))
    return own_run_id()


@mlflow_run(run_mode="new", async_logging=True)
@env.task
def queued_sync_trial(i: int, points: int) -> str:
    mlflow.log_param("trial", i)
    for step in range(points):
        mlflow.log_metric("loss", 1.0 / (i + step + 1), step=step)
    return own_run_id()


@mlflow_run(async_logging=True)
@env.task
async def queued_study(n: int, points: int) -> list[str]:
    nested = asyncio.gather(*(queued_trial(i, points) for i in range(n)))
    threads = asyncio.gather(*(queued_sync_trial.aio(i, points) for i in range(n // 4)))
    ids = [*(await nested), *(await threads)]
    mlflow.log_metric("trials", float(len(ids)))
    return [own_run_id(), *ids]


def test_queued_parallel_trials_on_postgresql(
    pg_server: MlflowServer, where: tuple[MlflowClient, str]
) -> None:
    """48 nested async trials and 12 ``new`` sync trials in worker threads, all queuing their logging
    at once: every trial's run holds its params and every one of its points once, every run is
    FINISHED, and the server answered every request with 200 (none lost to its connection pool)."""
    client, experiment_id = where
    mark = pg_server.mark()
    ctx = mlflow_config(tracking_uri=pg_server.uri, experiment_id=experiment_id)
    ids = (
        flyte.with_runcontext(mode="local", custom_context=ctx).run(queued_study, TRIALS, POINTS).outputs()[0]
    )
    answered = pg_server.answers(mark)
    parent_id, *trial_ids = ids
    nested_ids, sync_ids = trial_ids[:TRIALS], trial_ids[TRIALS:]
    assert len(set(trial_ids)) == TRIALS + TRIALS // 4 and parent_id not in trial_ids

    runs = {r.info.run_id: r for r in client.search_runs([experiment_id], max_results=1000)}
    assert set(runs) == {parent_id, *trial_ids}
    problems: list[str] = []
    for kind, group, parent in (("nested", nested_ids, parent_id), ("sync", sync_ids, None)):
        for i, run_id in enumerate(group):
            run = runs[run_id]
            history = client.get_metric_history(run_id, "loss")
            got: tuple[Any, ...] = (
                run.info.status,
                run.data.params.get("trial"),
                run.data.tags.get(PARENT_TAG),
                sorted(m.step for m in history),
                sorted(m.value for m in history) == sorted(1.0 / (i + s + 1) for s in range(POINTS)),
            )
            want: tuple[Any, ...] = ("FINISHED", str(i), parent, list(range(POINTS)), True)
            if got != want:
                problems.append(f"{kind} trial {i}: {got}, expected {want}")
            if kind == "nested" and run.data.metrics.get("best") != float(i):
                problems.append(f"nested trial {i}: best {run.data.metrics.get('best')}")
    assert problems == [], "\n".join(problems)
    assert runs[parent_id].info.status == "FINISHED"
    assert runs[parent_id].data.metrics == {"trials": float(TRIALS + TRIALS // 4)}
    assert {status for _, _, status in answered} == {200}


# --- (a) past outage_timeout: the journal, replayed exactly once --------------------------------------

_away: list[MlflowServer] = []


@mlflow_run(async_logging=True, outage_timeout=2.0)
@env.task
def queues_and_the_server_stays_away(n: int) -> str:
    """Lose the server for longer than outage_timeout, then queue ``n`` points (the run was created
    before: the server was reached). Stopping it first leaves none of them sent, however long the
    stop takes (MLflow 3.4's server answers while it shuts down, and the queue sends every second)."""
    _away[0].stop()
    for i in range(n):
        mlflow.log_metric("loss", float(i), step=i)
    mlflow.log_param("lr", 0.1)
    return own_run_id()


def test_a_journal_replays_exactly_once_into_postgresql(
    pg_server: MlflowServer, where: tuple[MlflowClient, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The server stays away past outage_timeout at the task's end: the warning names a journal with
    the 150 unsent points and the FINISHED status. Once the server is back on the same database,
    replaying stores every point once and ends the run FINISHED; replaying again changes nothing."""
    client, experiment_id = where
    caplog.set_level(logging.WARNING, logger="flyteplugins.mlflow")
    settings = mlflow_config(
        tracking_uri=pg_server.uri, experiment_id=experiment_id, on_tracking_error="warn"
    )
    _away.append(pg_server)
    try:
        run_id = (
            flyte.with_runcontext(mode="local", custom_context=settings)
            .run(queues_and_the_server_stays_away, n=150)
            .outputs()[0]
        )
    finally:
        _away.clear()
        if pg_server.process is None or pg_server.process.poll() is not None:
            pg_server.start()  # on the same port and the same PostgreSQL database
    found = REPLAY.search(caplog.text)
    assert found, caplog.text
    location = found.group(1)
    lines = [json.loads(line) for line in Path(location).read_text().splitlines()]
    assert lines[-1]["status"] == "FINISHED"
    assert len([m for line in lines if line.get("kind") == "values" for m in line["metrics"]]) == 150
    assert client.get_run(run_id).info.status == "RUNNING"
    replayed_twice(client, location, run_id, 150)
