"""Starting, sharing, nesting and ending MLflow runs around one call of a tracked function.

The work is split so that the decision is a pure function and the network calls are few:

1. :func:`~flyteplugins.mlflow._plan.plan` turns the tracker's settings and the task's context into
   a :class:`~flyteplugins.mlflow._plan.Plan` (share the caller's run, create one, or resume one),
   or ``None`` on a rank that must not log. It makes no calls (see :mod:`flyteplugins.mlflow._plan`).
2. :func:`begin` carries the plan out: at most one request to create a run (with all its tags), none
   to share a run that lives in this process, one to fetch a shared run from another process.
   Experiment names are resolved once per process and tracking URI, and passed on to children.
3. :func:`bound` makes the run, and MLflow's other per-thread state, the calling context's own (see
   :mod:`~flyteplugins.mlflow._runstack`, :mod:`~flyteplugins.mlflow._state`), and tells children.
4. :func:`end` sets the run's final status, ``FINISHED``, ``FAILED`` or ``KILLED``, in one request,
   retried harder than other calls. A shared run is never ended. Whatever MLflow's asynchronous
   logging still holds (``async_logging=True``) is sent first, so the status comes last. A
   workflow's root then sweeps, in one request, for runs left ``RUNNING`` under it (see
   :mod:`flyteplugins.mlflow._sweep`).

:func:`call_sync` and :func:`call_async` put the steps together. In async tasks the blocking steps
run on a small thread pool of the plugin's own, so sibling trials keep running while one waits on
the tracking server.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import attrs
from typing_extensions import ParamSpec

from flyteplugins.mlflow import (
    _inputs,
    _journal,
    _mlflow_state,
    _provenance,
    _ranks,
    _report,
    _retries,
    _runstack,
    _signals,
    _state,
    _sweep,
    _system_metrics,
    _worker_runs,
)
from flyteplugins.mlflow._config import MlflowTrackingSettings, OnTrackingError
from flyteplugins.mlflow._context import (
    PARENT_EXPERIMENT_KEY,
    PARENT_RUN_KEY,
    RESOLVED_EXPERIMENTS_KEY,
    Inherited,
    children_scope,
    current_task,
    snapshot,
)
from flyteplugins.mlflow._errors import MlflowTrackingError, TrackingRequestError
from flyteplugins.mlflow._plan import Plan, plan
from flyteplugins.mlflow._server import Server, describe, server_for, vouch
from mlflow.entities import Run, RunStatus
from mlflow.tracking.fluent import ActiveRun

__all__ = ["begin", "bound", "call_async", "call_sync", "current_run", "end", "rank0_run_id"]

logger = logging.getLogger("flyteplugins.mlflow")

P = ParamSpec("P")
R = TypeVar("R")

# The run of the innermost tracked call in this context, and the Flyte task it belongs to.
_CURRENT: contextvars.ContextVar[tuple[ActiveRun, str | None] | None] = contextvars.ContextVar(
    "flyteplugins_mlflow_run", default=None
)
_IO = ThreadPoolExecutor(max_workers=8, thread_name_prefix="flyteplugins-mlflow")
_runstack.set_owner_probe(current_task)


def current_run() -> ActiveRun | None:
    """The run of the innermost tracked call of the running task or function, if any.

    A task that Flyte runs inside its caller's context (local mode) does not see its caller's run
    unless it is tracked itself, just as it would not in a process of its own.
    """
    current = _CURRENT.get()
    if current is None or (current[1] is not None and current[1] != current_task()):
        return None
    return current[0]


def _local_run() -> ActiveRun | None:
    """The innermost tracked run in this context, whichever task owns it (shared without a request)."""
    current = _CURRENT.get()
    return None if current is None else current[0]


def rank0_run_id() -> str | None:
    """The id of the run that rank 0 logs to for the running tracked call, on any rank.

    Rank 0 answers from its own run; another rank asks :mod:`flyteplugins.mlflow._ranks`.

    Returns:
        The id, or ``None`` outside a tracked call, or when tracking is off under ``warn``.

    Raises:
        MlflowTrackingError: the run could not be found (under ``on_tracking_error="raise"``).
    """
    run = current_run() if _ranks.current_peer() is None else None  # a rank's own run is not rank 0's
    if run is not None:
        return str(run.info.run_id)
    return _ranks.peer_run_id(_resolve_experiment)


def _resolve_experiment(server: Server, name: str, known: Mapping[str, str]) -> str:
    return _experiment_id(server, name, known)


# --- 2. begin ----------------------------------------------------------------------------------


@attrs.frozen
class Opened:
    """A run that a tracked call is using, and what the tasks it calls are told about it."""

    plan: Plan
    run: ActiveRun
    owned: bool
    children: Mapping[str, str]
    monitor: Any = None
    signal_token: int | None = None  # from _signals.register: SIGTERM marks an owned run KILLED


_experiments: dict[tuple[str, str], str] = {}
_experiments_lock = threading.Lock()


def _experiment_id(server: Server, name: str, known: Mapping[str, str]) -> str:
    if name in known:
        return known[name]
    key = (server.uri, name)
    with _experiments_lock:
        if key not in _experiments:
            _experiments[key] = server.experiment_id(name)
        return _experiments[key]


@functools.lru_cache(maxsize=1)
def _source_tags() -> Mapping[str, str]:
    """MLflow's default run tags (user, source, git commit), worked out once per process."""
    return {k: str(v) for k, v in _provenance.context_tags().items()}


