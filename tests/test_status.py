"""End to end: every run ends FINISHED, FAILED or KILLED, and a task only ever ends the run it owns.

After each workflow the test searches the experiment's runs to check that none is left ``RUNNING``,
and checks that no run is left active in the calling process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from typing import Any

import flyte
import flyte.errors
import mlflow
import pytest
from flyte.extend import TaskTemplate
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import MlflowRun, mlflow_config, mlflow_run
from tests.helpers.support import own_run_id

env = flyte.TaskEnvironment(name="e2e-status")

PARENT_TAG = "mlflow.parentRunId"

# Labels of the sleeping children that have started their run; the parent waits for its child's label
# before cancelling it, so the cancellation always lands inside the child's run.
_STARTED: set[str] = set()


def _status(run_id: str) -> str:
    """Read a run's status from the server the plugin is using right now."""
    status: str = MlflowClient(mlflow.get_tracking_uri()).get_run(run_id).info.status
    return status


async def _wait_started(label: str) -> None:
    for _ in range(30_000):
        if label in _STARTED:
            return
        await asyncio.sleep(0.01)
    msg = f"child {label!r} never started"
    raise AssertionError(msg)


# --- tasks -------------------------------------------------------------------------------------


@mlflow_run
@env.task
async def succeeds() -> str:
    mlflow.log_metric("done", 1.0)
    return own_run_id()


@mlflow_run
@env.task
def succeeds_sync() -> str:
    mlflow.log_metric("done", 1.0)
    return own_run_id()


@mlflow_run
@env.task
async def raises() -> str:
    mlflow.log_param("reached", "yes")
    raise ValueError("status-boom-async")


@mlflow_run
@env.task
def raises_sync() -> str:
    mlflow.log_param("reached", "yes")
    raise ValueError("status-boom-sync")


@mlflow_run(run_mode="nested")
@env.task
async def sleeper(label: str) -> str:
    mlflow.log_param("label", label)
    _STARTED.add(label)
    await asyncio.sleep(3600)
    return "never"


@mlflow_run
@env.task
async def cancelling_parent(token: str) -> dict[str, str]:
    """Cancel one child outright and time another out with ``asyncio.wait_for``."""
    cancelled, timed_out = f"{token}-cancelled", f"{token}-timed-out"
    first = asyncio.create_task(sleeper(cancelled))
    await _wait_started(cancelled)
    first.cancel()
    try:
        await first
        cancel_outcome = "returned"
    except asyncio.CancelledError:
        cancel_outcome = "cancelled"
    second = asyncio.create_task(sleeper(timed_out))
    await _wait_started(timed_out)
    try:
        await asyncio.wait_for(second, timeout=0.01)
        timeout_outcome = "returned"
    except asyncio.TimeoutError:
        timeout_outcome = "timed out"
    mlflow.log_metric("after_cancel", 1.0)
    return {
        "parent": own_run_id(),
        "cancel": cancel_outcome,
        "timeout": timeout_outcome,
        "status_after": _status(own_run_id()),
    }


@mlflow_run
@env.task
async def failing_auto_child() -> str:
    mlflow.log_metric("child_before_failure", 1.0)
    raise ValueError("auto-child-boom")


@mlflow_run
@env.task
def failing_auto_child_sync() -> str:
    mlflow.log_metric("child_before_failure", 1.0)
    raise ValueError("auto-child-boom")


@mlflow_run
@env.task
async def forgiving_parent() -> list[str]:
    """Catch the shared child's failure and carry on: the parent decides its own status."""
    own = own_run_id()
    try:
        await failing_auto_child()
        error = "none"
    except Exception as e:
        error = str(e)
    status_after = _status(own)
    mlflow.log_metric("after_failure", 2.0)
    return [own, status_after, error]


@mlflow_run
@env.task
def forgiving_parent_sync() -> list[str]:
    own = own_run_id()
    try:
        failing_auto_child_sync()
        error = "none"
    except Exception as e:
        error = str(e)
    status_after = _status(own)
    mlflow.log_metric("after_failure", 2.0)
    return [own, status_after, error]


