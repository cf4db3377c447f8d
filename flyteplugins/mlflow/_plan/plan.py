"""The plan of one tracked call: what it will do, decided from its settings and its task's context.

:func:`plan` turns the tracker's settings and a :class:`~flyteplugins.mlflow._plan.snapshot.TaskSnapshot`
into a :class:`Plan` (share the caller's run, create one, or resume one), or ``None`` on a rank that
must not log. It is a pure function: it makes no requests. :mod:`flyteplugins.mlflow._engine.calls`
carries the plan out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from flyteplugins.mlflow._plan import backlink
from flyteplugins.mlflow._plan.snapshot import Inherited, TaskSnapshot
from flyteplugins.mlflow._settings.config import MlflowConfig
from flyteplugins.mlflow._settings.enums import OnRetry, OnTrackingError, RankScope, ReportGoal, RunMode
from flyteplugins.mlflow._settings.settings import MlflowTrackingSettings
from flyteplugins.mlflow._tags import (
    ACTION_ID_TAG,
    ATTEMPT_LIST_TAG,
    ATTEMPT_NUMBER_TAG,
    CONTEXT_PREFIX,
    NOTE_TAG,
    PARENT_TAG,
    ROOT_ACTION_KEY,
    ROOT_TAG,
)
from flyteplugins.mlflow._transport.policy import DEFAULT_POLICY, RequestPolicy

__all__ = ["Autolog", "Opening", "Plan", "ReportSpec", "plan", "planned_experiment"]

Opening = Literal["create", "share", "resume"]
"""How a call gets its run: create one, share the caller's, or reopen one named by id."""


@attrs.frozen
class Autolog:
    """Which autolog integration to switch on (``None``: MLflow's generic ``mlflow.autolog``) and how."""

    framework: str | None
    kwargs: Mapping[str, Any]

    @property
    def key(self) -> str:
        """The integration's name, for counting its users."""
        return self.framework or "mlflow"


@attrs.frozen
class ReportSpec:
    """What the report tab shows beyond the run itself: the ranking of children and where links point."""

    metric: str | None = None
    goal: ReportGoal = ReportGoal.MINIMIZE
    link_host: str | None = None
    link_template: str | None = None


def _report(own: MlflowTrackingSettings, ctx: MlflowConfig) -> ReportSpec | None:
    """The report a task asks for (``report=True`` on its tracker or in its context); the tracker wins."""
    if not (own.report or ctx.report):
        return None
    return ReportSpec(
        metric=own.report_metric or ctx.report_metric,
        goal=own.report_goal or ctx.report_goal or ReportGoal.MINIMIZE,
        link_host=own.link_host or ctx.link_host,
        link_template=own.link_template or ctx.link_template,
    )


@attrs.frozen
class Plan:
    """What one tracked call will do. ``share``: log into ``run_id``; ``resume``: reopen ``run_id``;
    ``create``: a new run, under ``parent_run_id`` when nested.

    ``retry`` is set on a retried attempt that creates the task's own run: the earlier attempts' runs
    are looked up and resumed or replaced (see :mod:`flyteplugins.mlflow._runs.attempts`). ``sweep_root``
    is set on a workflow's root: when the call ends, runs left ``RUNNING`` under it are swept (see
    :mod:`flyteplugins.mlflow._runs.sweep`)."""

    opening: Opening
    tracking_uri: str
    policy: RequestPolicy = DEFAULT_POLICY
    on_error: OnTrackingError = OnTrackingError.RAISE
    run_id: str | None = None
    parent_run_id: str | None = None
    experiment_id: str | None = None
    experiment_name: str | None = None
    run_name: str | None = None
    tags: Mapping[str, str] = attrs.field(factory=dict)
    autolog: Autolog | None = None
    log_system_metrics: bool = False
    async_logging: bool = False
    resolved_experiments: Mapping[str, str] = attrs.field(factory=dict)
    passed_down: Mapping[str, str] = attrs.field(factory=dict)
    retry: OnRetry | None = None
    sweep_root: str | None = None
    report: ReportSpec | None = None  # the "MLflow" report tab, written when the call ends
    journal_dir: str | None = None  # the task's raw-data prefix: where a journal goes (see _buffer.journal)
    rank_scope: RankScope = RankScope.GLOBAL  # for the other ranks: a run each (see _distributed.worker_runs)
    log_inputs: bool = False  # record the call's inputs as params and datasets (see _inputs.inputs)


