"""End to end: the three run modes, on sync and async tasks, plain functions and methods, and shared trackers.

Every test runs a real local Flyte run (or calls a decorated function) against the session's real
``mlflow server`` and reads the result back with ``MlflowClient``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import flyte
import mlflow
import pytest
from flyte.extend import TaskTemplate
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import MlflowRun, RunMode, get_mlflow_run, mlflow_config, mlflow_run
from tests.helpers.support import own_run_id

env = flyte.TaskEnvironment(name="e2e-run-modes")
other_env = flyte.TaskEnvironment(name="e2e-run-modes-other")

PARENT_TAG = "mlflow.parentRunId"


def _active_run_id() -> str:
    run = mlflow.active_run()
    assert run is not None, "no active MLflow run inside a tracked call"
    run_id: str = run.info.run_id
    return run_id


def _status(run_id: str) -> str:
    """Read a run's status from the server the plugin is using right now."""
    status: str = MlflowClient(mlflow.get_tracking_uri()).get_run(run_id).info.status
    return status


# --- async tasks -------------------------------------------------------------------------------


@mlflow_run
@env.task
async def auto_child(value: float) -> str:
    mlflow.log_metric("child_metric", value)
    return own_run_id()


@mlflow_run(run_mode="new")
@env.task
async def new_child() -> str:
    assert _active_run_id() == own_run_id()
    mlflow.log_param("kind", "new")
    return own_run_id()


@mlflow_run(run_mode="nested")
@env.task
async def nested_child() -> str:
    assert _active_run_id() == own_run_id()
    mlflow.log_param("kind", "nested")
    return own_run_id()


def _report(
    own: str, shared: str, new: str, nested: str, status_after_auto: str, active_after_new: str
) -> dict[str, str]:
    """What a parent saw of its children's runs, plus the active run at its end."""
    return {
        "parent": own,
        "auto": shared,
        "new": new,
        "nested": nested,
        "status_after_auto": status_after_auto,
        "active_after_new": active_after_new,
        "active_at_end": _active_run_id(),
    }


@mlflow_run
@env.task
async def async_parent() -> dict[str, str]:
    mlflow.log_param("stage", "parent")
    own = own_run_id()
    shared = await auto_child(1.0)
    status_after_auto = _status(own)
    new = await new_child()
    active_after_new = _active_run_id()
    nested = await nested_child()
    mlflow.log_metric("after_children", 2.0)
    return _report(own, shared, new, nested, status_after_auto, active_after_new)


# --- sync tasks --------------------------------------------------------------------------------


@mlflow_run
@env.task
def sync_auto_child(value: float) -> str:
    mlflow.log_metric("child_metric", value)
    return own_run_id()


@mlflow_run(run_mode="new")
@env.task
def sync_new_child() -> str:
    assert _active_run_id() == own_run_id()
    mlflow.log_param("kind", "new")
    return own_run_id()


@mlflow_run(run_mode="nested")
@env.task
def sync_nested_child() -> str:
    assert _active_run_id() == own_run_id()
    mlflow.log_param("kind", "nested")
    return own_run_id()


@mlflow_run
@env.task
def sync_parent() -> dict[str, str]:
    mlflow.log_param("stage", "parent")
    own = own_run_id()
    shared = sync_auto_child(1.0)
    status_after_auto = _status(own)
    new = sync_new_child()
    active_after_new = _active_run_id()
    nested = sync_nested_child()
    mlflow.log_metric("after_children", 2.0)
    return _report(own, shared, new, nested, status_after_auto, active_after_new)


@mlflow_run
@env.task
async def mixed_parent() -> list[str]:
    """An async parent with sync children, which Flyte runs in worker threads."""
    own = own_run_id()
    shared = await sync_auto_child.aio(3.0)
    nested = await sync_nested_child.aio()
    return [own, shared, nested, _status(own)]


@mlflow_run
@env.task
async def lone_auto() -> str:
    mlflow.log_param("alone", "yes")
    return own_run_id()


