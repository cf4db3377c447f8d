"""Run names: a run the plugin creates without a ``run_name`` is named after its task's function."""

from __future__ import annotations

import flyte
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import MlflowRun, mlflow_config, mlflow_run
from tests.helpers.support import own_run_id

env = flyte.TaskEnvironment(name="names-tests")


@mlflow_run(run_mode="nested")
@env.task
async def fit_fold(i: int) -> str:
    return own_run_id()


@mlflow_run(run_mode="new", run_name="the-baseline")
@env.task
def score_baseline() -> str:
    return own_run_id()


@mlflow_run
@env.task
async def load_rows() -> str:
    return own_run_id()


def plain_helper() -> str:
    return own_run_id()


@mlflow_run
@env.task
async def cross_validate() -> dict[str, str]:
    return {
        "parent": own_run_id(),
        "fold": await fit_fold(0),
        "baseline": await score_baseline.aio(),
        "shared": await load_rows(),
    }


def _names(client: MlflowClient, ids: dict[str, str]) -> dict[str, str]:
    return {key: client.get_run(run_id).info.run_name for key, run_id in ids.items()}


def test_runs_are_named_after_their_tasks(
    tracking_uri: str, experiment: tuple[str, str], client: MlflowClient
) -> None:
    """The root and a nested child are named after their functions; an explicit run_name wins; a shared
    run keeps its owner's name."""
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])
    ids = flyte.with_runcontext(mode="local", custom_context=ctx).run(cross_validate).outputs()[0]
    assert _names(client, ids) == {
        "parent": "cross_validate",
        "fold": "fit_fold",
        "baseline": "the-baseline",
        "shared": "cross_validate",
    }


def test_run_name_in_the_context_names_the_root_only(
    tracking_uri: str, experiment: tuple[str, str], client: MlflowClient
) -> None:
    """A run_name given for the workflow names the root's run; its children are named after their tasks."""
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1], run_name="study-7")
    ids = flyte.with_runcontext(mode="local", custom_context=ctx).run(cross_validate).outputs()[0]
    names = _names(client, ids)
    assert (names["parent"], names["fold"]) == ("study-7", "fit_fold")


def test_plain_function_is_named_after_itself(
    tracking_uri: str, experiment: tuple[str, str], client: MlflowClient
) -> None:
    """A tracked plain function's run is named after the function."""
    run_id = MlflowRun(tracking_uri=tracking_uri, experiment_id=experiment[1])(plain_helper)()
    assert client.get_run(run_id).info.run_name == "plain_helper"
