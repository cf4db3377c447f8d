"""The settings' enums (run mode, error and retry policies, report goal, rank scope) and their converters.

Each enum is a ``str`` enum whose values are what users write (``run_mode="nested"``); each
``to_*`` converter takes either form and refuses anything else with the valid choices named.
"""

from __future__ import annotations

import enum
from typing import TypeVar

__all__ = [
    "OnRetry",
    "OnTrackingError",
    "RankScope",
    "ReportGoal",
    "RunMode",
    "to_enum",
    "to_on_retry",
    "to_on_tracking_error",
    "to_rank_scope",
    "to_report_goal",
    "to_run_mode",
]


class RunMode(str, enum.Enum):
    """How a task's MLflow run relates to the run of the task that called it.

    ``AUTO`` shares the caller's run when there is one and otherwise starts a run. ``NEW`` always
    starts a top-level run. ``NESTED`` starts a run whose ``mlflow.parentRunId`` is the caller's run.
    On a tracker, ``AUTO`` means "no preference": a run mode set in the context wins over it.
    """

    AUTO = "auto"
    """Share the caller's run when the caller is tracked (never ending it), else start a run."""
    NEW = "new"
    """Start a top-level run of the task's own, even when the caller has a run."""
    NESTED = "nested"
    """Start a run of the task's own under the caller's run (tag ``mlflow.parentRunId``)."""

    def __str__(self) -> str:
        return self.value


class OnTrackingError(str, enum.Enum):
    """What a task does when the tracking server fails it.

    ``RAISE`` fails the task with an [`MlflowTrackingError`][flyteplugins.mlflow.MlflowTrackingError].
    ``WARN`` logs a warning and goes on: the body runs untracked if the run cannot start, and a
    finished body's result is returned even if the run cannot be finalized.
    """

    RAISE = "raise"
    """The default: a tracking failure fails the task with an ``MlflowTrackingError``."""
    WARN = "warn"
    """Log a warning on the ``flyteplugins.mlflow`` logger and go on (``get_mlflow_run()`` is ``None``)."""

    def __str__(self) -> str:
        return self.value


class OnRetry(str, enum.Enum):
    """What a retried task does with the runs that its earlier attempts left.

    A retry is a Flyte attempt after the first (``flyte.ctx().attempt_number > 0``) or a restart of
    PyTorch elastic workers (``TORCHELASTIC_RESTART_COUNT > 0``). ``NEW`` gives the retry a run of
    its own: an earlier run still ``RUNNING`` is marked ``KILLED``, and the new run and the one it
    replaces are tagged with each other's ids. ``RESUME`` reopens the latest earlier attempt's run,
    so a training that resumes from a checkpoint keeps one run and one metric history.
    """

    NEW = "new"
    """The default: the retry gets a run of its own, tagged ``flyte.replaces``; the latest earlier run is
    tagged ``flyte.replaced_by``, and earlier runs still ``RUNNING`` are marked ``KILLED``."""
    RESUME = "resume"
    """The retry reopens the latest earlier run (``flyte.attempts`` lists every attempt that wrote to it);
    with no earlier run, it creates one as usual."""

    def __str__(self) -> str:
        return self.value


class ReportGoal(str, enum.Enum):
    """Which way is better for ``report_metric``, the metric that ranks nested children in the report.

    ``MINIMIZE`` puts the child with the lowest value first (a loss, an error); ``MAXIMIZE`` the
    highest (an accuracy, a score). Unset (``None``) on a tracker or config means "no preference";
    when nothing sets it, the report minimizes.
    """

    MINIMIZE = "minimize"
    """Lowest value first: a loss, an error. What the report does when nothing sets a goal."""
    MAXIMIZE = "maximize"
    """Highest value first: an accuracy, a score."""

    def __str__(self) -> str:
        return self.value


class RankScope(str, enum.Enum):
    """Which ranks of a distributed job get an MLflow run of their own.

    ``GLOBAL`` keeps one run for the job, rank 0's; the other ranks run untracked. ``WORKER`` gives
    every other rank a run of its own too, nested under rank 0's run and named
    ``<task>-rank-<rank>``, where that rank's ``mlflow.log_*`` calls go.
    """

    GLOBAL = "global"
    """The default: rank 0 alone has a run; other ranks send nothing unless they ask for its id."""
    WORKER = "worker"
    """Every rank other than 0 also gets a run, nested under rank 0's, tagged with its rank, local
    rank, node and world size; ``get_mlflow_run()`` returns it there."""

    def __str__(self) -> str:
        return self.value


_E = TypeVar("_E", bound=enum.Enum)


def to_enum(enum_type: type[_E], field: str, value: object) -> _E:
    """``value`` as a member of ``enum_type``: a member, or a string equal to a member's value.

    Raises:
        ValueError: the string is no member's value; the message names ``field`` and the choices.
        TypeError: the value is neither a string nor a member.
    """
    if isinstance(value, enum_type):
        return value
    if isinstance(value, str):
        for member in enum_type:
            if member.value == value:
                return member
        choices = ", ".join(repr(m.value) for m in enum_type)
        msg = f"{field} must be one of {choices}, got {value!r}"
        raise ValueError(msg)
    msg = f"{field} must be a {enum_type.__name__} or a string, got {type(value).__name__} {value!r}"
    raise TypeError(msg)


def to_run_mode(value: RunMode | str) -> RunMode:
    """Convert a run mode given as a :class:`RunMode` or its string value.

    Raises:
        ValueError: the string is not a run mode; the message lists the valid ones.
        TypeError: the value is neither a string nor a ``RunMode``.
    """
    return to_enum(RunMode, "run_mode", value)


def to_on_tracking_error(value: OnTrackingError | str) -> OnTrackingError:
    """Convert an error policy given as an :class:`OnTrackingError` or its string value.

    Raises:
        ValueError: the string is not a policy; the message lists the valid ones.
        TypeError: the value is neither a string nor an ``OnTrackingError``.
    """
    return to_enum(OnTrackingError, "on_tracking_error", value)


def to_on_retry(value: OnRetry | str) -> OnRetry:
    """Convert a retry policy given as an :class:`OnRetry` or its string value.

    Raises:
        ValueError: the string is not a retry policy; the message lists the valid ones.
        TypeError: the value is neither a string nor an ``OnRetry``.
    """
    return to_enum(OnRetry, "on_retry", value)


def to_rank_scope(value: RankScope | str) -> RankScope:
    """Convert a rank scope given as a :class:`RankScope` or its string value.

    Raises:
        ValueError: the string is not a rank scope; the message lists the valid ones.
        TypeError: the value is neither a string nor a ``RankScope``.
    """
    return to_enum(RankScope, "rank_scope", value)


def to_report_goal(value: ReportGoal | str | None) -> ReportGoal | None:
    """Convert a report goal given as a :class:`ReportGoal`, its string value, or ``None`` (unset).

    Raises:
        ValueError: the string is not a goal; the message lists the valid ones.
        TypeError: the value is neither a string, a ``ReportGoal`` nor ``None``.
    """
    return None if value is None else to_enum(ReportGoal, "report_goal", value)
