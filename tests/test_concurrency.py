"""End to end: the documented hyper-parameter-search pattern, with 32 trials started together.

Each trial logs through MLflow's ordinary fluent API. In local mode, gathered async trials share one
event-loop thread, so a thread-local active run would send their params and metrics to the wrong run.
Sync trials run in worker threads, and each hands its metric to a helper thread that runs in a copy
of the trial's context, so a thread-local active run would lose the metric to a run of its own.
The checks read every run back from the real server and count the trials whose run does not hold
exactly what that trial logged, under the right parent.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import flyte
import mlflow
import pytest
from flyte.extend import TaskTemplate
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import mlflow_config, mlflow_run
from tests.helpers.support import own_run_id

env = flyte.TaskEnvironment(name="e2e-concurrency")

TRIALS = 32
PARENT_TAG = "mlflow.parentRunId"


@mlflow_run(run_mode="nested")
@env.task
async def nested_trial(i: int) -> str:
    mlflow.log_param("trial", i)
    await asyncio.sleep(0)  # let the other trials run between this trial's two calls
    mlflow.log_metric("score", i)
    return own_run_id()


@mlflow_run(run_mode="new")
@env.task
async def new_trial(i: int) -> str:
    mlflow.log_param("trial", i)
    await asyncio.sleep(0)
    mlflow.log_metric("score", i)
    return own_run_id()


@mlflow_run(run_mode="nested")
@env.task
def sync_trial(i: int) -> str:
    mlflow.log_param("trial", i)
    # Hand the metric to a helper thread that runs in a copy of this task's context, as
    # asyncio.to_thread does: the run goes with the context, not with the thread.
    helper = threading.Thread(target=contextvars.copy_context().run, args=(mlflow.log_metric, "score", i))
    helper.start()
    helper.join()
    return own_run_id()


async def _study(trial: TaskTemplate[Any, Any, Any], n: int, sync: bool) -> list[str]:
    """The parent's part: log its own settings, run the trials together, log its own result."""
    parent = own_run_id()
    mlflow.log_param("n_trials", n)
    if sync:
        ids = await asyncio.gather(*(trial.aio(i) for i in range(n)))
    else:
        ids = await asyncio.gather(*(trial(i) for i in range(n)))
    mlflow.log_metric("best_score", float(n - 1))
    return [parent, *ids]


@mlflow_run
@env.task
async def nested_search(n: int) -> list[str]:
    return await _study(nested_trial, n, sync=False)


@mlflow_run
@env.task
async def new_search(n: int) -> list[str]:
    return await _study(new_trial, n, sync=False)


@mlflow_run
@env.task
async def sync_search(n: int) -> list[str]:
    return await _study(sync_trial, n, sync=True)


def _misrouted(runs: dict[str, Run], trial_ids: list[str], parent_id: str | None) -> list[str]:
    """Describe each trial whose run lacks exactly its own param and metric, or has the wrong parent."""
    problems = []
    for i, run_id in enumerate(trial_ids):
        run = runs.get(run_id)
        if run is None:
            problems.append(f"trial {i}: run {run_id} not found")
            continue
        got = (run.data.params, run.data.metrics, run.data.tags.get(PARENT_TAG), run.info.status)
        want = ({"trial": str(i)}, {"score": float(i)}, parent_id, "FINISHED")
        if got != want:
            problems.append(f"trial {i}: run {run_id} holds {got}, expected {want}")
    return problems


@pytest.mark.parametrize(
    ("search", "mode"),
    [(nested_search, "nested"), (new_search, "new"), (sync_search, "nested")],
    ids=["gather-nested-async", "gather-new-async", "gather-nested-sync-threads"],
)
def test_parallel_trials_log_into_their_own_runs(
    search: TaskTemplate[Any, Any, Any],
    mode: str,
    tracking_uri: str,
    client: MlflowClient,
    experiment: tuple[str, str],
) -> None:
    """32 trials started together each log into their own run, with the right parent; none is misrouted."""
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])
    ids: list[str] = flyte.with_runcontext(mode="local", custom_context=ctx).run(search, TRIALS).outputs()[0]
    parent_id, *trial_ids = ids
    assert len(trial_ids) == TRIALS
    assert len(set(trial_ids)) == TRIALS, "two trials reported the same run"
    assert parent_id not in trial_ids

    runs = {r.info.run_id: r for r in client.search_runs([experiment[1]], max_results=1000)}
    assert set(runs) == {parent_id, *trial_ids}, "runs other than the parent's and the trials' were made"
    problems = _misrouted(runs, trial_ids, parent_id if mode == "nested" else None)
    print(f"{search.name}: {len(problems)} of {TRIALS} parallel trials misrouted")
    assert len(problems) == 0, "\n".join(problems)

    parent = runs[parent_id]
    assert parent.data.params == {"n_trials": str(TRIALS)}
    assert parent.data.metrics == {"best_score": float(TRIALS - 1)}
    assert PARENT_TAG not in parent.data.tags
    assert parent.info.status == "FINISHED"
    assert mlflow.active_run() is None
