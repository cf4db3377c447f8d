"""The spans of a traced Flyte run: one per task, one per ``flyte.trace`` step, in one MLflow trace.

The outermost traced task opens the trace in its own experiment, on its own tracking server, and
writes its span's ``traceparent`` into the context Flyte copies to every task it calls, so a task in
this process or in another pod nests its span under its caller's. A task's inputs and outputs are
read from Flyte's task runner (the observer is not handed them) and recorded under the rules of
:mod:`.._inputs`. ``docs/tracing.md`` says what is recorded where.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any, Final

from flyte import _trace as flyte_trace
from flyte._internal.controllers._trace import TraceInfo
from flyte._internal.runtime import taskrunner
from flyte._observe import Recorder, StepInfo, TaskInfo

import mlflow
from flyteplugins.mlflow import _flyte
from flyteplugins.mlflow._inputs.inputs import values_of
from flyteplugins.mlflow._patches import process_state
from flyteplugins.mlflow._plan.plan import plan
from flyteplugins.mlflow._plan.snapshot import snapshot
from flyteplugins.mlflow._settings.settings import MlflowTrackingSettings
from flyteplugins.mlflow._tags import (
    ACTION_NAME_TAG,
    SPAN_REPLAYED,
    SPAN_RUN_ID,
    TRACE_EXPERIMENT_KEY,
    TRACE_TAGS,
    TRACE_URI_KEY,
    TRACEPARENT_KEY,
    TRACING_KEY,
)
from flyteplugins.mlflow._tracing.observer import OPEN, OpenSpan
from flyteplugins.mlflow._transport.client import client_for, experiment_id
from mlflow.entities import SpanType
from mlflow.tracing.constant import TraceMetadataKey
from mlflow.tracing.distributed import (
    _get_tracing_headers_from_span,
    set_tracing_context_from_http_request_headers,
)
from mlflow.tracing.provider import detach_span_from_context, set_span_in_context
from mlflow.tracing.trace_manager import InMemoryTraceManager
from mlflow.tracking.fluent import flush_trace_async_logging

__all__ = ["link_run", "step_span", "task_span", "task_trace"]

logger = logging.getLogger("flyteplugins.mlflow")

_RUN_TASK: Final = inspect.unwrap(taskrunner.run_task).__code__
_TRACE_FILE: Final = flyte_trace.__file__
TASK_SPAN_TYPE: Final = SpanType.CHAIN
STEP_SPAN_TYPE: Final = SpanType.UNKNOWN


def _flyte_frames() -> Iterator[FrameType]:
    """The frames around this observer call, innermost first."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        yield frame
        frame = frame.f_back


def _runner_local(name: str) -> Any:
    """A local variable of Flyte's ``run_task`` around this observer call (its ``inputs`` or
    ``outputs``), or ``None`` when Flyte no longer calls the observer from there."""
    for frame in _flyte_frames():
        if frame.f_code is _RUN_TASK:
            return frame.f_locals.get(name)
    return None


def _step_call() -> tuple[TraceInfo | None, dict[str, Any] | None]:
    """Flyte's record of the ``flyte.trace`` step around this observer call (its output, once run or
    replayed) and the step's arguments by name, or ``None`` where Flyte no longer keeps them there."""
    info: TraceInfo | None = None
    for frame in _flyte_frames():
        if frame.f_code.co_filename != _TRACE_FILE:
            continue
        found = frame.f_locals
        if info is None and isinstance(found.get("info"), TraceInfo):
            info = found["info"]
        args, kwargs = found.get("args"), found.get("kwargs")
        if info is not None and isinstance(args, tuple) and isinstance(kwargs, dict):
            return info, {**dict(zip(info.interface.inputs, args, strict=False)), **kwargs}
    return info, None


def _outputs(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) != 1:
        return values_of({f"o{i}": v for i, v in enumerate(value)})
    return values_of({"o0": value[0] if isinstance(value, tuple) else value})


def _root(settings: Any) -> tuple[str, str, dict[str, str]]:
    """Where the run's trace goes (tracking URI, experiment id) and its tags, as the task's tracked
    call would choose them; one request at most, to resolve an experiment name (cached per process)."""
    own = settings if isinstance(settings, MlflowTrackingSettings) else MlflowTrackingSettings()
    p = plan(own, 0, snapshot(), mlflow.get_tracking_uri(), task_run=True)
    assert p is not None  # rank 0 always plans
    experiment = p.experiment_id
    if experiment is None:
        if p.experiment_name:
            client = client_for(p.tracking_uri, p.policy)
            experiment = experiment_id(client, p.experiment_name, p.resolved_experiments)
        else:
            experiment = "0"
    tags = {k: p.tags[k] for k in TRACE_TAGS if p.tags.get(k)}
    return p.tracking_uri, experiment, tags


def _end(span: Any, recorder: Recorder, outputs: dict[str, str] | None) -> None:
    """End ``span``: ``ERROR`` with the exception that Flyte recorded, else ``OK`` with ``outputs``."""
    error = recorder.error
    if error is None:
        span.end(outputs=outputs, status="OK")
        return
    span.record_exception(error if isinstance(error, Exception) else repr(error))
    span.end()