def _default_experiment() -> tuple[str | None, str | None]:
    """MLflow's own default: ``MLFLOW_EXPERIMENT_ID``, else ``MLFLOW_EXPERIMENT_NAME``, else ``"0"``."""
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or None
    if experiment_id:
        return experiment_id, None
    return None, os.environ.get("MLFLOW_EXPERIMENT_NAME") or None


def planned_experiment(
    own_id: str | None, own_name: str | None, ctx: MlflowConfig, mode: RunMode, inherited: Inherited
) -> tuple[str | None, str | None]:
    """The experiment (id, name) a new run goes into, before MLflow's defaults: ``(None, None)`` for those.

    The tracker's own experiment, then for ``nested`` the parent's, then the context's, then the
    caller's. Links to a task's own run make the same choice when they are rendered.
    """
    if own_id or own_name:
        return own_id, own_name
    parent_experiment = inherited.experiment_id if inherited.run_id else None
    if mode is RunMode.NESTED and parent_experiment:
        return parent_experiment, None
    if ctx.experiment_id or ctx.experiment_name:
        return ctx.experiment_id, ctx.experiment_name
    return parent_experiment, None


def _experiment(
    own: MlflowTrackingSettings, ctx: MlflowConfig, mode: RunMode, snap: TaskSnapshot
) -> tuple[str | None, str | None]:
    chosen = planned_experiment(own.experiment_id, own.experiment_name, ctx, mode, snap.inherited)
    return chosen if chosen != (None, None) else _default_experiment()


def _autolog(own: MlflowTrackingSettings, ctx: MlflowConfig) -> Autolog | None:
    if not (own.autolog or ctx.autolog):
        return None
    kwargs: dict[str, Any] = {**ctx.autolog_kwargs, **own.autolog_kwargs}
    for name in ("log_models", "log_datasets"):
        value = getattr(own, name)
        value = getattr(ctx, name) if value is None else value
        if value is not None:
            kwargs[name] = value
    return Autolog(own.framework or ctx.framework, kwargs)


def _policy(own: MlflowTrackingSettings, ctx: MlflowConfig) -> RequestPolicy:
    timeout = own.request_timeout or ctx.request_timeout
    retries = own.request_retries if own.request_retries is not None else ctx.request_retries
    outage = own.outage_timeout if own.outage_timeout is not None else ctx.outage_timeout
    policy = DEFAULT_POLICY if retries is None else attrs.evolve(DEFAULT_POLICY, retries=retries)
    policy = policy if outage is None else attrs.evolve(policy, outage=outage)
    return policy if timeout is None else attrs.evolve(policy, timeout=timeout, read_timeout=None)


