"""End to end: in distributed training only rank 0 logs.

The rank is the tracker's explicit ``rank``, else the ``RANK`` environment variable. On any other rank
the function runs with no MLflow run and sends nothing to the tracking server: the server's own
access log, read between a mark and the end of the workflow, must show no tracking request at all.
"""

from __future__ import annotations

from typing import Any, Protocol

import flyte
import mlflow
import pytest
from flyte.extend import TaskTemplate
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import (
    MlflowRun,
    MlflowTrackingError,
    get_mlflow_run,
    get_mlflow_run_id,
    mlflow_config,
    mlflow_run,
)

env = flyte.TaskEnvironment(name="e2e-distributed")

ranked = MlflowRun(tags={"role": "trainer"})


class MlflowServer(Protocol):
    """What these tests use of the session server fixture (``conftest.MlflowServer``)."""

    @property
    def uri(self) -> str: ...

    def mark(self) -> int: ...

    def requests(self, since: int) -> list[tuple[str, str]]: ...


def _observe(worker: int) -> list[str]:
    """What the body sees: its run (or "none"), the fluent active run (or "none"), and its own result."""
    run = get_mlflow_run()
    active = mlflow.active_run()
    if run is not None:
        mlflow.log_param("worker", worker)
    return [
        "none" if run is None else run.info.run_id,
        "none" if active is None else active.info.run_id,
        f"worker {worker} trained",
    ]


@MlflowRun(rank=1)
@env.task
async def rank_one(worker: int) -> list[str]:
    return _observe(worker)


@MlflowRun(rank=1)
@env.task
def rank_one_sync(worker: int) -> list[str]:
    return _observe(worker)


@ranked.for_rank(1)
@env.task
async def bound_to_rank_one(worker: int) -> list[str]:
    return _observe(worker)


@mlflow_run(rank=0)
@env.task
async def rank_zero(worker: int) -> list[str]:
    return _observe(worker)


@mlflow_run
@env.task
async def rank_from_env(worker: int) -> list[str]:
    return _observe(worker)


@mlflow_run
@env.task
def rank_from_env_sync(worker: int) -> list[str]:
    return _observe(worker)


def _run(task: TaskTemplate[Any, Any, Any], tracking_uri: str, experiment_id: str) -> list[str]:
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id)
    out: list[str] = flyte.with_runcontext(mode="local", custom_context=ctx).run(task, 7).outputs()[0]
    return out


def _assert_silent(
    task: TaskTemplate[Any, Any, Any],
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
) -> None:
    mark = mlflow_server.mark()
    out = _run(task, mlflow_server.uri, experiment[1])
    assert out == ["none", "none", "worker 7 trained"]
    assert mlflow_server.requests(mark) == []
    assert client.search_runs([experiment[1]]) == []
    assert mlflow.active_run() is None


def _assert_logged(
    task: TaskTemplate[Any, Any, Any],
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
) -> None:
    mark = mlflow_server.mark()
    run_id, active_id, result = _run(task, mlflow_server.uri, experiment[1])
    requests = mlflow_server.requests(mark)
    assert ("POST", "/api/2.0/mlflow/runs/create") in requests
    assert ("POST", "/api/2.0/mlflow/runs/update") in requests
    assert active_id == run_id
    assert result == "worker 7 trained"
    run = client.get_run(run_id)
    assert run.data.params == {"worker": "7"}
    assert run.info.status == "FINISHED"
    assert [r.info.run_id for r in client.search_runs([experiment[1]])] == [run_id]


@pytest.mark.parametrize(
    "task", [rank_one, rank_one_sync, bound_to_rank_one], ids=["rank=1", "rank=1-sync", "for_rank(1)"]
)
def test_explicit_nonzero_rank_runs_without_tracking(
    task: TaskTemplate[Any, Any, Any],
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
) -> None:
    """With rank 1 the task body runs, sees no run, and not one request reaches the tracking server."""
    _assert_silent(task, mlflow_server, client, experiment)


