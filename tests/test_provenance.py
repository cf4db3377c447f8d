"""Logged models carry their Flyte provenance: the tags of the tracked task that logged them.

Models are logged by hand and by autologging in local Flyte runs, and by hand in a child that runs in
a process of its own as a pod does (the only place a task has a project, a domain and a console
address). Untracked code gets no provenance, and after the last tracked task MLflow's run-context
registry is its own again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import flyte
import mlflow
import mlflow.sklearn
import numpy as np
import pytest
from flyte.extend import TaskTemplate
from mlflow.tracking import MlflowClient, fluent
from mlflow.tracking.context import registry

from flyteplugins.mlflow import get_mlflow_run, mlflow_config, mlflow_run
from flyteplugins.mlflow._patches import provenance as _provenance
from flyteplugins.mlflow._patches.current import TrackedCall, entered
from flyteplugins.mlflow._runs import open as _opening
from flyteplugins.mlflow._tags import PROVENANCE_TAGS
from tests.test_remote import RequestLog, _run_parent, server  # noqa: F401  (server: the fixture)

env = flyte.TaskEnvironment(name="provenance-tests")

FEATURES = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1], [0.1, 0.8], [0.8, 0.3]])
LABELS = np.array([0, 1, 0, 1, 0, 1])
CONSOLE = "https://flyte.example.com"


def _tiny_model() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=100).fit(FEATURES, LABELS)


def _log_model(name: str) -> str:
    info = mlflow.sklearn.log_model(_tiny_model(), name=name, pip_requirements=["scikit-learn"])
    return str(info.model_id)


def _task_tags() -> dict[str, str]:
    """The running task's Flyte identity, as the provenance tags name it (empty values left out)."""
    action = flyte.ctx().action
    tags = {
        "flyte.run_name": action.run_name,
        "flyte.action_name": action.name,
        "flyte.project": action.project,
        "flyte.domain": action.domain,
    }
    return {k: v for k, v in tags.items() if v}


def _provenance_of(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k.startswith("flyte.")}


# --- tasks ---------------------------------------------------------------------------------------


@mlflow_run
@env.task
async def logs_by_hand() -> dict[str, Any]:
    return {"model": _log_model("by-hand"), "task": _task_tags(), "installed": _provenance.PATCH.installed()}


@mlflow_run(autolog=True, framework="sklearn", log_models=True)
@env.task
def autologged_fit() -> dict[str, Any]:
    _tiny_model()
    run = get_mlflow_run()
    assert run is not None
    return {"run_id": str(run.info.run_id), "task": _task_tags()}


@env.task
async def untracked_child() -> str:
    return _log_model("untracked-child")


@mlflow_run
@env.task
async def calls_an_untracked_child() -> dict[str, Any]:
    return {"child": await untracked_child(), "own": _log_model("tracked-parent"), "task": _task_tags()}


@mlflow_run
@env.task
def starts_a_run_by_hand() -> dict[str, Any]:
    with mlflow.start_run(nested=True) as run:
        pass
    return {"run_id": str(run.info.run_id), "task": _task_tags()}


@mlflow_run(run_mode="new")
def inner_tracked() -> None:
    """A tracked plain function: its begin() runs inside the task's tracked scope, for the same task."""


@mlflow_run
@env.task
def resolves_source_tags_inside_a_tracked_scope() -> dict[str, Any]:
    seen_by_mlflow = registry.resolve_tags({})
    _opening._source_tags.cache_clear()
    inner_tracked()
    return {
        "mlflow": _provenance_of({k: str(v) for k, v in seen_by_mlflow.items()}),
        "source": _provenance_of(dict(_opening._source_tags())),
        "task": _task_tags(),
    }


def _run(task: TaskTemplate[Any, Any, Any], ctx: Any) -> Any:
    return flyte.with_runcontext(mode="local", custom_context=ctx).run(task).outputs()[0]


@pytest.fixture
def ctx(tracking_uri: str, experiment: tuple[str, str]) -> Any:
    """The workflow context: the session server and a fresh experiment."""
    return mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])


# --- the tests -----------------------------------------------------------------------------------


def test_model_logged_by_hand_carries_the_tasks_provenance(ctx: Any, client: MlflowClient) -> None:
    """log_model by hand in a tracked task makes a LoggedModel tagged with the task's run and action."""
    before = list(registry._run_context_provider_registry)
    out = _run(logs_by_hand, ctx)
    assert out["installed"] is True
    assert out["task"]["flyte.run_name"] and out["task"]["flyte.action_name"]
    model = client.get_logged_model(out["model"])
    assert _provenance_of(model.tags) == out["task"]
    assert list(registry._run_context_provider_registry) == before
    assert all(a is b for a, b in zip(registry._run_context_provider_registry, before, strict=True))
    assert not _provenance.PATCH.installed()


