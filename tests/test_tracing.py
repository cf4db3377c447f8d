"""A traced Flyte run is one MLflow trace: every task and ``flyte.trace`` step a span, nested as called.

Real local runs against the session's ``mlflow server``; the trace is read back from the server.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import flyte
import mlflow
import pytest
from mlflow.entities import Span, SpanStatusCode, Trace
from mlflow.tracing.constant import TraceMetadataKey
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import mlflow_config, mlflow_run
from tests.helpers.support import own_run_id

env = flyte.TaskEnvironment(name="tracing")


@flyte.trace
async def think(prompt: str) -> str:
    return prompt.upper()


@env.task
async def tool(i: int) -> int:
    with mlflow.start_span(name=f"user-{i}"):
        await think(f"tool {i}")
    return i * 2


@mlflow_run(run_mode="nested")
@env.task
async def trial(x: int) -> str:
    return own_run_id()


@mlflow_run(tracing=True)
@env.task
async def agent(n: int, api_key: str) -> list[str]:
    await think("plan")
    doubled = await asyncio.gather(*(tool(i) for i in range(n)))
    return [own_run_id(), await trial(sum(doubled)), api_key[:0]]


@env.task
async def broken(x: int) -> int:
    raise ValueError(f"broken {x}")


@env.task
async def caller(x: int) -> int:
    return await broken(x)


def read_traces(client: MlflowClient, experiment_id: str, count: int = 1) -> list[Trace]:
    """The experiment's traces once ``count`` are stored with all their spans (exported in the background)."""
    deadline = time.monotonic() + 30
    found: list[Trace] = []
    while time.monotonic() < deadline:
        found = list(client.search_traces(locations=[experiment_id], max_results=50))
        if len(found) >= count and all(t.info.state.value != "IN_PROGRESS" for t in found):
            return [client.get_trace(t.info.trace_id) for t in found]
        time.sleep(0.3)
    return found


def children(spans: list[Span], parent: Span) -> list[str]:
    return sorted(s.name for s in spans if s.parent_id == parent.span_id)


def test_a_traced_run_is_one_trace_of_its_tasks_and_steps(
    client: MlflowClient, experiment: tuple[str, str], tracking_uri: str
) -> None:
    """Tasks (tracked or not), steps and user spans nest as called, under one root in its experiment."""
    name, experiment_id = experiment
    config = mlflow_config(tracking_uri=tracking_uri, experiment_name=name)
    run_name = f"traced-{uuid.uuid4().hex[:12]}"
    run = flyte.with_runcontext(mode="local", name=run_name, custom_context=config).run(agent, 3, "sk-secret")
    agent_run, trial_run, _ = run.outputs()[0]
    (trace,) = read_traces(client, experiment_id)
    spans = trace.data.spans
    (root,) = [s for s in spans if s.parent_id is None]
    assert root.name == "tracing.agent"
    assert children(spans, root) == ["think", "tracing.tool", "tracing.tool", "tracing.tool", "tracing.trial"]
    for span in spans:
        if span.name == "tracing.tool":
            assert children(spans, span) == [f"user-{span.inputs['i']}"]
            (user,) = [s for s in spans if s.parent_id == span.span_id]
            assert children(spans, user) == ["think"]
            assert span.outputs == {"o0": str(2 * int(span.inputs["i"]))}
            assert span.status.status_code == SpanStatusCode.OK
    (trial_span,) = [s for s in spans if s.name == "tracing.trial"]
    assert trial_span.attributes["flyte.mlflow_run_id"] == trial_run
    assert root.attributes["flyte.mlflow_run_id"] == agent_run
    assert root.inputs == {"n": "3"}, "the credential is never recorded"
    assert trace.info.trace_metadata[TraceMetadataKey.SOURCE_RUN] == agent_run
    assert trace.info.tags["flyte.run_name"] == run_name
    assert all(
        s.attributes.get("flyte.action_name") for s in spans if s.name.startswith(("tracing.", "think"))
    )


def test_a_failing_task_is_an_error_span(
    client: MlflowClient, experiment: tuple[str, str], tracking_uri: str
) -> None:
    """The task that raised and its caller are ERROR spans holding the exception; tracing by context alone."""
    name, experiment_id = experiment
    config = mlflow_config(tracking_uri=tracking_uri, experiment_name=name, tracing=True)
    with pytest.raises(Exception, match="broken 7"):
        flyte.with_runcontext(mode="local", custom_context=config).run(caller, 7)
    (trace,) = read_traces(client, experiment_id)
    by_name = {s.name: s for s in trace.data.spans}
    assert set(by_name) == {"tracing.caller", "tracing.broken"}
    broken_span = by_name["tracing.broken"]
    assert broken_span.parent_id == by_name["tracing.caller"].span_id
    assert broken_span.status.status_code == SpanStatusCode.ERROR
    assert any("broken 7" in json.dumps(e.attributes) for e in broken_span.events)
    assert by_name["tracing.caller"].status.status_code == SpanStatusCode.ERROR
    assert trace.info.state.value == "ERROR"


def test_untraced_runs_make_no_trace(
    client: MlflowClient, experiment: tuple[str, str], tracking_uri: str
) -> None:
    """Without the setting, the same tasks open no span and the experiment holds no trace."""
    name, experiment_id = experiment
    config = mlflow_config(tracking_uri=tracking_uri, experiment_name=name)
    flyte.with_runcontext(mode="local", custom_context=config).run(tool, 1)
    time.sleep(1)
    assert list(client.search_traces(locations=[experiment_id])) == []
