"""User spans inside tracked tasks link to their own task's run and active model, also side by side.

MLflow links a new trace to "the latest active run" and "the active model" by scanning every
thread's value; inside a tracked call the scan sees that call's own values only. Four nested trials
gathered on one event-loop thread each start a span; each trace must name its own trial's run.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import flyte
import mlflow
from mlflow.entities import Trace
from mlflow.tracing.constant import TraceMetadataKey
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import mlflow_config, mlflow_run
from tests.helpers.support import own_run_id

env = flyte.TaskEnvironment(name="trace-links")

TRIALS = 4


@mlflow_run(run_mode="nested")
@env.task
async def trial(i: int, tag: str) -> tuple[str, str]:
    model = mlflow.set_active_model(name=f"model-{tag}-{i}")
    with mlflow.start_span(name=f"span-{i}") as span:
        span.set_inputs({"trial": i})
        await asyncio.sleep(0.05)  # the other trials start their spans meanwhile
        span.set_outputs({"trial": i})
    return own_run_id(), str(model.model_id)


@mlflow_run
@env.task
async def study(tag: str) -> list[tuple[str, str]]:
    return list(await asyncio.gather(*(trial(i, tag) for i in range(TRIALS))))


def traces(client: MlflowClient, experiment_id: str, count: int) -> list[Trace]:
    """The experiment's traces, once ``count`` of them are stored (they are exported in the background)."""
    deadline = time.monotonic() + 30
    while True:
        found = list(client.search_traces(locations=[experiment_id], max_results=100))
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_parallel_trials_spans_link_to_their_own_runs(
    client: MlflowClient, experiment: tuple[str, str], tracking_uri: str
) -> None:
    """4 gathered trials' spans: each trace is linked to its trial's run and active model, none crossed."""
    name, experiment_id = experiment
    tag = uuid.uuid4().hex[:8]
    config = mlflow_config(tracking_uri=tracking_uri, experiment_name=name)
    result = flyte.with_runcontext(mode="local", custom_context=config).run(study, tag)
    pairs = result.outputs()[0]
    found = traces(client, experiment_id, TRIALS)
    by_span = {t.data.spans[0].name: t.info.trace_metadata for t in found}
    assert sorted(by_span) == [f"span-{i}" for i in range(TRIALS)]
    for i, (run_id, model_id) in enumerate(pairs):
        metadata = by_span[f"span-{i}"]
        assert metadata.get(TraceMetadataKey.SOURCE_RUN) == run_id, (i, metadata)
        assert metadata.get(TraceMetadataKey.MODEL_ID) == model_id, (i, metadata)
    assert len({run for run, _ in pairs}) == TRIALS
