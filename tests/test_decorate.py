"""Decorating: a tracker returns a decorated copy and never changes the task or anything else it is given."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import os
from typing import Any

import attrs
import flyte
import pytest
from flyte.extend import AsyncFunctionTaskTemplate
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import Mlflow, MlflowRun, RunMode, get_mlflow_run, mlflow_config, mlflow_run
from tests.helpers.support import MlflowServer

env = flyte.TaskEnvironment(name="decorate-tests")

shared_link = Mlflow()
tracker_a = MlflowRun(tags={"which": "a"})
tracker_b = MlflowRun(run_mode="nested", tags={"which": "b"})


def _current_run_id() -> str:
    run = get_mlflow_run()
    return "" if run is None else str(run.info.run_id)


async def report(x: int) -> str:
    """Return the id of the MLflow run this call is tracked in ("" when untracked)."""
    await asyncio.sleep(0)
    return f"{x}:{_current_run_id()}"


def report_sync(x: int) -> str:
    """Return the id of the MLflow run this sync call is tracked in ("" when untracked)."""
    return f"{x}:{_current_run_id()}"


base = env.task(links=(shared_link,))(report)
base_sync = env.task(report_sync)
tracked_a = tracker_a(base)
tracked_b = tracker_b(base)
tracked_sync = tracker_a(base_sync)
tracked_bare = mlflow_run(base)


@env.task
async def calls_both() -> list[str]:
    return [await tracked_a(1), await tracked_b(2)]


@mlflow_run
@env.task
async def parent_of_b() -> list[str]:
    return [_current_run_id(), await tracked_b(3)]


def _run(task: Any, context: Any, *args: Any) -> Any:
    return flyte.with_runcontext(mode="local", custom_context=context).run(task, *args).outputs()[0]


def _ids(client: MlflowClient, experiment_id: str) -> set[str]:
    return {r.info.run_id for r in client.search_runs([experiment_id])}


# --- copies, not changes -----------------------------------------------------------------------


def test_decorating_returns_a_copy_of_the_same_type() -> None:
    """The decorated task is a different object of exactly the original's type, with the same name."""
    for original, copy in (
        (base, tracked_a),
        (base, tracked_b),
        (base_sync, tracked_sync),
        (base, tracked_bare),
    ):
        assert copy is not original
        assert type(copy) is type(original)
        assert isinstance(copy, AsyncFunctionTaskTemplate)
        assert copy.name == original.name
        assert copy.func is not original.func


def test_original_task_is_unchanged() -> None:
    """The original keeps its function, its links tuple and its link instance; the environment keeps it."""
    assert base.func is report
    assert base_sync.func is report_sync
    assert base.links == (shared_link,)
    assert base.links[0] is shared_link
    assert shared_link == Mlflow()
    assert env.tasks[base.name] is base
    assert env.tasks[base_sync.name] is base_sync


def test_other_spec_fields_are_carried_over() -> None:
    """Every dataclass field other than ``func`` and ``links`` is the original's."""
    for copy in (tracked_a, tracked_b, tracked_bare):
        for field in dataclasses.fields(base):
            if field.name in ("func", "links"):
                continue
            assert getattr(copy, field.name) == getattr(base, field.name), field.name


def test_links_are_bound_on_the_copy_only() -> None:
    """A nested tracker's copy carries a renamed copy of the link; the shared instance is untouched."""
    assert tracked_a.links == (shared_link,)
    assert tracked_b.links == (Mlflow(name="MLflow (parent)", run_mode=RunMode.NESTED),)
    assert tracked_b.links[0] is not shared_link
    assert shared_link.name == "MLflow"
    assert shared_link.run_mode is None


def test_trackers_are_unchanged_and_reusable() -> None:
    """Decorating leaves the tracker as it was, and it holds no per-task state."""
    assert tracker_a == MlflowRun(tags={"which": "a"})
    assert tracker_b == MlflowRun(run_mode="nested", tags={"which": "b"})
    assert attrs.asdict(tracker_a) == attrs.asdict(MlflowRun(tags={"which": "a"}))


def test_two_trackers_give_independent_copies() -> None:
    """Decorating one task with two trackers gives two copies that wrap the same original function."""
    assert tracked_a is not tracked_b
    assert tracked_a.func is not tracked_b.func
    assert inspect.unwrap(tracked_a.func) is report
    assert inspect.unwrap(tracked_b.func) is report


# --- the copy is what runs ---------------------------------------------------------------------