def _now_ms() -> int:
    return int(time.time() * 1000)


def begin(p: Plan, local_run: ActiveRun | None) -> Opened:
    """Share, resume or create the planned run. Blocking; runs off the event loop in async tasks.

    Args:
        p: the plan.
        local_run: the run of the calling task when it runs in this process (shared without a request).

    Raises:
        MlflowTrackingError: the tracking server failed or was unreachable, or holds the global state
            for another tracking URI.
    """
    server = server_for(p.tracking_uri, p.policy)
    _mlflow_state.hold(p.tracking_uri, p.autolog, p.async_logging)
    try:
        known = dict(p.resolved_experiments)
        if p.action == "share":
            assert p.run_id is not None
            if local_run is not None and local_run.info.run_id == p.run_id:
                run = local_run
            else:
                run = ActiveRun(server.get_run(p.run_id))
        elif p.action == "resume":
            assert p.run_id is not None
            found = server.get_run(p.run_id)
            if found.info.lifecycle_stage == "deleted":
                msg = (
                    f"run_id {p.run_id!r} names a deleted run; restore it in the MLflow UI or choose another"
                )
                raise TrackingRequestError(msg)
            server.set_status(p.run_id, RunStatus.to_string(RunStatus.RUNNING), None)
            if p.tags:
                server.set_tags(p.run_id, p.tags)
            run = ActiveRun(found)
        else:
            experiment_id = p.experiment_id
            if experiment_id is None:
                experiment_id = _experiment_id(server, p.experiment_name, known) if p.experiment_name else "0"
                if p.experiment_name:
                    known[p.experiment_name] = experiment_id
            tags = {**_source_tags(), **p.tags}
            run_name = p.run_name

            def create(with_tags: Mapping[str, str]) -> Run:
                return server.create_run(experiment_id, run_name, with_tags, _now_ms())

            if p.retry is None:
                run = ActiveRun(create(tags))
            else:
                run = ActiveRun(_retries.open_retry(server, p.retry, experiment_id, tags, create, _now_ms))
        _mlflow_state.use_experiment(run.info.experiment_id)
    except BaseException:
        _mlflow_state.release(p.autolog, p.async_logging)
        raise
    children = {
        PARENT_RUN_KEY: run.info.run_id,
        PARENT_EXPERIMENT_KEY: run.info.experiment_id,
        **p.passed_down,
    }
    if known != dict(p.resolved_experiments):
        children[RESOLVED_EXPERIMENTS_KEY] = json.dumps(known, sort_keys=True)
    owned = p.action != "share"
    monitor = _system_metrics.start(p, run.info.run_id, server) if p.log_system_metrics and owned else None
    token = _signals.register(run.info.run_id, server, p.journal_dir) if owned else None
    return Opened(plan=p, run=run, owned=owned, children=children, monitor=monitor, signal_token=token)


# --- 3. bound ----------------------------------------------------------------------------------


@contextlib.contextmanager
def bound(opened: Opened) -> Iterator[list[ActiveRun]]:
    """Make ``opened.run`` the active run of this context, and announce it to the tasks called inside."""
    runs, owner = [opened.run], current_task()
    stack_token = _runstack.bind(runs, owner)
    run_token = _CURRENT.set((opened.run, owner))
    try:
        with children_scope(opened.children), _state.kept(owner), _provenance.tagged(opened.plan.tags, owner):
            yield runs
    finally:
        _CURRENT.reset(run_token)
        _runstack.unbind(stack_token)


# --- 4. end ------------------------------------------------------------------------------------


def status_for(error: BaseException | None) -> str:
    """``FINISHED`` for success, ``KILLED`` for cancellation and interrupts, ``FAILED`` otherwise."""
    if error is None:
        return RunStatus.to_string(RunStatus.FINISHED)
    if isinstance(error, (asyncio.CancelledError, KeyboardInterrupt)):
        return RunStatus.to_string(RunStatus.KILLED)
    return RunStatus.to_string(RunStatus.FAILED)


