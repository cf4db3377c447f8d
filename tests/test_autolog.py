"""Autologging: generic and per framework, its options merged as documented, and switched off afterwards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import flyte
import mlflow
import numpy as np
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient, fluent
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.utils.autologging_utils import autologging_is_disabled

from flyteplugins.mlflow import MlflowRun, get_mlflow_run, mlflow_config, mlflow_run

env = flyte.TaskEnvironment(name="autolog-tests")

FEATURES = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1], [0.1, 0.8], [0.8, 0.3]])
LABELS = np.array([0, 1, 0, 1, 0, 1])
SCORE_PREFIX = "LogisticRegression_score_"


def _fit() -> dict[str, str]:
    """Fit and score a tiny model; report the run, and what MLflow's global state looks like meanwhile."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=100).fit(FEATURES, LABELS)
    model.score(FEATURES, LABELS)
    run = get_mlflow_run()
    active = mlflow.active_run()
    return {
        "run_id": "" if run is None else str(run.info.run_id),
        "active_run_id": "" if active is None else str(active.info.run_id),
        "sklearn_autolog_on": str(not autologging_is_disabled("sklearn")),
        "tracking_uri": mlflow.get_tracking_uri(),
        "experiment_id": str(fluent._active_experiment_id),
    }


@mlflow_run(autolog=True)
@env.task
async def generic() -> dict[str, str]:
    return _fit()


@mlflow_run(autolog=True, framework="sklearn", log_models=True, log_datasets=True)
@env.task
async def sklearn_everything() -> dict[str, str]:
    return _fit()


@mlflow_run(
    autolog=True,
    framework="sklearn",
    log_models=False,
    log_datasets=False,
    autolog_kwargs={"log_post_training_metrics": False},
)
@env.task
async def sklearn_bare() -> dict[str, str]:
    return _fit()


@mlflow_run(log_models=False)
@env.task
async def merged() -> dict[str, str]:
    return _fit()


@mlflow_run
@env.task
def sync_generic() -> dict[str, str]:
    return _fit()


@mlflow_run
@env.task
async def not_autologged() -> dict[str, str]:
    return _fit()


@env.task
async def untracked() -> dict[str, str]:
    return _fit()


def _run(task: Any, context: Any) -> dict[str, str]:
    result: dict[str, str] = (
        flyte.with_runcontext(mode="local", custom_context=context).run(task).outputs()[0]
    )
    return result


def _globals() -> tuple[object, object, object]:
    """MLflow's process-wide tracking URI, its environment mirror, and its active experiment."""
    return (tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI"), fluent._active_experiment_id)


def _post_training(metrics: dict[str, float]) -> list[str]:
    return [name for name in metrics if name.startswith(SCORE_PREFIX)]


def _models_of(client: MlflowClient, experiment_id: str, run_id: str) -> list[Any]:
    return [
        m for m in client.search_logged_models(experiment_ids=[experiment_id]) if m.source_run_id == run_id
    ]


def _all_run_ids(client: MlflowClient) -> set[str]:
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return {
        r.info.run_id
        for r in client.search_runs(experiment_ids, run_view_type=ViewType.ALL, max_results=50000)
    }


@pytest.fixture
def ctx(tracking_uri: str, experiment: tuple[str, str]) -> Any:
    """The workflow context: the session server and a fresh experiment."""
    return mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])