@pytest.mark.parametrize("task", [rank_from_env, rank_from_env_sync], ids=["async", "sync"])
def test_env_rank_one_runs_without_tracking(
    task: TaskTemplate[Any, Any, Any],
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RANK=1 in the environment turns tracking off for a tracker without an explicit rank."""
    monkeypatch.setenv("RANK", "1")
    _assert_silent(task, mlflow_server, client, experiment)


def test_explicit_rank_zero_logs(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """An explicit rank 0 creates, fills and finishes a run."""
    _assert_logged(rank_zero, mlflow_server, client, experiment)


@pytest.mark.parametrize("rank", ["0", None], ids=["RANK=0", "no-RANK"])
def test_env_rank_zero_or_unset_logs(
    rank: str | None,
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RANK=0, or no RANK at all, logs normally."""
    if rank is not None:
        monkeypatch.setenv("RANK", rank)
    _assert_logged(rank_from_env, mlflow_server, client, experiment)


@pytest.mark.parametrize(
    ("env_rank", "logs"), [("1", True), ("0", False)], ids=["rank=0 vs RANK=1", "rank=1 vs RANK=0"]
)
def test_explicit_rank_beats_env_rank(
    env_rank: str,
    logs: bool,
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An explicit rank wins over RANK: rank 0 logs where RANK=1, rank 1 stays silent where RANK=0."""
    monkeypatch.setenv("RANK", env_rank)
    if logs:
        _assert_logged(rank_zero, mlflow_server, client, experiment)
    else:
        _assert_silent(rank_one, mlflow_server, client, experiment)


def test_for_rank_returns_a_bound_copy() -> None:
    """for_rank() returns an equal tracker with only the rank changed, leaving the original as it was."""
    bound = ranked.for_rank(1)
    assert bound == MlflowRun(tags={"role": "trainer"}, rank=1)
    assert ranked.rank is None
    assert bound != ranked


def test_plain_function_on_nonzero_rank(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Outside Flyte too, a function tracked on rank 1 runs untracked and sends no request."""
    tracker = MlflowRun(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], rank=1)

    @tracker
    def train(worker: int) -> list[str]:
        return _observe(worker)

    mark = mlflow_server.mark()
    assert train(7) == ["none", "none", "worker 7 trained"]
    assert mlflow_server.requests(mark) == []
    assert client.search_runs([experiment[1]]) == []


# --- get_mlflow_run_id() on ranks that have no run ---------------------------------------------


@MlflowRun(rank=1)
@env.task
async def rank_one_resuming_asks() -> str | None:
    return get_mlflow_run_id()


def test_rank_id_outside_a_tracked_call_is_none() -> None:
    """Outside any tracked call there is no run to name."""
    assert get_mlflow_run_id() is None


def test_rank_one_reads_a_given_run_id_from_the_context(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """When rank 0 resumes a run given by id, rank 1 knows that id without a single request."""
    given = client.create_run(experiment[1]).info.run_id
    config = mlflow_config(tracking_uri=mlflow_server.uri, run_id=given)
    mark = mlflow_server.mark()
    found = (
        flyte.with_runcontext(mode="local", custom_context=config).run(rank_one_resuming_asks).outputs()[0]
    )
    assert found == given
    assert mlflow_server.requests(mark) == []
    client.set_terminated(given)


def test_rank_one_outside_flyte_cannot_find_rank_0s_run(tracking_uri: str) -> None:
    """A tracked plain function on rank 1 outside Flyte has no action to search by: a clear error."""

    @MlflowRun(rank=1, tracking_uri=tracking_uri)
    def body() -> str | None:
        return get_mlflow_run_id()

    with pytest.raises(MlflowTrackingError, match="only inside a Flyte task"):
        body()


def test_rank_one_under_warn_gets_none_when_the_run_cannot_be_found(
    tracking_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under ``on_tracking_error="warn"`` a rank that cannot find rank 0's run gets ``None`` and a warning."""

    @MlflowRun(rank=1, tracking_uri=tracking_uri, on_tracking_error="warn")
    def body() -> str | None:
        return get_mlflow_run_id()

    assert body() is None
    assert any("rank 0's MLflow run could not be found" in r.getMessage() for r in caplog.records)