def end(opened: Opened, status: str, runs: list[ActiveRun]) -> None:
    """End what the call opened: runs the user left open inside it, then its own run, then the globals.

    Raises:
        MlflowTrackingError: the final status could not be set, even after the finalize retries.
    """
    # Claimed by exactly one side: here, or by the SIGTERM handler that already marked it KILLED.
    owned = opened.owned and (opened.signal_token is None or _signals.unregister(opened.signal_token))
    try:
        if opened.monitor is not None:
            with contextlib.suppress(Exception):
                opened.monitor.finish(status == RunStatus.to_string(RunStatus.FINISHED))
        failed: list[str] = []
        if opened.plan.async_logging or _mlflow_state.async_logging_on():
            try:  # what the task queued lands before the status is set; a server away is waited for
                ids = {r.info.run_id for r in runs} | {opened.run.info.run_id}
                until = time.monotonic() + opened.plan.policy.outage
                failed = _mlflow_state.drain_async_logging(opened.plan.tracking_uri, ids, until)
            except Exception as e:
                logger.warning("MLflow's queued (async) logging could not be drained: %s", e)
        if failed and status == RunStatus.to_string(RunStatus.FINISHED):
            status = RunStatus.to_string(RunStatus.FAILED)  # as if the failing log call had raised
        if owned or len(runs) > 1:
            server = server_for(opened.plan.tracking_uri, opened.plan.policy)
            leftovers = [r.info.run_id for r in runs[1:] if r.info.run_id != opened.run.info.run_id]
            closing = [*reversed(leftovers), *([opened.run.info.run_id] if owned else [])]
            policy, journal_dir = opened.plan.policy.for_finalize(), opened.plan.journal_dir
            _journal.finish(server, closing, status, policy, journal_dir, _mlflow_state.take_unsent)
            if owned and opened.plan.sweep_root is not None:
                # After the root's own status: a server that could not take that one is not swept.
                info = opened.run.info
                _sweep.sweep(server, info.experiment_id, opened.plan.sweep_root, info.run_id, _now_ms())
        if failed:
            msg = (
                f"{len(failed)} queued MLflow logging call(s) failed (async_logging): {'; '.join(failed[:3])}"
            )
            raise TrackingRequestError(msg)
    finally:
        _mlflow_state.release(opened.plan.autolog, opened.plan.async_logging)


# --- putting it together -----------------------------------------------------------------------


def _prepare(
    own: MlflowTrackingSettings, rank: int | None, task_body: bool, func: Callable[..., Any]
) -> tuple[Plan | None, _ranks.Peer | None]:
    """The plan for this call, or on a rank other than 0 ``None`` and what rank 0 does instead."""
    import mlflow

    snap = snapshot()
    outer = _local_run()
    if not snap.in_task and outer is not None:
        # Outside Flyte, a tracked function called by another one inherits its run directly.
        snap = attrs.evolve(snap, inherited=Inherited(outer.info.run_id, outer.info.experiment_id))
    task_run = task_body and current_run() is None
    uri = mlflow.get_tracking_uri()
    name = getattr(func, "__name__", None)
    p = plan(own, rank, snap, uri, task_run=task_run, task_name=name)
    if p is not None:
        if snap.inherited.run_id is not None:
            vouch(p.tracking_uri)  # a caller created its run there: wait for it through an outage
        return p, None
    rank0 = plan(own, 0, snap, uri, task_run=task_run, task_name=name)
    assert rank0 is not None
    r = rank if rank is not None else snap.env_rank or 0
    worker = _worker_runs.template(rank0, r, own, snap, name, task_run)
    return None, attrs.evolve(_peer(rank0, r), worker=worker)


def _peer(rank0: Plan, rank: int) -> _ranks.Peer:
    """What a rank other than 0 needs to know of rank 0's plan for the same call."""
    return _ranks.Peer(
        rank=rank,
        tracking_uri=rank0.tracking_uri,
        policy=rank0.policy,
        on_error=rank0.on_error,
        shared=rank0.action == "share",
        run_id=rank0.run_id if rank0.action != "create" else None,
        action_id=rank0.tags.get(_retries.ACTION_TAG),
        attempt=rank0.tags.get(_retries.ATTEMPTS_TAG),
        experiment_id=rank0.experiment_id,
        experiment_name=rank0.experiment_name,
        resolved_experiments=rank0.resolved_experiments,
        system_metrics=rank0.log_system_metrics,
    )


def _begin_or_warn(p: Plan, local_run: ActiveRun | None) -> Opened | None:
    try:
        return begin(p, local_run)
    except MlflowTrackingError as e:
        if p.on_error is OnTrackingError.RAISE:
            raise
        logger.warning(
            "MLflow tracking is off for this call: %s (tracking URI %s)", e, describe(p.tracking_uri)
        )
        return None


