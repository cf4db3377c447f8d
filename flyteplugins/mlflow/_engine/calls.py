"""One tracked call, put together: plan, open, bind, run the body, close, report.

In async tasks the blocking steps run on a small pool of the plugin's own, so sibling trials keep
running while one waits on the tracking server; the pool is made by the first async tracked call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import attrs
from typing_extensions import ParamSpec

from flyteplugins.mlflow._distributed import ranks, system_metrics, worker_runs
from flyteplugins.mlflow._engine.binding import bound, current_run, local_run
from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._inputs import inputs
from flyteplugins.mlflow._plan.plan import Plan, plan
from flyteplugins.mlflow._plan.snapshot import Inherited, snapshot
from flyteplugins.mlflow._report import report
from flyteplugins.mlflow._runs.close import end
from flyteplugins.mlflow._runs.finish import FINISHED, status_for
from flyteplugins.mlflow._runs.open import Opened, begin
from flyteplugins.mlflow._settings.enums import OnTrackingError
from flyteplugins.mlflow._settings.settings import MlflowTrackingSettings
from flyteplugins.mlflow._tags import ACTION_ID_TAG, ATTEMPT_LIST_TAG
from flyteplugins.mlflow._tracing import observer
from flyteplugins.mlflow._transport.client import client_for
from flyteplugins.mlflow._transport.servers import describe, vouch
from mlflow.tracking.fluent import ActiveRun

__all__ = ["call_async", "call_sync"]

logger = logging.getLogger("flyteplugins.mlflow")

P = ParamSpec("P")
R = TypeVar("R")


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """The plugin's threads for blocking steps of async calls, made on first use."""
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="flyteplugins-mlflow")


def _prepare(
    own: MlflowTrackingSettings, rank: int | None, task_body: bool, func: Callable[..., Any]
) -> tuple[Plan | None, ranks.Peer | None]:
    """The plan for this call, or on a rank other than 0 ``None`` and what rank 0 does instead."""
    import mlflow

    snap = snapshot()
    outer = local_run()
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
    worker = worker_runs.template(rank0, r, own, snap, name, task_run)
    return None, attrs.evolve(_peer(rank0, r), worker=worker)


def _peer(rank0: Plan, rank: int) -> ranks.Peer:
    """What a rank other than 0 needs to know of rank 0's plan for the same call."""
    return ranks.Peer(
        rank=rank,
        tracking_uri=rank0.tracking_uri,
        policy=rank0.policy,
        on_error=rank0.on_error,
        shared=rank0.opening == "share",
        run_id=rank0.run_id if rank0.opening != "create" else None,
        action_id=rank0.tags.get(ACTION_ID_TAG),
        attempt=rank0.tags.get(ATTEMPT_LIST_TAG),
        experiment_id=rank0.experiment_id,
        experiment_name=rank0.experiment_name,
        resolved_experiments=rank0.resolved_experiments,
        system_metrics=rank0.log_system_metrics,
    )


def _trace() -> tuple[str, str] | None:
    """The trace of the task running here (id, experiment), for its report tab; ``None`` untraced."""
    if observer.open_span() is None:
        return None
    from flyteplugins.mlflow._tracing.spans import task_trace  # loaded only where a task is traced

    return task_trace()


def _begin_or_warn(p: Plan, outer: ActiveRun | None) -> Opened | None:
    try:
        opened = begin(p, outer)
    except MlflowTrackingError as e:
        if p.on_error is OnTrackingError.RAISE:
            raise
        logger.warning(
            "MLflow tracking is off for this call: %s (tracking URI %s)", e, describe(p.tracking_uri)
        )
        return None
    if p.log_system_metrics and opened.owned:
        client = client_for(p.tracking_uri, p.policy)
        opened = attrs.evolve(opened, monitor=system_metrics.start(p, opened.run.info.run_id, client))
    return opened


def _end_or_warn(opened: Opened, error: BaseException | None, runs: list[ActiveRun]) -> None:
    status = status_for(error)
    if opened.monitor is not None:  # its last samples land before the final status
        with contextlib.suppress(Exception):
            opened.monitor.finish(status == FINISHED)
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


def _peer_sync(peer: ranks.Peer, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """On a rank other than 0: this node's monitor, the rank's own run (``rank_scope="worker"``), and
    rank 0's run marked ``FAILED`` when the body raises (after the monitor has stopped)."""
    with ranks.scope(peer):
        try:
            with system_metrics.node_monitor(peer):
                return _tracked_sync(worker_runs.opened(peer), func, *args, **kwargs)
        except Exception:
            ranks.peer_failed(peer)
            raise


def _tracked_sync(p: Plan | None, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    opened = _begin_or_warn(p, local_run()) if p is not None else None
    if opened is None:
        return func(*args, **kwargs)
    runs: list[ActiveRun] = [opened.run]
    try:
        if opened.plan.log_inputs and opened.owned:
            inputs.record(opened.plan, opened.run, func, args, kwargs)
        with bound(opened) as runs:
            result = func(*args, **kwargs)
    except BaseException as error:
        _end_or_warn(opened, error, runs)
        report.write(opened, error, _trace())
        raise
    _end_or_warn(opened, None, runs)
    report.write(opened, None, _trace())
    return result


async def _complete(fn: Callable[..., R], *args: Any) -> tuple[R, bool]:
    """Run ``fn`` on the plugin's pool and wait for it even if cancelled meanwhile.

    Returns:
        The result, and whether the caller was cancelled while waiting.
    """
    try:
        future = asyncio.get_running_loop().run_in_executor(_pool(), functools.partial(fn, *args))
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
    with ranks.scope(peer):
        try:
            with system_metrics.node_monitor(peer):  # blocks only on several nodes
                worker, _ = await _complete(worker_runs.opened, peer)
                return await _tracked_async(worker, func, *args, **kwargs)
        except Exception:
            await _complete(ranks.peer_failed, peer)
            raise


async def _tracked_async(
    p: Plan | None, func: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
) -> R:
    if p is None:
        return await func(*args, **kwargs)
    opened, cancelled = await _complete(_begin_or_warn, p, local_run())
    if cancelled:
        if opened is not None:
            await _complete(_end_or_warn, opened, asyncio.CancelledError(), [opened.run])
        raise asyncio.CancelledError
    if opened is None:
        return await func(*args, **kwargs)
    runs: list[ActiveRun] = [opened.run]
    try:
        if opened.plan.log_inputs and opened.owned:
            _, cancelled = await _complete(inputs.record, opened.plan, opened.run, func, args, kwargs)
            if cancelled:
                raise asyncio.CancelledError
        with bound(opened) as runs:
            result = await func(*args, **kwargs)
    except BaseException as error:
        await _complete(_end_or_warn, opened, error, runs)
        await report.write_async(opened, error, _trace())
        raise
    _, cancelled = await _complete(_end_or_warn, opened, None, runs)
    if cancelled:
        raise asyncio.CancelledError
    await report.write_async(opened, None, _trace())
    return result