def _source_run(trace_id: str) -> str | None:
    """The ``mlflow.sourceRun`` that the trace of ``trace_id``, still open here, has now."""
    with InMemoryTraceManager.get_instance().get_trace(trace_id) as trace:
        return None if trace is None else trace.info.trace_metadata.get(TraceMetadataKey.SOURCE_RUN)


def _keep_source_run(span: Any, initial: str | None) -> None:
    """Before the root span ends, make its trace's source run the root task's run again.

    MLflow's LLM autologging sets the source run of the whole trace to the run active where a call
    is made, so a call in a tracked child task would otherwise re-point the run's trace to the
    child's run. The root's own run (recorded by :func:`link_run`) wins; an untracked root keeps the
    source run its trace started with.
    """
    wanted = span.get_attribute(SPAN_RUN_ID) or initial
    with InMemoryTraceManager.get_instance().get_trace(span.trace_id) as trace:
        if trace is None:
            return
        metadata = trace.info.trace_metadata
        if wanted is None:
            metadata.pop(TraceMetadataKey.SOURCE_RUN, None)
        else:
            metadata[TraceMetadataKey.SOURCE_RUN] = wanted


def _known_here(traceparent: str) -> bool:
    """Whether the trace of a ``traceparent`` was started in this process (local mode)."""
    parts = traceparent.split("-")
    if len(parts) != 4:
        return False
    try:
        otel_id = int(parts[1], 16)
    except ValueError:
        return False
    return InMemoryTraceManager.get_instance().get_mlflow_trace_id_from_otel_id(otel_id) is not None


@contextlib.contextmanager
def task_span(info: TaskInfo, recorder: Recorder, settings: Any) -> Iterator[None]:
    """The span of one traced task, open around its whole body and current in its context."""
    context: Mapping[str, str] = info.custom_context
    parent = context.get(TRACEPARENT_KEY)
    tags: dict[str, str] = {}
    if parent is None:
        uri, experiment, tags = _root(settings)
    else:
        uri = context.get(TRACE_URI_KEY) or mlflow.get_tracking_uri()
        experiment = context.get(TRACE_EXPERIMENT_KEY) or "0"
    inputs = _runner_local("inputs")
    with contextlib.ExitStack() as stack:
        stack.enter_context(process_state.applied(uri, None))  # MLflow's exporter sends there
        process_state.use_experiment(experiment)  # where MLflow sends spans of a trace from another pod
        remote = parent is not None and not _known_here(parent)
        if parent is not None:
            stack.enter_context(set_tracing_context_from_http_request_headers({"traceparent": parent}))
        if remote:
            # MLflow's batch exporter looks a span's trace up when it sends it, and a trace from
            # another pod is known here only inside the block above: send this task's spans first.
            stack.callback(flush_trace_async_logging)
        span = mlflow.start_span_no_context(
            info.name,
            span_type=TASK_SPAN_TYPE,
            inputs=values_of(inputs) if isinstance(inputs, Mapping) else None,
            attributes={ACTION_NAME_TAG: info.action.name},
            tags=tags or None,
            experiment_id=experiment if parent is None else None,  # MLflow takes it for roots only
        )
        initial = _source_run(span.trace_id) if parent is None else None
        token = set_span_in_context(span)
        open_token = OPEN.set(
            OpenSpan(action=info.action.name, span=span, root=parent is None, experiment_id=experiment)
        )
        carrier = {
            TRACING_KEY: "true",
            TRACEPARENT_KEY: _get_tracing_headers_from_span(span).get("traceparent", ""),
            TRACE_EXPERIMENT_KEY: experiment,
            TRACE_URI_KEY: uri,
        }
        try:
            with _flyte.children_scope({k: v for k, v in carrier.items() if v}):
                yield
        finally:
            OPEN.reset(open_token)
            detach_span_from_context(token)
            if parent is None:
                _keep_source_run(span, initial)
            _end(span, recorder, _outputs(_runner_local("outputs")))


@contextlib.contextmanager
def step_span(info: StepInfo, recorder: Recorder) -> Iterator[None]:
    """The span of one ``flyte.trace`` step, under the span current where the step is called, with
    the step's arguments and its output (for a replayed step, the output its log served)."""
    attributes: dict[str, Any] = {ACTION_NAME_TAG: info.action.name}
    if info.replayed:
        attributes[SPAN_REPLAYED] = True
    step, arguments = _step_call()
    span = mlflow.start_span_no_context(
        info.name,
        span_type=STEP_SPAN_TYPE,
        inputs=values_of(arguments) if arguments is not None else None,
        attributes=attributes,
    )
    token = set_span_in_context(span)
    try:
        yield
    finally:
        detach_span_from_context(token)
        _end(span, recorder, _outputs(step.output) if step is not None else None)


def link_run(run_id: str) -> None:
    """Record a tracked task's run on its task span; the root's becomes its trace's source run when
    the span ends (:func:`_keep_source_run`).

    The span opens before the tracked call creates the run, so MLflow found no run to link it to.
    """
    opened = OPEN.get()
    if opened is None or opened.action != _flyte.current_task():
        return
    opened.span.set_attribute(SPAN_RUN_ID, run_id)


def task_trace() -> tuple[str, str] | None:
    """The id and experiment of the trace of the task running here, when it is traced."""
    opened = OPEN.get()
    if opened is None or opened.action != _flyte.current_task():
        return None
    return str(opened.span.trace_id), opened.experiment_id
