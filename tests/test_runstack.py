"""The guard around MLflow's internals: a per-context stand-in for MLflow's thread-local active-run stack."""

from __future__ import annotations

import ast
import asyncio
import contextvars
import inspect
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import flyte
import mlflow
import pytest
from mlflow.entities import Run, RunData, RunInfo
from mlflow.tracking import MlflowClient, fluent
from mlflow.tracking.fluent import ActiveRun
from mlflow.utils.thread_utils import ThreadLocalVariable

from flyteplugins.mlflow import mlflow_config, mlflow_run
from flyteplugins.mlflow._patches import current
from flyteplugins.mlflow._patches import runstack as _runstack
from flyteplugins.mlflow._patches.current import TrackedCall, unbind
from flyteplugins.mlflow._patches.runstack import ContextLocalRunStack, bound
from tests.helpers.support import own_run_id

env = flyte.TaskEnvironment(name="runstack-owner")


def bind(runs: list[ActiveRun], owner: str | None = None) -> contextvars.Token[TrackedCall | None]:
    """Bind ``runs`` as the run stack of a tracked call of ``owner`` in this context."""
    return current.bind(TrackedCall(owner=owner, runs=runs))


@pytest.fixture(autouse=True)
def stand_in(request: pytest.FixtureRequest) -> Iterator[None]:
    """The stand-in in place, as during a tracked call (the install-failure tests install it themselves)."""
    if "fails_loudly" in request.node.name:
        yield
        return
    with _runstack.PATCH.held(None):
        yield


def _active(run_id: str) -> ActiveRun:
    """An ActiveRun for a run that exists only in memory (nothing here talks to a store)."""
    info = RunInfo(
        run_id=run_id,
        experiment_id="0",
        user_id="test",
        status="RUNNING",
        start_time=0,
        end_time=None,
        lifecycle_stage="active",
    )
    return ActiveRun(Run(info, RunData()))


def _stack() -> ContextLocalRunStack:
    stack = fluent._active_run_stack
    assert isinstance(stack, ContextLocalRunStack)
    return stack


def _active_id() -> str | None:
    run = mlflow.active_run()
    return None if run is None else str(run.info.run_id)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[str]:
    """Point MLflow at a SQLite store in a temporary directory for one test, then put everything back."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_stand_in_is_installed() -> None:
    """While a tracked call holds it, MLflow's stack is the stand-in, wrapping MLflow's own object."""
    stack = _stack()
    assert type(stack._fallback) is ThreadLocalVariable
    assert _runstack.bound() is None


def test_install_is_idempotent() -> None:
    """Installing again keeps the one stand-in rather than wrapping it twice."""
    before: object = _stack()
    with _runstack.PATCH.held(None):
        assert fluent._active_run_stack is before
        assert type(_stack()._fallback) is ThreadLocalVariable


def test_mlflows_stack_is_back_after_the_last_call() -> None:
    """After the last tracked call lets go, MLflow's own thread-local object is back, exactly."""
    fallback = _stack()._fallback
    _runstack.PATCH.release()
    try:
        assert fluent._active_run_stack is fallback
    finally:
        _runstack.PATCH.acquire(None)


def test_active_run_reads_the_bound_list() -> None:
    """mlflow.active_run() returns the top of the list bound to this context, and nothing once unbound."""
    assert mlflow.active_run() is None
    runs = [_active("outer")]
    token = bind(runs)
    try:
        assert _active_id() == "outer"
        assert bound() is runs
        assert _stack().get() is runs
        runs.append(_active("inner"))
        assert _active_id() == "inner"
    finally:
        unbind(token)
    assert mlflow.active_run() is None
    assert bound() is None


def test_bindings_nest_and_unbind_in_order() -> None:
    """A binding made inside another one is undone by its token, bringing back the outer list."""
    outer, inner = [_active("outer")], [_active("inner")]
    t1 = bind(outer)
    t2 = bind(inner)
    assert _active_id() == "inner"
    unbind(t2)
    assert _active_id() == "outer"
    unbind(t1)
    assert mlflow.active_run() is None


