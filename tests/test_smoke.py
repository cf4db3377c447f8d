"""A first end-to-end check: a parent with shared, nested and new children, against the real server."""

from __future__ import annotations

import asyncio

import flyte
import mlflow
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import mlflow_config, mlflow_run
from tests.helpers.support import own_run_id

env = flyte.TaskEnvironment(name="smoke")


@mlflow_run(run_mode="nested")
@env.task
async def trial(i: int) -> str:
    mlflow.log_param("i", i)
    return own_run_id()


@mlflow_run
@env.task
async def shared() -> str:
    mlflow.log_metric("shared", 1.0)
    return own_run_id()


@mlflow_run
@env.task
async def parent(n: int) -> list[str]:
    ids = await asyncio.gather(*(trial(i) for i in range(n)))
    return [own_run_id(), await shared(), *ids]


def test_parent_shared_and_nested(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Nested trials run under the parent, each in a run of its own holding its own param; an auto child
    logs into the parent's run."""
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])
    ids = flyte.with_runcontext(mode="local", custom_context=ctx).run(parent, n=4).outputs()[0]
    parent_id, shared_id, *trials = ids
    assert shared_id == parent_id
    assert client.get_run(parent_id).data.metrics == {"shared": 1.0}
    assert len(set(trials)) == 4 and parent_id not in trials, "each trial has a run of its own"
    for i, rid in enumerate(trials):
        run = client.get_run(rid)
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.params == {"i": str(i)}
        assert run.info.status == "FINISHED"