def _end_or_warn(opened: Opened, error: BaseException | None, runs: list[ActiveRun]) -> None:
    status = status_for(error)
    try:
        end(opened, status, runs)
    except MlflowTrackingError as e:
        if error is None and opened.plan.on_error is OnTrackingError.RAISE:
            raise
        logger.warning(
            "MLflow run %s could not be marked %s: %s (tracking URI %s)",
            opened.run.info.run_id,
            status,
            e,
            describe(opened.plan.tracking_uri),
        )


def call_sync(
    own: MlflowTrackingSettings,
    rank: int | None,
    task_body: bool,
    func: Callable[P, R],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Run a sync function inside its MLflow run (the function may take arguments of any name).

    ``task_body`` says that ``func`` is a Flyte task's function, not a plain tracked function.
    """
    p, peer = _prepare(own, rank, task_body, func)
    if peer is not None:
        return _peer_sync(peer, func, *args, **kwargs)
    return _tracked_sync(p, func, *args, **kwargs)


def _peer_sync(peer: _ranks.Peer, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """On a rank other than 0: this node's monitor, the rank's own run (``rank_scope="worker"``), and
    rank 0's run marked ``FAILED`` when the body raises (after the monitor has stopped)."""
    with _ranks.scope(peer):
        try:
            with _system_metrics.node_monitor(peer, _resolve_experiment):
                return _tracked_sync(_worker_runs.opened(peer, _resolve_experiment), func, *args, **kwargs)
        except Exception:
            _ranks.peer_failed(peer, _resolve_experiment, _now_ms())
            raise


def _tracked_sync(p: Plan | None, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    opened = _begin_or_warn(p, _local_run()) if p is not None else None
    if opened is None:
        return func(*args, **kwargs)
    runs: list[ActiveRun] = [opened.run]
    try:
        if opened.plan.log_inputs and opened.owned:
            _inputs.record(opened.plan, opened.run, func, args, kwargs)
        with bound(opened) as runs:
            result = func(*args, **kwargs)
    except BaseException as error:
        _end_or_warn(opened, error, runs)
        _report.write(opened, error)
        raise
    _end_or_warn(opened, None, runs)
    _report.write(opened, None)
    return result


async def _complete(fn: Callable[..., R], *args: Any) -> tuple[R, bool]:
    """Run ``fn`` on the plugin's pool and wait for it even if cancelled meanwhile.

    Returns:
        The result, and whether the caller was cancelled while waiting.
    """
    try:
        future = asyncio.get_running_loop().run_in_executor(_IO, functools.partial(fn, *args))
    except RuntimeError:  # the interpreter is exiting and the pool takes no more work: run it here
        return fn(*args), False
    cancelled = False
    while True:
        try:
            return await asyncio.shield(future), cancelled
        except asyncio.CancelledError:
            cancelled = True


async def call_async(
    own: MlflowTrackingSettings,
    rank: int | None,
    task_body: bool,
    func: Callable[P, Awaitable[R]],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Run an async function inside its MLflow run, keeping the event loop free during tracking calls.

    The function may take arguments of any name (``rank``, ``func`` and ``own`` included).
    ``task_body`` says that ``func`` is a Flyte task's function, not a plain tracked function."""
    p, peer = _prepare(own, rank, task_body, func)
    if peer is None:
        return await _tracked_async(p, func, *args, **kwargs)
    with _ranks.scope(peer):
        try:
            with _system_metrics.node_monitor(peer, _resolve_experiment):  # blocks only on several nodes
                worker, _ = await _complete(_worker_runs.opened, peer, _resolve_experiment)
                return await _tracked_async(worker, func, *args, **kwargs)
        except Exception:
            await _complete(_ranks.peer_failed, peer, _resolve_experiment, _now_ms())
            raise


async def _tracked_async(
    p: Plan | None, func: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
) -> R:
    if p is None:
        return await func(*args, **kwargs)
    opened, cancelled = await _complete(_begin_or_warn, p, _local_run())
    if cancelled:
        if opened is not None:
            await _complete(_end_or_warn, opened, asyncio.CancelledError(), [opened.run])
        raise asyncio.CancelledError
    if opened is None:
        return await func(*args, **kwargs)
    runs: list[ActiveRun] = [opened.run]
    try:
        if opened.plan.log_inputs and opened.owned:
            _, cancelled = await _complete(_inputs.record, opened.plan, opened.run, func, args, kwargs)
            if cancelled:
                raise asyncio.CancelledError
        with bound(opened) as runs:
            result = await func(*args, **kwargs)
    except BaseException as error:
        await _complete(_end_or_warn, opened, error, runs)
        await _report.write_async(opened, error)
        raise
    _, cancelled = await _complete(_end_or_warn, opened, None, runs)
    if cancelled:
        raise asyncio.CancelledError
    await _report.write_async(opened, None)
    return result