def test_set_writes_the_bound_list_in_place() -> None:
    """The stand-in's set() replaces the bound list's contents and leaves the thread-local list alone."""
    runs = [_active("a")]
    token = bind(runs)
    try:
        _stack().set([_active("b"), _active("c")])
        assert [r.info.run_id for r in runs] == ["b", "c"]
        assert bound() is runs
    finally:
        unbind(token)
    assert _stack()._fallback.get() == []


def test_binding_does_not_leak_to_sibling_tasks() -> None:
    """Sibling asyncio tasks each see only the run they bound, across awaits that interleave them."""

    async def trial(name: str, started: asyncio.Event, other_started: asyncio.Event) -> list[str | None]:
        seen = [_active_id()]
        token = bind([_active(name)])
        try:
            started.set()
            await other_started.wait()
            for _ in range(5):
                seen.append(_active_id())
                await asyncio.sleep(0)
        finally:
            unbind(token)
        seen.append(_active_id())
        return seen

    async def main() -> tuple[list[str | None], list[str | None], str | None]:
        a_started, b_started = asyncio.Event(), asyncio.Event()
        a, b = await asyncio.gather(trial("a", a_started, b_started), trial("b", b_started, a_started))
        return a, b, _active_id()

    a, b, after = asyncio.run(main())
    assert a == [None, "a", "a", "a", "a", "a", None]
    assert b == [None, "b", "b", "b", "b", "b", None]
    assert after is None


def test_binding_in_parent_is_seen_by_children_but_not_changed_by_them() -> None:
    """A task started inside a binding sees it; a binding the child makes stays inside the child."""

    async def child() -> tuple[str | None, str | None]:
        inherited = _active_id()
        token = bind([_active("child")])
        try:
            own = _active_id()
        finally:
            unbind(token)
        return inherited, own

    async def parent() -> tuple[tuple[str | None, str | None], str | None]:
        token = bind([_active("parent")])
        try:
            result = await asyncio.create_task(child())
            return result, _active_id()
        finally:
            unbind(token)

    (inherited, own), parent_after = asyncio.run(parent())
    assert (inherited, own, parent_after) == ("parent", "child", "parent")


def test_binding_follows_copied_context_into_threads() -> None:
    """A worker thread run in a copy of the caller's context (as Flyte runs sync tasks) sees the binding."""
    seen: list[str | None] = []
    token = bind([_active("ctx")])
    try:
        copied = contextvars.copy_context()
        worker = threading.Thread(target=lambda: seen.append(copied.run(_active_id)))
        plain = threading.Thread(target=lambda: seen.append(_active_id()))
        worker.start()
        worker.join()
        plain.start()
        plain.join()
    finally:
        unbind(token)
    assert seen == ["ctx", None]


def test_thread_local_fallback_for_plain_mlflow(sqlite_store: str) -> None:
    """Outside any binding, ``with mlflow.start_run()`` works as in plain MLflow, on the thread's stack."""
    client = MlflowClient(sqlite_store)
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        assert _active_id() == run_id
        assert bound() is None
        assert [r.info.run_id for r in _stack()._fallback.get()] == [run_id]
        mlflow.log_param("p", "1")
        with mlflow.start_run(nested=True) as child:
            assert _active_id() == child.info.run_id
        assert _active_id() == run_id
        elsewhere: list[str | None] = []
        other = threading.Thread(target=lambda: elsewhere.append(_active_id()))
        other.start()
        other.join()
        assert elsewhere == [None], "the thread-local stack is per thread"
    assert mlflow.active_run() is None
    assert _stack()._fallback.get() == []
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.params == {"p": "1"}
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == run_id