def test_generic_autolog_logs_params_metrics_and_model(
    ctx: Any, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """autolog=True logs the estimator's params, training metrics, a post-training metric and the model."""
    out = _run(generic, ctx)
    run_id = out["run_id"]
    assert run_id
    assert out["active_run_id"] == run_id
    assert out["sklearn_autolog_on"] == "True"
    run = client.get_run(run_id)
    assert run.data.params["max_iter"] == "100"
    assert run.data.params["C"] == "1.0"
    assert run.data.metrics["training_accuracy_score"] == 1.0
    assert len(_post_training(run.data.metrics)) == 1
    assert [m.name for m in _models_of(client, experiment[1], run_id)] == ["model"]
    assert run.info.status == "FINISHED"
    assert autologging_is_disabled("sklearn")


def test_framework_autolog_with_models_and_datasets(
    ctx: Any, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """framework="sklearn" with log_models and log_datasets logs the model and the training dataset."""
    run_id = _run(sklearn_everything, ctx)["run_id"]
    run = client.get_run(run_id)
    assert run.data.params["max_iter"] == "100"
    assert len(_models_of(client, experiment[1], run_id)) == 1
    assert run.inputs is not None
    contexts = [
        tag.value for d in run.inputs.dataset_inputs for tag in d.tags if tag.key == "mlflow.data.context"
    ]
    assert "train" in contexts
    assert len(_post_training(run.data.metrics)) == 1


def test_framework_autolog_options_switch_things_off(
    ctx: Any, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """log_models=False, log_datasets=False and log_post_training_metrics=False each take effect."""
    run_id = _run(sklearn_bare, ctx)["run_id"]
    run = client.get_run(run_id)
    assert run.data.params["max_iter"] == "100", "autologging itself is on"
    assert run.data.metrics["training_accuracy_score"] == 1.0
    assert _models_of(client, experiment[1], run_id) == []
    assert run.inputs is None or run.inputs.dataset_inputs == []
    assert _post_training(run.data.metrics) == []


def test_context_and_tracker_settings_merge(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Autolog from the context, its kwargs from the context, and the tracker's log_models=False all apply."""
    ctx = mlflow_config(
        tracking_uri=tracking_uri,
        experiment_id=experiment[1],
        autolog=True,
        framework="sklearn",
        log_models=True,
        autolog_kwargs={"log_post_training_metrics": False},
    )
    out = _run(merged, ctx)
    run = client.get_run(out["run_id"])
    assert out["sklearn_autolog_on"] == "True"
    assert run.data.params["max_iter"] == "100"
    assert _models_of(client, experiment[1], out["run_id"]) == [], "the tracker's log_models wins"
    assert _post_training(run.data.metrics) == [], "the context's autolog_kwargs apply"


def test_sync_task_autologs_in_its_worker_thread(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A sync task's fit, run in Flyte's worker thread, is autologged into the task's run."""
    ctx = mlflow_config(
        tracking_uri=tracking_uri,
        experiment_id=experiment[1],
        autolog=True,
        framework="sklearn",
        log_models=False,
    )
    out = _run(sync_generic, ctx)
    assert out["active_run_id"] == out["run_id"]
    assert client.get_run(out["run_id"]).data.params["max_iter"] == "100"


def test_without_autolog_nothing_is_autologged(ctx: Any, client: MlflowClient) -> None:
    """A tracked task without autolog has a run, but fitting a model logs nothing into it."""
    out = _run(not_autologged, ctx)
    assert out["sklearn_autolog_on"] == "False"
    run = client.get_run(out["run_id"])
    assert run.data.params == {}
    assert run.data.metrics == {}


def test_generic_autolog_after_a_framework_task(
    ctx: Any, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A framework-specific autolog task does not stop a later generic autolog task from autologging."""
    first = _run(sklearn_bare, ctx)
    assert first["sklearn_autolog_on"] == "True"
    assert autologging_is_disabled("sklearn")
    second = _run(generic, ctx)
    assert second["sklearn_autolog_on"] == "True"
    assert client.get_run(second["run_id"]).data.params["max_iter"] == "100"
    assert len(_models_of(client, experiment[1], second["run_id"])) == 1
    assert autologging_is_disabled("sklearn")


@pytest.mark.parametrize("build", [MlflowRun, mlflow_run, mlflow_config])
def test_unknown_framework_is_refused_at_construction(build: Any) -> None:
    """An unknown framework is a ValueError naming it, raised when the tracker or config is built."""
    with pytest.raises(ValueError, match="'tensorflowz'"):
        build(autolog=True, framework="tensorflowz")


def test_state_is_restored_and_a_later_untracked_task_logs_nothing(
    tmp_path: Path, ctx: Any, client: MlflowClient
) -> None:
    """After an autologged task, a plain task that fits a model logs nothing and writes no store."""
    before = _globals()
    assert before == (None, None, None)
    out = _run(generic, ctx)
    assert out["sklearn_autolog_on"] == "True"
    assert out["tracking_uri"] == ctx.tracking_uri
    assert autologging_is_disabled("sklearn")
    assert _globals() == before

    runs_before = _all_run_ids(client)
    after = _run(untracked, ctx)
    assert after["run_id"] == ""
    assert after["active_run_id"] == ""
    assert after["sklearn_autolog_on"] == "False"
    assert _all_run_ids(client) == runs_before
    assert not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "mlflow.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_prior_global_state_comes_back(
    mlflow_server: Any, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A tracking URI and experiment set before the task, and the URI's env mirror, are restored exactly."""
    prior_uri = f"http://localhost:{mlflow_server.port}"
    prior_experiment = client.create_experiment(f"prior-{experiment[0]}")
    mlflow.set_tracking_uri(prior_uri)
    try:
        mlflow.set_experiment(experiment_id=prior_experiment)
        ctx = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
        out = _run(generic, ctx)
        assert out["tracking_uri"] == mlflow_server.uri
        assert out["experiment_id"] == experiment[1]
        assert _globals() == (prior_uri, prior_uri, prior_experiment)
        assert mlflow.get_tracking_uri() == prior_uri
        assert autologging_is_disabled("sklearn")
        assert client.get_run(out["run_id"]).info.experiment_id == experiment[1]
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        fluent._active_experiment_id = None
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_the_users_own_framework_autolog_comes_back(ctx: Any, client: MlflowClient) -> None:
    """A framework autologged by the user before the task (a module-level ``mlflow.sklearn.autolog``)
    is switched on again with the user's own options after the task, not left off."""
    from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS, get_autologging_config

    mlflow.sklearn.autolog(log_models=False, log_post_training_metrics=False)
    theirs = dict(AUTOLOGGING_INTEGRATIONS["sklearn"])
    try:
        out = _run(sklearn_everything, ctx)
        assert out["sklearn_autolog_on"] == "True"
        run = client.get_run(out["run_id"])
        assert _models_of(client, run.info.experiment_id, out["run_id"]), "the task's options, not the user's"
        assert not autologging_is_disabled("sklearn")
        assert AUTOLOGGING_INTEGRATIONS["sklearn"] == theirs
        assert get_autologging_config("sklearn", "log_models") is False
    finally:
        mlflow.sklearn.autolog(disable=True)
        AUTOLOGGING_INTEGRATIONS.pop("sklearn", None)