@mlflow_run
@env.task
def lone_auto_sync() -> str:
    mlflow.log_param("alone", "yes")
    return own_run_id()


# --- one tracker, two environments -------------------------------------------------------------

nested_tracker = MlflowRun(run_mode=RunMode.NESTED, tags={"via": "tracker"})


@nested_tracker
@env.task
async def tracked_in_env(i: int) -> str:
    mlflow.log_param("task", f"env-{i}")
    return own_run_id()


@nested_tracker
@other_env.task
async def tracked_in_other_env(i: int) -> str:
    mlflow.log_param("task", f"other-{i}")
    return own_run_id()


@nested_tracker
@other_env.task
def tracked_sync_in_other_env(i: int) -> str:
    mlflow.log_param("task", f"sync-{i}")
    return own_run_id()


@MlflowRun()
@env.task
async def tracker_parent() -> list[str]:
    ids = [own_run_id()]
    for i in range(2):
        ids.append(await tracked_in_env(i))
        ids.append(await tracked_in_other_env(i))
        ids.append(await tracked_sync_in_other_env.aio(i))
    return ids


# --- helpers for the checks --------------------------------------------------------------------


def _context(tracking_uri: str, experiment_id: str) -> dict[str, str] | None:
    return mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id)


def _runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    return list(client.search_runs([experiment_id], max_results=1000))


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("parent", [async_parent, sync_parent], ids=["async", "sync"])
def test_auto_shares_parent_run_and_never_ends_it(
    parent: TaskTemplate[Any, Any, Any], tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """An auto child logs into its parent's run, leaves it RUNNING, and the parent keeps logging after it."""
    ctx = _context(tracking_uri, experiment[1])
    out: dict[str, str] = flyte.with_runcontext(mode="local", custom_context=ctx).run(parent).outputs()[0]
    assert out["auto"] == out["parent"]
    assert out["status_after_auto"] == "RUNNING"
    assert out["active_at_end"] == out["parent"]
    run = client.get_run(out["parent"])
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == experiment[1]
    assert run.data.params == {"stage": "parent"}
    assert run.data.metrics == {"child_metric": 1.0, "after_children": 2.0}
    assert PARENT_TAG not in run.data.tags


@pytest.mark.parametrize("parent", [async_parent, sync_parent], ids=["async", "sync"])
def test_new_is_top_level_even_with_parent_active(
    parent: TaskTemplate[Any, Any, Any], tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A new child gets its own top-level run, without a parent tag, while the parent's run stays active."""
    ctx = _context(tracking_uri, experiment[1])
    out: dict[str, str] = flyte.with_runcontext(mode="local", custom_context=ctx).run(parent).outputs()[0]
    assert out["new"] != out["parent"]
    assert out["active_after_new"] == out["parent"]
    run = client.get_run(out["new"])
    assert PARENT_TAG not in run.data.tags
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == experiment[1]
    assert run.data.params == {"kind": "new"}
    assert run.data.metrics == {}


@pytest.mark.parametrize("parent", [async_parent, sync_parent], ids=["async", "sync"])
def test_nested_carries_parent_run_id(
    parent: TaskTemplate[Any, Any, Any], tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A nested child gets its own run whose mlflow.parentRunId is the parent's run."""
    ctx = _context(tracking_uri, experiment[1])
    out: dict[str, str] = flyte.with_runcontext(mode="local", custom_context=ctx).run(parent).outputs()[0]
    assert out["nested"] not in (out["parent"], out["new"])
    run = client.get_run(out["nested"])
    assert run.data.tags[PARENT_TAG] == out["parent"]
    assert run.info.status == "FINISHED"
    assert run.data.params == {"kind": "nested"}
    all_ids = {r.info.run_id for r in _runs(client, experiment[1])}
    assert all_ids == {out["parent"], out["new"], out["nested"]}


def test_sync_children_of_async_parent(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Sync children awaited with .aio() from an async parent share or nest under the parent's run."""
    ctx = _context(tracking_uri, experiment[1])
    out: list[str] = flyte.with_runcontext(mode="local", custom_context=ctx).run(mixed_parent).outputs()[0]
    parent_id, shared, nested, status_after = out
    assert shared == parent_id
    assert status_after == "RUNNING"
    assert client.get_run(parent_id).data.metrics == {"child_metric": 3.0}
    assert client.get_run(parent_id).info.status == "FINISHED"
    nested_run = client.get_run(nested)
    assert nested_run.data.tags[PARENT_TAG] == parent_id
    assert nested_run.data.params == {"kind": "nested"}


@pytest.mark.parametrize("task", [lone_auto, lone_auto_sync], ids=["async", "sync"])
def test_top_level_auto_creates_a_run(
    task: TaskTemplate[Any, Any, Any], tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """An auto task with no tracked parent creates its own run and finishes it."""
    ctx = _context(tracking_uri, experiment[1])
    run_id: str = flyte.with_runcontext(mode="local", custom_context=ctx).run(task).outputs()[0]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == experiment[1]
    assert run.data.params == {"alone": "yes"}
    assert PARENT_TAG not in run.data.tags
    assert [r.info.run_id for r in _runs(client, experiment[1])] == [run_id]


def test_one_tracker_on_tasks_in_two_environments(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """One MlflowRun decorates tasks of two environments; every call gets its own nested run and its tags."""
    before = MlflowRun(run_mode=RunMode.NESTED, tags={"via": "tracker"})
    ctx = _context(tracking_uri, experiment[1])
    ids: list[str] = flyte.with_runcontext(mode="local", custom_context=ctx).run(tracker_parent).outputs()[0]
    parent_id, *children = ids
    assert len(set(children)) == 6
    assert parent_id not in children
    expected = ["env-0", "other-0", "sync-0", "env-1", "other-1", "sync-1"]
    for child_id, task_param in zip(children, expected, strict=True):
        run = client.get_run(child_id)
        assert run.data.params == {"task": task_param}
        assert run.data.tags[PARENT_TAG] == parent_id
        assert run.data.tags["via"] == "tracker"
        assert run.info.status == "FINISHED"
    assert nested_tracker == before
    assert tracked_in_env.parent_env_name == "e2e-run-modes"
    assert tracked_in_other_env.parent_env_name == "e2e-run-modes-other"


def test_mlflow_run_bare_and_with_arguments() -> None:
    """Bare @mlflow_run wraps the task's function in place; with arguments it returns the equal MlflowRun."""
    assert mlflow_run(run_mode="nested") == MlflowRun(run_mode=RunMode.NESTED)
    assert mlflow_run(run_mode="new", tags={"a": "b"}) == MlflowRun(run_mode=RunMode.NEW, tags={"a": "b"})
    assert mlflow_run() == MlflowRun()
    for task in (lone_auto, lone_auto_sync):
        assert task.func.__name__ == task.name.rsplit(".", 1)[-1]
        assert hasattr(task.func, "__wrapped__"), "bare @mlflow_run did not wrap the task's function"
    assert asyncio.iscoroutinefunction(lone_auto.func)
    assert not asyncio.iscoroutinefunction(lone_auto_sync.func)


# --- plain functions and methods, outside Flyte ------------------------------------------------


def test_plain_functions_nest_and_share(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Outside Flyte, a decorated function called by another shares its run; nested and new ones don't."""
    tracked = MlflowRun(tracking_uri=tracking_uri, experiment_id=experiment[1])

    @mlflow_run(tracking_uri=tracking_uri, experiment_id=experiment[1], run_mode="nested")
    def nested_fn(x: int) -> str:
        mlflow.log_param("nested_x", x)
        return own_run_id()

    @mlflow_run(tracking_uri=tracking_uri, experiment_id=experiment[1], run_mode="new")
    def new_fn() -> str:
        mlflow.log_param("new", "yes")
        return own_run_id()

    @tracked
    def inner(x: int) -> str:
        mlflow.log_metric("inner", x)
        assert _active_run_id() == own_run_id()
        return own_run_id()

    @tracked
    def outer() -> list[str]:
        own = own_run_id()
        shared = inner(5)
        still_running = _status(own)
        mlflow.log_metric("outer", 1.0)
        return [own, shared, nested_fn(7), new_fn(), still_running]

    own, shared, nested, new, still_running = outer()
    assert mlflow.active_run() is None
    assert get_mlflow_run() is None
    assert shared == own
    assert still_running == "RUNNING"
    parent = client.get_run(own)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics == {"inner": 5.0, "outer": 1.0}
    assert client.get_run(nested).data.tags[PARENT_TAG] == own
    assert client.get_run(nested).data.params == {"nested_x": "7"}
    assert PARENT_TAG not in client.get_run(new).data.tags
    assert {r.info.status for r in _runs(client, experiment[1])} == {"FINISHED"}
    assert len(_runs(client, experiment[1])) == 3


def test_plain_async_functions_nest_and_share(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Outside Flyte, decorated coroutines share the outer run in auto mode and nest under it when nested."""
    tracked = MlflowRun(tracking_uri=tracking_uri, experiment_id=experiment[1])
    nested = attrs.evolve(tracked, run_mode=RunMode.NESTED)

    @tracked
    async def inner() -> str:
        mlflow.log_metric("inner", 1.0)
        return own_run_id()

    @nested
    async def trial(i: int) -> str:
        mlflow.log_param("trial", i)
        await asyncio.sleep(0)
        mlflow.log_metric("score", i)
        return own_run_id()

    @tracked
    async def outer() -> list[str]:
        own = own_run_id()
        shared = await inner()
        trials = await asyncio.gather(*(trial(i) for i in range(4)))
        return [own, shared, *trials]

    assert asyncio.iscoroutinefunction(outer)
    own, shared, *trials = asyncio.run(outer())
    assert mlflow.active_run() is None
    assert shared == own
    assert client.get_run(own).data.metrics == {"inner": 1.0}
    for i, trial_id in enumerate(trials):
        run = client.get_run(trial_id)
        assert run.data.params == {"trial": str(i)}
        assert run.data.metrics == {"score": float(i)}
        assert run.data.tags[PARENT_TAG] == own
        assert run.info.status == "FINISHED"


class Trainer:
    """A class whose methods are tracked: the wrapper must bind ``self`` like a plain function."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fit(self, epochs: int) -> str:
        mlflow.log_param("trainer", self.name)
        mlflow.log_metric("epochs", epochs)
        return own_run_id()

    async def afit(self, epochs: int) -> str:
        mlflow.log_param("trainer", self.name)
        await asyncio.sleep(0)
        mlflow.log_metric("epochs", epochs)
        return own_run_id()


def test_decorated_methods(tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]) -> None:
    """Tracked sync and async methods receive ``self`` and log into a run of their own per call."""
    tracker = MlflowRun(tracking_uri=tracking_uri, experiment_id=experiment[1])

    class TrackedTrainer(Trainer):
        fit = tracker(Trainer.fit)
        afit = tracker(Trainer.afit)

    trainer = TrackedTrainer("forest")
    sync_id = trainer.fit(3)
    async_id = asyncio.run(trainer.afit(4))
    assert sync_id != async_id
    assert client.get_run(sync_id).data.params == {"trainer": "forest"}
    assert client.get_run(sync_id).data.metrics == {"epochs": 3.0}
    assert client.get_run(async_id).data.params == {"trainer": "forest"}
    assert client.get_run(async_id).data.metrics == {"epochs": 4.0}
    assert {r.info.status for r in _runs(client, experiment[1])} == {"FINISHED"}
    assert mlflow.active_run() is None