def plan(
    own: MlflowTrackingSettings,
    rank: int | None,
    snap: TaskSnapshot,
    default_uri: str,
    *,
    task_run: bool = True,
    task_name: str | None = None,
) -> Plan | None:
    """Decide what a tracked call does, from the tracker's settings and the task's context.

    Precedence: the tracker's settings, then the context's, then ``MLFLOW_TRACKING_URI`` (already in
    ``default_uri``), then MLflow's defaults. A tracker's ``AUTO`` run mode defers to the context.
    ``task_run`` says that this call is a Flyte task's body with no tracked call of the same task
    around it: only such a call's run is the task's own, the one that retries look up and whose end
    sweeps the runs under it. ``task_name`` (the task's short function name) names a run created
    without a ``run_name``.

    Returns:
        The plan, or ``None`` when this process's rank is not 0 and must not log.
    """
    effective_rank = rank if rank is not None else snap.env_rank
    if effective_rank not in (None, 0):
        return None
    ctx = snap.config or MlflowConfig()
    mode = own.run_mode if own.run_mode is not RunMode.AUTO else ctx.run_mode
    run_id = own.run_id or (None if own.run_name else ctx.run_id)
    run_name = own.run_name or (None if own.run_id else ctx.run_name) or (None if run_id else task_name)
    parent = snap.inherited.run_id

    tags: dict[str, str] = dict(snap.flyte_tags)
    if snap.attempt is not None:
        tags[ATTEMPT_NUMBER_TAG] = str(snap.attempt)
    tags.update(ctx.tags)
    tags.update(own.tags)
    description = own.run_kwargs.get("description", ctx.run_kwargs.get("description"))
    if description is not None:
        tags[NOTE_TAG] = description

    passed_down: dict[str, str] = {}
    for name in ("run_id", "run_name"):
        if getattr(ctx, name) is not None:
            passed_down[CONTEXT_PREFIX + name] = ""  # one run per identity: children don't reuse it
    for name in ("tracking_uri", "link_host", "link_template", "own_link_template", "flyte_console_url"):
        value = getattr(own, name)
        if value is not None:
            passed_down[CONTEXT_PREFIX + name] = value

    opening: Opening
    if run_id is not None:
        opening = "resume"
    elif mode is RunMode.AUTO and parent is not None:
        opening = "share"
        run_id = parent
    else:
        opening = "create"
        if mode is RunMode.NESTED and parent is not None:
            tags[PARENT_TAG] = parent
    console = own.flyte_console_url or ctx.flyte_console_url
    flyte_url = backlink.action_url(console, snap.flyte_tags) if console else snap.flyte_url
    if flyte_url:
        back = backlink.tags_for(flyte_url, snap.flyte_tags, tags.get(NOTE_TAG))
        if opening == "resume":  # a run made before: its description stays as it is
            del back[NOTE_TAG]
        tags.update(back)
    retry: OnRetry | None = None
    sweep_root: str | None = None
    if snap.in_task and snap.action_id is not None:
        if snap.inherited.root_action is not None:
            tags[ROOT_TAG] = snap.inherited.root_action
        elif task_run and opening != "share" and parent is None:
            sweep_root = snap.action_id
            passed_down[ROOT_ACTION_KEY] = snap.action_id
        if task_run and opening == "create":
            tags[ACTION_ID_TAG] = snap.action_id
            tags[ATTEMPT_LIST_TAG] = snap.attempt_label or "0"
            if snap.retried:
                retry = own.on_retry if own.on_retry is not OnRetry.NEW else ctx.on_retry
    experiment_id, experiment_name = (
        _experiment(own, ctx, mode, snap) if opening == "create" else (None, None)
    )
    return Plan(
        opening=opening,
        tracking_uri=own.tracking_uri or ctx.tracking_uri or default_uri,
        policy=_policy(own, ctx),
        on_error=own.on_tracking_error
        if own.on_tracking_error is not OnTrackingError.RAISE
        else ctx.on_tracking_error,
        run_id=run_id,
        parent_run_id=tags.get(PARENT_TAG),
        experiment_id=experiment_id,
        experiment_name=experiment_name,
        run_name=run_name,
        tags=tags,
        autolog=_autolog(own, ctx),
        log_system_metrics=bool(
            own.run_kwargs.get("log_system_metrics", ctx.run_kwargs.get("log_system_metrics"))
        ),
        async_logging=own.async_logging or ctx.async_logging,
        resolved_experiments=snap.inherited.experiment_ids,
        passed_down=passed_down,
        retry=retry,
        sweep_root=sweep_root,
        report=_report(own, ctx) if snap.in_task and task_run else None,
        journal_dir=snap.raw_data,
        rank_scope=own.rank_scope if own.rank_scope is not RankScope.GLOBAL else ctx.rank_scope,
        log_inputs=own.log_inputs or ctx.log_inputs,
    )