@mlflow_run
@env.task
async def strict_parent(token: str) -> str:
    """Let the shared child's failure propagate: the parent's run fails with it."""
    mlflow.log_param("token", token)
    await failing_auto_child()
    return "never"


@mlflow_run(run_mode="nested")
@env.task
async def sibling(i: int) -> str:
    mlflow.log_param("i", i)
    await asyncio.sleep(0)
    if i == 2:
        raise ValueError("sibling-2-boom")
    mlflow.log_metric("score", i)
    return own_run_id()


@mlflow_run
@env.task
async def siblings_parent(n: int) -> list[str]:
    results = await asyncio.gather(*(sibling(i) for i in range(n)), return_exceptions=True)
    return [own_run_id(), *(r if isinstance(r, str) else f"error: {r}" for r in results)]


# --- helpers for the checks --------------------------------------------------------------------


def _context(tracking_uri: str, experiment_id: str) -> dict[str, str]:
    return mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id)


def _runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    return list(client.search_runs([experiment_id], max_results=1000))


def _assert_nothing_left_open(client: MlflowClient, experiment_id: str) -> None:
    running = [r.info.run_id for r in _runs(client, experiment_id) if r.info.status == "RUNNING"]
    assert running == [], f"runs left RUNNING: {running}"
    assert mlflow.active_run() is None, "a run is still active in the calling process"


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [succeeds, succeeds_sync], ids=["async", "sync"])
def test_success_finishes_the_run(
    task: TaskTemplate[Any, Any, Any], tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A task that returns ends its run FINISHED, with an end time."""
    ctx = _context(tracking_uri, experiment[1])
    run_id: str = flyte.with_runcontext(mode="local", custom_context=ctx).run(task).outputs()[0]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.end_time is not None
    assert run.data.metrics == {"done": 1.0}
    _assert_nothing_left_open(client, experiment[1])


@pytest.mark.parametrize(
    ("task", "message"),
    [(raises, "status-boom-async"), (raises_sync, "status-boom-sync")],
    ids=["async", "sync"],
)
def test_failure_fails_the_run_and_propagates(
    task: TaskTemplate[Any, Any, Any],
    message: str,
    tracking_uri: str,
    client: MlflowClient,
    experiment: tuple[str, str],
) -> None:
    """A task that raises fails the workflow with its error and ends its run FAILED."""
    ctx = _context(tracking_uri, experiment[1])
    with pytest.raises(flyte.errors.RuntimeUserError, match=message):
        flyte.with_runcontext(mode="local", custom_context=ctx).run(task)
    runs = _runs(client, experiment[1])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.params == {"reached": "yes"}
    assert runs[0].info.end_time is not None
    _assert_nothing_left_open(client, experiment[1])


def test_cancelled_and_timed_out_children_are_killed(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A child cancelled by its parent, or timed out by asyncio.wait_for, ends KILLED; the parent finishes."""
    token = uuid.uuid4().hex
    ctx = _context(tracking_uri, experiment[1])
    out: dict[str, str] = (
        flyte.with_runcontext(mode="local", custom_context=ctx).run(cancelling_parent, token).outputs()[0]
    )
    assert out["cancel"] == "cancelled"
    assert out["timeout"] == "timed out"
    assert out["status_after"] == "RUNNING"
    runs = {r.data.params.get("label", "parent"): r for r in _runs(client, experiment[1])}
    assert set(runs) == {"parent", f"{token}-cancelled", f"{token}-timed-out"}
    for label in (f"{token}-cancelled", f"{token}-timed-out"):
        assert runs[label].info.status == "KILLED", label
        assert runs[label].data.tags[PARENT_TAG] == out["parent"]
        assert runs[label].info.end_time is not None
    assert runs["parent"].info.run_id == out["parent"]
    assert runs["parent"].info.status == "FINISHED"
    assert runs["parent"].data.metrics == {"after_cancel": 1.0}
    _assert_nothing_left_open(client, experiment[1])


def test_cancelled_coroutine_is_killed(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A decorated coroutine cancelled directly (outside Flyte) ends its run KILLED and re-raises."""
    tracker = MlflowRun(tracking_uri=tracking_uri, experiment_id=experiment[1])
    seen: list[str] = []

    @tracker
    async def work(started: asyncio.Event) -> None:
        seen.append(own_run_id())
        started.set()
        await asyncio.sleep(3600)

    async def main() -> str:
        started = asyncio.Event()
        job = asyncio.create_task(work(started))
        await started.wait()
        job.cancel()
        try:
            await job
        except asyncio.CancelledError:
            return "cancelled"
        return "returned"

    assert asyncio.run(main()) == "cancelled"
    runs = _runs(client, experiment[1])
    assert [r.info.run_id for r in runs] == seen
    assert runs[0].info.status == "KILLED"
    _assert_nothing_left_open(client, experiment[1])


@pytest.mark.parametrize("parent", [forgiving_parent, forgiving_parent_sync], ids=["async", "sync"])
def test_failing_auto_child_does_not_end_parent_run(
    parent: TaskTemplate[Any, Any, Any], tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A shared child that raises leaves the parent's run RUNNING; a parent that recovers ends it FINISHED."""
    ctx = _context(tracking_uri, experiment[1])
    out: list[str] = flyte.with_runcontext(mode="local", custom_context=ctx).run(parent).outputs()[0]
    parent_id, status_after, error = out
    assert "auto-child-boom" in error
    assert status_after == "RUNNING"
    runs = _runs(client, experiment[1])
    assert [r.info.run_id for r in runs] == [parent_id]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics == {"child_before_failure": 1.0, "after_failure": 2.0}
    _assert_nothing_left_open(client, experiment[1])


def test_parent_that_reraises_fails_its_own_run(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A parent that lets its shared child's error through fails the workflow and its run ends FAILED."""
    token = uuid.uuid4().hex
    ctx = _context(tracking_uri, experiment[1])
    with pytest.raises(flyte.errors.RuntimeUserError, match="auto-child-boom"):
        flyte.with_runcontext(mode="local", custom_context=ctx).run(strict_parent, token)
    runs = _runs(client, experiment[1])
    assert [(r.info.status, r.data.params) for r in runs] == [("FAILED", {"token": token})]
    _assert_nothing_left_open(client, experiment[1])


def test_failing_nested_sibling_does_not_fail_the_others(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Of gathered nested siblings, only the one that raises ends FAILED; the rest and the parent finish."""
    ctx = _context(tracking_uri, experiment[1])
    out: list[str] = (
        flyte.with_runcontext(mode="local", custom_context=ctx).run(siblings_parent, 5).outputs()[0]
    )
    parent_id, *results = out
    assert "sibling-2-boom" in results[2]
    by_i = {r.data.params["i"]: r for r in _runs(client, experiment[1]) if "i" in r.data.params}
    assert sorted(by_i) == ["0", "1", "2", "3", "4"]
    for i, run in by_i.items():
        assert run.data.tags[PARENT_TAG] == parent_id
        assert run.info.status == ("FAILED" if i == "2" else "FINISHED"), i
        if i != "2":
            assert run.info.run_id == results[int(i)]
            assert run.data.metrics == {"score": float(i)}
    assert client.get_run(parent_id).info.status == "FINISHED"
    _assert_nothing_left_open(client, experiment[1])


# Run by a non-daemon thread after the main thread has returned: Python has then already shut its
# executors for new work (``concurrent.futures``' exit hook runs before such threads are joined).
LATE_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, threading, time
    import mlflow
    from flyteplugins.mlflow import mlflow_run

    @mlflow_run(tracking_uri=sys.argv[1], experiment_name=sys.argv[2])
    async def late() -> None:
        mlflow.log_param("late", "yes")

    def after_main() -> None:
        while threading.main_thread().is_alive():
            time.sleep(0.01)
        asyncio.run(late())

    threading.Thread(target=after_main).start()
    """
)


def test_a_tracked_call_during_interpreter_exit_still_ends_its_run(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """An async tracked call that starts after the main thread has returned (the plugin's thread pool
    then takes no new work) still runs its body and ends its run ``FINISHED``, in the calling thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-c", LATE_SCRIPT, tracking_uri, experiment[0]],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cannot schedule new futures" not in done.stderr
    runs = _runs(client, experiment[1])
    assert [(r.info.status, r.data.params) for r in runs] == [("FINISHED", {"late": "yes"})]
