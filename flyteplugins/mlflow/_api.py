"""The documented functions: ``mlflow_run``, ``mlflow_config``, ``get_mlflow_run``, ``get_mlflow_context``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, overload

from typing_extensions import ParamSpec, Unpack

from flyteplugins.mlflow._settings import config
from flyteplugins.mlflow._settings.checks import START_RUN_KWARGS
from flyteplugins.mlflow._settings.config import MlflowConfig
from flyteplugins.mlflow._settings.enums import OnRetry, OnTrackingError, RankScope, ReportGoal, RunMode
from flyteplugins.mlflow._tracker import MlflowRun

if TYPE_CHECKING:
    from flyte.extend import TaskTemplate

    from mlflow.tracking.fluent import ActiveRun

__all__ = [
    "ConfigOptions",
    "RunOptions",
    "get_mlflow_context",
    "get_mlflow_run",
    "get_mlflow_run_id",
    "mlflow_config",
    "mlflow_run",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T", bound="TaskTemplate[Any, Any, Any]")


class ConfigOptions(TypedDict, total=False):
    """The keyword arguments of :func:`mlflow_config` (see :class:`MlflowConfig` for each setting).

    ``description`` and ``log_system_metrics`` are the extra ``mlflow.start_run`` arguments.
    """

    run_mode: RunMode | Literal["auto", "new", "nested"]
    tracking_uri: str | None
    experiment_name: str | None
    experiment_id: str | None
    run_name: str | None
    run_id: str | None
    tags: Mapping[str, str] | None
    autolog: bool
    framework: str | None
    log_models: bool | None
    log_datasets: bool | None
    autolog_kwargs: Mapping[str, Any] | None
    link_host: str | None
    link_template: str | None
    own_link_template: str | None
    flyte_console_url: str | None
    on_tracking_error: OnTrackingError | Literal["raise", "warn"]
    async_logging: bool
    on_retry: OnRetry | Literal["new", "resume"]
    request_timeout: float | None
    request_retries: int | None
    outage_timeout: float | None
    report: bool
    report_metric: str | None
    report_goal: ReportGoal | Literal["minimize", "maximize"] | None
    rank_scope: RankScope | Literal["global", "worker"]
    log_inputs: bool
    tracing: bool
    description: str
    log_system_metrics: bool


class RunOptions(ConfigOptions, total=False):
    """The keyword arguments of :func:`mlflow_run`: those of :func:`mlflow_config`, plus ``rank``."""

    rank: int | None


def _settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """Move the ``mlflow.start_run`` extras (and any unknown keyword) into ``run_kwargs``."""
    fields = dict(options)
    extras = {k: fields.pop(k) for k in list(fields) if k not in _SETTING_NAMES}
    if extras:
        fields["run_kwargs"] = extras
    return fields


def mlflow_config(**options: Unpack[ConfigOptions]) -> MlflowConfig:
    """Build MLflow settings for a whole workflow, or for a ``with`` block inside a task.

    ``flyte.with_runcontext(custom_context=mlflow_config(...))`` gives every tracked task of the run
    these settings; ``with mlflow_config(run_mode="new"): await child()`` applies them to the tasks
    called in the block. Settings on a tracker win over these.

    Args:
        **options: Any setting of [`MlflowConfig`][flyteplugins.mlflow.MlflowConfig] by name, plus
            ``description`` and ``log_system_metrics``, the extra ``mlflow.start_run`` arguments
            (collected into ``run_kwargs``).

    Returns:
        The settings, as an ``MlflowConfig``.

    Raises:
        ValueError: invalid or conflicting settings, or an unknown keyword (valid extras:
            ``description``, ``log_system_metrics``).
        TypeError: a setting of the wrong type.
    """
    return MlflowConfig(**_settings(options))


@overload
def mlflow_run(target: T, /) -> T: ...


@overload
def mlflow_run(target: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def mlflow_run(**options: Unpack[RunOptions]) -> MlflowRun: ...


def mlflow_run(target: Any = None, /, **options: Any) -> Any:
    """Track a task's MLflow run: ``@mlflow_run`` or ``@mlflow_run(run_mode=..., ...)`` above ``@env.task``.

    Used bare, it decorates the task with default settings. Called with settings, it returns an
    [`MlflowRun`][flyteplugins.mlflow.MlflowRun] tracker, so
    ``mlflow_run(run_mode="new") == MlflowRun(run_mode=RunMode.NEW)``.

    Args:
        target: The task or function to decorate, when used bare (``@mlflow_run``).
        **options: Any setting of [`MlflowConfig`][flyteplugins.mlflow.MlflowConfig] by name,
            ``rank``, and ``description`` and ``log_system_metrics``, the extra ``mlflow.start_run``
            arguments (collected into ``run_kwargs``).

    Returns:
        Used bare, the decorated copy of the task (same type) or a wrapper with the function's
        signature; called with settings, the ``MlflowRun`` tracker they make.

    Raises:
        ValueError: invalid or conflicting settings, or an unknown keyword.
        TypeError: a setting of the wrong type, or a target that cannot be decorated.
    """
    tracker = MlflowRun(**_settings(options))
    return tracker if target is None else tracker(target)


def get_mlflow_run() -> ActiveRun | None:
    """The MLflow run of the tracked task or function being executed, or ``None`` outside one.

    On ranks other than 0 it is that rank's own run under ``rank_scope="worker"``, and ``None`` under
    the default ``"global"`` (use ``get_mlflow_run_id`` there). Also ``None`` in an untracked task even
    when a tracked task called it, and when tracking is off because the server failed under
    ``on_tracking_error="warn"``.

    Returns:
        The ``mlflow.ActiveRun`` of the current call, or ``None``.
    """
    if "flyteplugins.mlflow._engine.binding" not in sys.modules:
        return None  # no tracked call has started in this process
    from flyteplugins.mlflow._engine.binding import current_run

    return current_run()


def get_mlflow_run_id() -> str | None:
    """The id of the MLflow run that rank 0 logs to, on every rank of a distributed job.

    On rank 0 (and in any ordinary tracked call) it is the id of ``get_mlflow_run()``'s run, at no
    cost. On other ranks (which have no run, or under ``rank_scope="worker"`` a run of their own
    nested under rank 0's) it is found: from the Flyte context when rank 0 shares
    its caller's run or resumes a given one, otherwise with one search of the tracking server per try
    while rank 0 has not created its run yet (up to 60 s). The answer is kept for the process, so only
    the first call costs anything. Other ranks can log to the run by id with ``MlflowClient``.

    Returns:
        The id, or ``None`` outside a tracked call or when tracking is off under ``warn``.

    Raises:
        MlflowTrackingError: on a rank other than 0, rank 0's run could not be found.
    """
    if "flyteplugins.mlflow._engine.binding" not in sys.modules:
        return None  # no tracked call has started in this process
    from flyteplugins.mlflow._engine.binding import rank0_run_id

    return rank0_run_id()


def get_mlflow_context() -> MlflowConfig | None:
    """The MLflow settings in the current task's context (from ``with_runcontext`` and ``with`` blocks).

    Returns:
        The settings, or ``None`` outside a task or when the context holds none.

    Raises:
        ValueError: the context holds a malformed ``mlflow_*`` entry.
    """
    return config.current()


_SETTING_NAMES = frozenset(RunOptions.__annotations__) - frozenset(START_RUN_KWARGS)