def test_runs_started_inside_a_binding_stay_in_it(sqlite_store: str) -> None:
    """``mlflow.start_run(nested=True)`` inside a binding pushes onto the bound list, not the thread's."""
    client = MlflowClient(sqlite_store)
    experiment_id = client.create_experiment("bound")
    parent = client.create_run(experiment_id)
    runs = [ActiveRun(parent)]
    token = bind(runs)
    try:
        with mlflow.start_run(nested=True) as child:
            assert [r.info.run_id for r in runs] == [parent.info.run_id, child.info.run_id]
            assert _stack()._fallback.get() == []
        assert [r.info.run_id for r in runs] == [parent.info.run_id]
    finally:
        unbind(token)
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    client.set_terminated(parent.info.run_id)


# --- the owner check, end to end -------------------------------------------------------------


@env.task
async def untracked_child() -> str:
    """What an untracked async task sees as MLflow's active run ("" for none)."""
    return _active_id() or ""


@env.task
def untracked_sync_child() -> str:
    """What an untracked sync task (in a worker thread, with a copy of its caller's context) sees."""
    return _active_id() or ""


@mlflow_run
@env.task
async def tracked_caller(sync: bool) -> list[str]:
    seen = await (untracked_sync_child.aio() if sync else untracked_child())
    return [own_run_id(), _active_id() or "", seen]


@pytest.mark.parametrize("sync", [False, True], ids=["async-child", "sync-child"])
def test_an_untracked_child_does_not_see_its_callers_run(
    sync: bool, tracking_uri: str, experiment: tuple[str, str]
) -> None:
    """An untracked task called by a tracked one runs in its caller's context in local mode, yet
    ``mlflow.active_run()`` is ``None`` there, as in a pod of its own; the caller still sees its run."""
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])
    caller, active, seen = (
        flyte.with_runcontext(mode="local", custom_context=ctx).run(tracked_caller, sync).outputs()[0]
    )
    assert active == caller, "the caller's own fluent calls lost its run"
    assert seen == "", "the untracked child saw its caller's run as MLflow's active run"


# --- what the stand-in relies on in MLflow -----------------------------------------------------


def test_mlflow_keeps_the_stack_where_install_expects_it() -> None:
    """The names and methods the stand-in replaces or delegates to still exist in this MLflow."""
    fallback = _stack()._fallback
    for method in ("get", "set", "get_all_thread_values", "reset"):
        assert callable(getattr(ThreadLocalVariable, method)), method
        assert callable(getattr(fallback, method)), method
    assert hasattr(fluent, "_active_run_stack")
    assert fluent.ActiveRun is ActiveRun


@pytest.mark.parametrize("function", ["active_run", "start_run", "end_run"])
def test_fluent_functions_read_the_module_stack(function: str) -> None:
    """MLflow's fluent functions read the stack as a module global on every call, so a swap reaches them."""
    source = inspect.getsource(getattr(fluent, function))
    assert "_active_run_stack.get()" in source


def test_no_other_mlflow_module_holds_its_own_reference() -> None:
    """No MLflow module imports the stack by name, which would keep a reference the swap cannot reach."""
    root = Path(mlflow.__file__).parent
    offenders: list[str] = []
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.name == "fluent.py" or "_active_run_stack" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and any(a.name == "_active_run_stack" for a in node.names):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
    fallback = _stack()._fallback
    holders = [
        name
        for name, module in list(sys.modules.items())
        if name.startswith("mlflow")
        and module is not None
        and getattr(module, "_active_run_stack", None) is fallback
    ]
    assert holders == []


def test_install_fails_loudly_when_mlflow_changes() -> None:
    """If MLflow's stack is not the expected object, installing fails naming the MLflow version."""
    saved = fluent._active_run_stack
    fluent._active_run_stack = []  # type: ignore[assignment]
    try:
        with pytest.raises(RuntimeError) as info:
            _runstack.PATCH.acquire(None)
    finally:
        fluent._active_run_stack = saved
    assert mlflow.__version__ in str(info.value)
    assert "_active_run_stack" in str(info.value)
    assert fluent._active_run_stack is saved