def test_copy_is_tracked_and_original_is_not(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Running the copy creates a tracked run; running the original afterwards creates none."""
    _, experiment_id = experiment
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id)
    tracked_out = _run(tracked_a, ctx, 7)
    value, run_id = tracked_out.split(":")
    assert value == "7"
    assert run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["which"] == "a"
    assert _ids(client, experiment_id) == {run_id}

    assert _run(base, ctx, 8) == "8:"
    assert _run(base_sync, ctx, 9) == "9:"
    assert _ids(client, experiment_id) == {run_id}
    assert base.func is report
    assert base.links == (shared_link,)


def test_sync_copy_is_tracked(tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]) -> None:
    """A decorated sync task runs in its worker thread inside its own run."""
    _, experiment_id = experiment
    out = _run(tracked_sync, mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id), 4)
    value, run_id = out.split(":")
    assert value == "4"
    assert client.get_run(run_id).data.tags["which"] == "a"
    assert client.get_run(run_id).info.status == "FINISHED"


def test_copies_of_one_task_run_independently(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Two copies of one task, called from one workflow, each run with their own tracker's settings."""
    _, experiment_id = experiment
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id)
    first, second = _run(calls_both, ctx)
    id_a, id_b = first.split(":")[1], second.split(":")[1]
    assert id_a != id_b
    run_a, run_b = client.get_run(id_a), client.get_run(id_b)
    assert run_a.data.tags["which"] == "a"
    assert run_b.data.tags["which"] == "b"
    assert "mlflow.parentRunId" not in run_a.data.tags
    assert "mlflow.parentRunId" not in run_b.data.tags

    parent_id, nested = _run(parent_of_b, ctx)
    nested_id = nested.split(":")[1]
    assert client.get_run(nested_id).data.tags["mlflow.parentRunId"] == parent_id


# --- the wrapper -------------------------------------------------------------------------------


def test_sync_stays_sync_and_async_stays_async() -> None:
    """The wrapper of a coroutine function is a coroutine function; that of a sync function is not."""
    assert inspect.iscoroutinefunction(tracked_a.func)
    assert inspect.iscoroutinefunction(tracked_b.func)
    assert not inspect.iscoroutinefunction(tracked_sync.func)

    async def plain_async() -> int:
        return 1

    def plain_sync() -> int:
        return 1

    assert inspect.iscoroutinefunction(tracker_a(plain_async))
    assert not inspect.iscoroutinefunction(tracker_a(plain_sync))


def test_wrapper_keeps_name_doc_and_wrapped() -> None:
    """The wrapper carries the function's ``__name__``, ``__doc__`` and ``__wrapped__``."""
    for copy, original in ((tracked_a, report), (tracked_b, report), (tracked_sync, report_sync)):
        func: Any = copy.func
        assert func.__name__ == original.__name__
        assert func.__qualname__ == original.__qualname__
        assert func.__doc__ == original.__doc__
        assert func.__wrapped__ is original
        assert func.__module__ == original.__module__
    wrapped: Any = tracker_a(report_sync)
    assert wrapped.__wrapped__ is report_sync
    assert inspect.signature(wrapped) == inspect.signature(report_sync)


def test_decorated_methods_bind_like_functions(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A tracked method gets its instance as ``self``, sync and async, and runs inside a tracked run."""
    _, experiment_id = experiment
    tracker = MlflowRun(tracking_uri=tracking_uri, experiment_id=experiment_id, tags={"kind": "method"})

    class Model:
        def __init__(self, scale: int) -> None:
            self.scale = scale

        @tracker
        def fit(self, x: int) -> tuple[int, str]:
            """Fit synchronously."""
            return self.scale * x, _current_run_id()

        @tracker
        async def afit(self, x: int) -> tuple[int, str]:
            """Fit asynchronously."""
            return self.scale * x, _current_run_id()

    model = Model(3)
    assert inspect.ismethod(model.fit)
    assert model.fit.__self__ is model
    assert Model.fit.__doc__ == "Fit synchronously."
    value, sync_id = model.fit(2)
    avalue, async_id = asyncio.run(model.afit(5))
    assert (value, avalue) == (6, 15)
    assert sync_id and async_id and sync_id != async_id
    for run_id in (sync_id, async_id):
        run = client.get_run(run_id)
        assert run.data.tags["kind"] == "method"
        assert run.info.status == "FINISHED"
    assert Model(10).fit(1)[0] == 10


def test_partial_and_callable_objects_are_wrapped(mlflow_server: MlflowServer) -> None:
    """Any callable can be wrapped; rank 1 runs it untracked, with its arguments, and sends the
    tracking server it is given not a single request."""
    calls: list[tuple[int, int, bool]] = []

    class Adder:
        def __call__(self, a: int, b: int) -> int:
            calls.append((a, b, get_mlflow_run() is None))
            return a + b

    untracked = MlflowRun(rank=1, tracking_uri=mlflow_server.uri)
    mark = mlflow_server.mark()
    assert untracked(Adder())(1, 2) == 3
    assert untracked(functools.partial(Adder(), 10))(5) == 15
    assert mlflow_server.requests(mark) == []
    assert calls == [(1, 2, True), (10, 5, True)]
    assert "MLFLOW_TRACKING_URI" not in os.environ


@pytest.mark.parametrize("target", [42, "task", None, [report]])
def test_decorating_a_non_callable_is_a_type_error(target: Any) -> None:
    """Decorating something that is not callable is a TypeError naming what was given."""
    with pytest.raises(TypeError, match=type(target).__name__):
        MlflowRun()(target)
    with pytest.raises(TypeError, match=type(target).__name__):
        mlflow_run(run_mode="new")(target)


def test_bare_decorator_on_a_non_callable_is_a_type_error() -> None:
    """``mlflow_run`` given a non-callable positional target is a TypeError."""
    bad: Any = 3.5
    with pytest.raises(TypeError, match="float"):
        mlflow_run(bad)