def test_autologged_model_carries_the_tasks_provenance(
    ctx: Any, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """An autologged fit's LoggedModel is tagged with the provenance of the task that fitted it."""
    out = _run(autologged_fit, ctx)
    models = [
        m
        for m in client.search_logged_models(experiment_ids=[experiment[1]])
        if m.source_run_id == out["run_id"]
    ]
    assert len(models) == 1
    assert _provenance_of(models[0].tags) == out["task"]


def test_untracked_child_in_a_tracked_parents_context_gets_none(ctx: Any, client: MlflowClient) -> None:
    """An untracked child run in its tracked parent's context (local mode) logs a model without provenance."""
    out = _run(calls_an_untracked_child, ctx)
    assert _provenance_of(client.get_logged_model(out["own"]).tags) == out["task"]
    assert _provenance_of(client.get_logged_model(out["child"]).tags) == {}


def test_untracked_process_gets_none(
    tracking_uri: str, experiment: tuple[str, str], client: MlflowClient, tmp_path: Path
) -> None:
    """A process that imports the plugin but tracks nothing logs models exactly as MLflow alone does."""
    script = (
        "import sys, mlflow, mlflow.sklearn, numpy as np\n"
        "import flyteplugins.mlflow\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "from mlflow.tracking.context import registry\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "m = LogisticRegression().fit(np.array([[0.0], [1.0]]), np.array([0, 1]))\n"
        "with mlflow.start_run(experiment_id=sys.argv[2]):\n"
        "    info = mlflow.sklearn.log_model(m, name='plain', pip_requirements=['scikit-learn'])\n"
        "print(info.model_id, len(list(registry._run_context_provider_registry)))\n"
    )
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env_vars["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", script, tracking_uri, experiment[1]],
        capture_output=True,
        text=True,
        env=env_vars,
        cwd=tmp_path,
        timeout=300,
        check=True,
    )
    model_id, providers = done.stdout.split()[-2:]
    assert _provenance_of(client.get_logged_model(model_id).tags) == {}
    assert int(providers) == len(list(registry._run_context_provider_registry))


def test_model_logged_after_the_last_task_gets_none(
    ctx: Any, tracking_uri: str, experiment: tuple[str, str], client: MlflowClient
) -> None:
    """Once the last tracked task has ended, a model logged by hand in this process has no provenance."""
    _run(logs_by_hand, ctx)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(experiment_id=experiment[1]):
            model_id = _log_model("after")
    finally:
        fluent._last_logged_model_id.set(None)  # MLflow's own thread-locals, as other tests expect them
        fluent._last_active_run_id.set(None)
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert _provenance_of(client.get_logged_model(model_id).tags) == {}


def test_run_started_by_hand_inside_a_task_gets_the_provenance(ctx: Any, client: MlflowClient) -> None:
    """A run the user starts inside a tracked task was made by that task: it carries the same provenance."""
    out = _run(starts_a_run_by_hand, ctx)
    assert _provenance_of(client.get_run(out["run_id"]).data.tags) == out["task"]


def test_source_tags_never_hold_a_tasks_provenance(ctx: Any) -> None:
    """The plugin's once-per-process default run tags, resolved in a tracked scope, hold no flyte.* tag."""
    out = _run(resolves_source_tags_inside_a_tracked_scope, ctx)
    assert out["mlflow"] == out["task"], "MLflow's own resolve_tags sees the provenance here"
    assert out["source"] == {}
    assert "mlflow.user" in _opening._source_tags()


def test_changed_registry_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """If MLflow's registry no longer looks as expected, the first tracked call fails naming the version."""
    providers = registry._run_context_provider_registry
    monkeypatch.setattr(providers, "_registry", tuple(providers._registry))
    with pytest.raises(RuntimeError, match=f"mlflow {mlflow.__version__}.*_registry"):
        _provenance._check()
    with pytest.raises(RuntimeError, match="_registry"), _provenance.PATCH.held(None):
        pass
    assert not _provenance.PATCH.installed()
    monkeypatch.undo()
    assert not any(
        isinstance(p, _provenance.FlyteProvenance) for p in registry._run_context_provider_registry
    )


def test_nothing_is_installed_without_provenance() -> None:
    """A tracked function outside Flyte has no provenance: the registry is left alone."""
    before = list(registry._run_context_provider_registry)
    call = TrackedCall(owner=None, provenance=_provenance.provenance({"origin": "x"}))
    with entered(call):  # what a tracked call binds; it holds the patch only with provenance to give
        assert not call.provenance
        assert not _provenance.PATCH.installed()
        assert list(registry._run_context_provider_registry) == before


def test_remote_task_model_has_project_domain_and_url(
    server: RequestLog,  # noqa: F811
    tmp_path: Path,
    client: MlflowClient,
    experiment: tuple[str, str],
) -> None:
    """A model logged in a task run as a pod has its project, domain, run, action and console address."""
    result = _run_parent("model_child", tmp_path, server.uri, experiment[1], 0.5, flyte_console_url=CONSOLE)
    run_name, action = result["flyte_run_name"], result["flyte_action"]
    model = client.get_logged_model(result["child_output"])
    assert _provenance_of(model.tags) == {
        "flyte.run_name": run_name,
        "flyte.action_name": action,
        "flyte.project": "tests",
        "flyte.domain": "development",
        "flyte.url": f"{CONSOLE}/v2/domain/development/project/tests/runs/{run_name}?i={action}",
    }
    assert set(PROVENANCE_TAGS) == set(_provenance_of(model.tags))
