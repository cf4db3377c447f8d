"""Flyte's observer hook: registered when the plugin is imported, the one thing done at import.

A task's span must open before its body runs, in every process that runs a task of a traced run, so
the observer has to be in place before any task starts. For a task that is not traced it costs one
lookup in the task's ``custom_context`` (and one in the names of tasks whose tracker turns tracing
on, when there are any); MLflow is loaded only when a traced task starts.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Final

import attrs
from flyte._observe import Recorder, StepInfo, TaskInfo, register_observer

from flyteplugins.mlflow._tags import TRACING_KEY

__all__ = ["OBSERVER", "OpenSpan", "open_span", "register", "trace_task"]


@attrs.frozen(eq=False)
class OpenSpan:
    """The task span open in this context: whose task it is, MLflow's span, whether it is the root,
    and the experiment of its trace."""

    action: str
    span: Any  # mlflow's LiveSpan
    root: bool
    experiment_id: str = "0"


OPEN: Final[contextvars.ContextVar[OpenSpan | None]] = contextvars.ContextVar(
    "flyteplugins_mlflow_task_span", default=None
)
_TRACKERS: dict[str, Any] = {}  # task name -> the settings of its tracker, for trackers with tracing on
_NOTHING: Final = contextlib.nullcontext()


def open_span() -> OpenSpan | None:
    """The innermost task span open in this context, if any (of whichever task)."""
    return OPEN.get()


def trace_task(name: str, settings: Any) -> None:
    """Trace the task called ``name`` (a tracker with ``tracing=True`` decorated it), with its settings."""
    _TRACKERS[name] = settings


class FlyteObserver:
    """Opens a span for every task and step of a traced run; does nothing for the others."""

    def task_span(self, info: TaskInfo, recorder: Recorder) -> contextlib.AbstractContextManager[object]:
        """A span for the task when its context or its tracker turns tracing on, else nothing."""
        if info.custom_context.get(TRACING_KEY) != "true" and not (_TRACKERS and info.name in _TRACKERS):
            return _NOTHING
        from flyteplugins.mlflow._tracing import spans  # MLflow loads with the first traced task

        return spans.task_span(info, recorder, _TRACKERS.get(info.name))

    def step_span(self, info: StepInfo, recorder: Recorder) -> contextlib.AbstractContextManager[object]:
        """A span for a ``flyte.trace`` step of a traced task, else nothing."""
        if OPEN.get() is None:
            return _NOTHING
        from flyteplugins.mlflow._tracing import spans

        return spans.step_span(info, recorder)


OBSERVER: Final = FlyteObserver()


def register() -> None:
    """Subscribe the observer to Flyte's hook (a no-op when it already is)."""
    register_observer(OBSERVER)
