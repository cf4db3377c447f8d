"""End to end: which setting wins, and how tags merge.

Settings resolve in this order: tracker (decorator) arguments, then the ``mlflow_config`` context (from
``with_runcontext(custom_context=...)`` or a ``with mlflow_config(...)`` block inside a task), then
``MLFLOW_TRACKING_URI``, then MLflow's defaults. A tracker's ``AUTO`` run mode is "no preference".
Tags merge over the Flyte tags: context tags, then tracker tags.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import uuid
from pathlib import Path

import flyte
import mlflow
import pytest
from flyte._context import internal_ctx
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import (
    MlflowRun,
    RunMode,
    get_mlflow_context,
    get_mlflow_run,
    mlflow_config,
    mlflow_run,
)
from tests.helpers.support import own_run_id

env = flyte.TaskEnvironment(name="e2e-precedence")

PARENT_TAG = "mlflow.parentRunId"
TRACKER_STORE = "sqlite:///e2e-precedence-tracker.db"  # relative: lands in the test's own directory
TRACKER_EXPERIMENT = "e2e-precedence-tracker-experiment"


def _settings() -> str:
    """The settings in this task's context, as JSON of their ``custom_context`` encoding ("null": none)."""
    config = get_mlflow_context()
    return json.dumps(None if config is None else dict(config), sort_keys=True)


def _unreachable_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- run mode ----------------------------------------------------------------------------------


@mlflow_run
@env.task
async def auto_child() -> str:
    return own_run_id()


@mlflow_run(run_mode="new")
@env.task
async def explicit_new_child() -> str:
    return own_run_id()


@mlflow_run(run_mode="nested")
@env.task
async def explicit_nested_child() -> str:
    return own_run_id()


@mlflow_run
@env.task
async def mode_parent() -> dict[str, str]:
    out = {"parent": own_run_id(), "plain": await auto_child()}
    with mlflow_config(run_mode="new"):
        out["ctx_new"] = await auto_child()
        out["ctx_new_tracker_nested"] = await explicit_nested_child()
    with mlflow_config(run_mode="nested"):
        out["ctx_nested"] = await auto_child()
        out["ctx_nested_tracker_new"] = await explicit_new_child()
    with MlflowRun(run_mode=RunMode.NEW).config():
        out["tracker_config_new"] = await auto_child()
    out["after"] = await auto_child()
    return out


@mlflow_run
@env.task
async def workflow_mode_parent() -> dict[str, str]:
    return {
        "parent": own_run_id(),
        "auto": await auto_child(),
        "new": await explicit_new_child(),
    }


# --- tags --------------------------------------------------------------------------------------


@MlflowRun(run_mode=RunMode.NEW, tags={"shared": "tracker", "own": "tracker"})
@env.task
async def tagged() -> dict[str, str]:
    action = flyte.ctx().action
    return {"run_id": own_run_id(), "action_name": action.name, "run_name": action.run_name or ""}


@mlflow_run
@env.task
async def tag_parent() -> list[dict[str, str]]:
    first = await tagged()
    with mlflow_config(tags={"scope": "block", "shared": "block", "flyte.action_name": "from-block"}):
        second = await tagged()
    return [first, second]


@env.task
async def in_project() -> dict[str, str]:
    """Call ``tagged`` from a context whose action has a project and domain, as on a Flyte cluster.

    Flyte's local mode leaves both unset; a child's action inherits them from its parent's action.
    """
    ctx = internal_ctx()
    tctx = ctx.data.task_context
    assert tctx is not None
    action = dataclasses.replace(tctx.action, project="e2e-project", domain="development")
    with ctx.replace_task_context(tctx.replace(action=action)):
        return await tagged()


# --- tracking URI and experiment ----------------------------------------------------------------


@MlflowRun(tracking_uri=TRACKER_STORE, experiment_id="0")
@env.task
async def on_tracker_store() -> list[str]:
    return [own_run_id(), mlflow.get_tracking_uri(), _settings()]


@mlflow_run
@env.task
async def on_resolved_store() -> list[str]:
    run = get_mlflow_run()
    assert run is not None
    return [run.info.run_id, mlflow.get_tracking_uri(), run.info.experiment_id]


@MlflowRun(experiment_name=TRACKER_EXPERIMENT)
@env.task
async def on_tracker_experiment() -> str:
    return own_run_id()


@mlflow_run
@env.task
async def block_experiment_parent(name: str) -> list[str]:
    with mlflow_config(experiment_name=name):
        scoped = await explicit_new_child()
    return [own_run_id(), scoped, await explicit_new_child()]


# --- the context itself ------------------------------------------------------------------------


@mlflow_run
@env.task
async def scoped_settings() -> dict[str, str]:
    out = {"parent": own_run_id(), "before": _settings()}
    with mlflow_config(run_mode="new", tags={"scope": "outer"}):
        out["inside"] = _settings()
        with mlflow_config(experiment_name="inner-experiment", tags={"level": "inner"}):
            out["inner"] = _settings()
        out["between"] = _settings()
    out["after"] = _settings()
    try:
        with mlflow_config(run_mode="nested", tracking_uri="http://elsewhere.invalid:5000"):
            raise KeyError("leaving the block")
    except KeyError:
        pass
    out["after_error"] = _settings()
    out["shared_after_error"] = await auto_child()
    return out


@env.task
async def read_context() -> list[str]:
    config = get_mlflow_context()
    fields = None
    if config is not None:
        fields = {
            "experiment_id": config.experiment_id,
            "run_name": config.run_name,
            "tags": dict(config.tags),
            "link_host": config.link_host,
            "run_mode": config.run_mode.value,
        }
    return [_settings(), json.dumps(fields)]


@mlflow_run
@env.task
async def read_context_tracked() -> str:
    return _settings()


@mlflow_run(tags={"from": "decorator"}, run_name="decorated")
@env.task
async def read_context_decorated() -> str:
    return _settings()


@mlflow_run
@env.task
async def lone() -> str:
    return own_run_id()


# --- tests: run mode ---------------------------------------------------------------------------


def test_context_run_mode_beats_auto_tracker_but_not_explicit_one(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A with-block run mode applies to AUTO trackers; explicit NEW/NESTED trackers keep their own mode."""
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])
    out: dict[str, str] = (
        flyte.with_runcontext(mode="local", custom_context=ctx).run(mode_parent).outputs()[0]
    )
    parent = out["parent"]
    assert out["plain"] == parent
    assert out["after"] == parent

    def parent_of(key: str) -> str | None:
        assert out[key] != parent, f"{key} shared the parent's run"
        tag: str | None = client.get_run(out[key]).data.tags.get(PARENT_TAG)
        return tag

    assert parent_of("ctx_new") is None
    assert parent_of("ctx_nested") == parent
    assert parent_of("ctx_new_tracker_nested") == parent
    assert parent_of("ctx_nested_tracker_new") is None
    assert parent_of("tracker_config_new") is None
    assert len({out[k] for k in out}) == len(out) - 2


def test_workflow_run_mode_from_runcontext(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A workflow run_mode="nested" nests AUTO children under the parent; an explicit NEW stays top-level."""
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1], run_mode="nested")
    out: dict[str, str] = (
        flyte.with_runcontext(mode="local", custom_context=ctx).run(workflow_mode_parent).outputs()[0]
    )
    assert len(set(out.values())) == 3
    assert PARENT_TAG not in client.get_run(out["parent"]).data.tags
    assert client.get_run(out["auto"]).data.tags[PARENT_TAG] == out["parent"]
    assert PARENT_TAG not in client.get_run(out["new"]).data.tags


# --- tests: tags -------------------------------------------------------------------------------


def test_tags_merge_over_flyte_tags(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Run tags are the Flyte tags, then the context's tags, then the tracker's, later ones winning."""
    config = mlflow_config(
        tracking_uri=tracking_uri, experiment_id=experiment[1], tags={"team": "ctx", "shared": "ctx"}
    )
    ctx = config
    out: dict[str, str] = flyte.with_runcontext(mode="local", custom_context=ctx).run(tagged).outputs()[0]
    tags = client.get_run(out["run_id"]).data.tags
    assert tags["flyte.action_name"] == out["action_name"]
    assert tags["flyte.run_name"] == out["run_name"]
    assert "flyte.project" not in tags  # local mode sets neither project nor domain
    assert "flyte.domain" not in tags
    assert tags["team"] == "ctx"
    assert tags["shared"] == "tracker"
    assert tags["own"] == "tracker"


def test_block_tags_add_to_context_tags(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A with-block's tags add to the workflow's, win over Flyte tags, and lose to the tracker's."""
    config = mlflow_config(
        tracking_uri=tracking_uri, experiment_id=experiment[1], tags={"team": "ctx", "shared": "ctx"}
    )
    ctx = config
    out: list[dict[str, str]] = (
        flyte.with_runcontext(mode="local", custom_context=ctx).run(tag_parent).outputs()[0]
    )
    first, second = (client.get_run(o["run_id"]).data.tags for o in out)
    assert first["flyte.action_name"] == out[0]["action_name"]
    assert "scope" not in first
    assert second["flyte.action_name"] == "from-block"
    assert second["flyte.run_name"] == out[1]["run_name"] == out[0]["run_name"]
    assert (second["team"], second["scope"], second["shared"], second["own"]) == (
        "ctx",
        "block",
        "tracker",
        "tracker",
    )


def test_project_and_domain_tags_when_set(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """When the Flyte action has a project and a domain, the run is tagged with them."""
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])
    out: dict[str, str] = flyte.with_runcontext(mode="local", custom_context=ctx).run(in_project).outputs()[0]
    tags = client.get_run(out["run_id"]).data.tags
    assert tags["flyte.project"] == "e2e-project"
    assert tags["flyte.domain"] == "development"
    assert tags["flyte.action_name"] == out["action_name"]


# --- tests: tracking URI -----------------------------------------------------------------------


def test_tracker_uri_and_experiment_beat_context_and_env(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The tracker's tracking_uri and experiment_id win over the context's and over MLFLOW_TRACKING_URI."""
    context_experiment = f"e2e-never-created-{uuid.uuid4().hex[:8]}"
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_name=context_experiment)
    with monkeypatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", _unreachable_uri())
        out: list[str] = (
            flyte.with_runcontext(mode="local", custom_context=ctx).run(on_tracker_store).outputs()[0]
        )
    run_id, uri_inside, settings = out
    assert uri_inside == TRACKER_STORE
    assert json.loads(settings)["mlflow_tracking_uri"] == TRACKER_STORE
    assert (tmp_path / "e2e-precedence-tracker.db").exists()
    run = MlflowClient(TRACKER_STORE).get_run(run_id)
    assert run.info.experiment_id == "0"
    assert run.info.status == "FINISHED"
    with pytest.raises(MlflowException):
        client.get_run(run_id)
    assert client.get_experiment_by_name(context_experiment) is None


def test_context_uri_beats_env(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The context's tracking_uri wins over MLFLOW_TRACKING_URI (which points at nothing here)."""
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])
    with monkeypatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", _unreachable_uri())
        out: list[str] = (
            flyte.with_runcontext(mode="local", custom_context=ctx).run(on_resolved_store).outputs()[0]
        )
    assert out[1:] == [tracking_uri, experiment[1]]
    assert client.get_run(out[0]).info.status == "FINISHED"


def test_env_uri_beats_mlflow_default(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no tracking_uri set anywhere else, MLFLOW_TRACKING_URI is used, and restored afterwards."""
    ctx = mlflow_config(experiment_id=experiment[1])
    with monkeypatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        out: list[str] = (
            flyte.with_runcontext(mode="local", custom_context=ctx).run(on_resolved_store).outputs()[0]
        )
        assert mlflow.get_tracking_uri() == tracking_uri
    assert out[1:] == [tracking_uri, experiment[1]]
    assert client.get_run(out[0]).info.status == "FINISHED"


def test_mlflow_default_store_when_nothing_is_set(client: MlflowClient, tmp_path: Path) -> None:
    """With no tracking_uri anywhere, the run goes to MLflow's default store in the working directory."""
    out: list[str] = flyte.with_runcontext(mode="local").run(on_resolved_store).outputs()[0]
    run_id, uri_inside, experiment_id = out
    assert uri_inside.startswith("sqlite:")
    assert Path(uri_inside.split(":///", 1)[1]).parent == tmp_path
    assert experiment_id == "0"
    assert MlflowClient(uri_inside).get_run(run_id).info.status == "FINISHED"
    with pytest.raises(MlflowException):
        client.get_run(run_id)


# --- tests: experiments ------------------------------------------------------------------------


def test_tracker_experiment_name_beats_context_experiment_id(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A tracker's experiment_name wins over the context's experiment_id."""
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])
    run_id: str = (
        flyte.with_runcontext(mode="local", custom_context=ctx).run(on_tracker_experiment).outputs()[0]
    )
    named = client.get_experiment_by_name(TRACKER_EXPERIMENT)
    assert named is not None
    assert client.get_run(run_id).info.experiment_id == named.experiment_id
    assert client.search_runs([experiment[1]]) == []


def test_context_experiment_name_is_resolved(tracking_uri: str, client: MlflowClient) -> None:
    """An experiment_name in the context is created on the server and the run lands in it."""
    name = f"e2e-context-name-{uuid.uuid4().hex[:8]}"
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_name=name)
    out: list[str] = (
        flyte.with_runcontext(mode="local", custom_context=ctx).run(on_resolved_store).outputs()[0]
    )
    created = client.get_experiment_by_name(name)
    assert created is not None
    assert out[2] == created.experiment_id
    assert client.get_run(out[0]).info.experiment_id == created.experiment_id


def test_block_experiment_name_replaces_workflow_experiment_id(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """An experiment_name set in a with-block replaces the workflow's experiment_id for the tasks inside."""
    name = f"e2e-block-name-{uuid.uuid4().hex[:8]}"
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])
    out: list[str] = (
        flyte.with_runcontext(mode="local", custom_context=ctx)
        .run(block_experiment_parent, name)
        .outputs()[0]
    )
    parent, scoped, after = out
    created = client.get_experiment_by_name(name)
    assert created is not None
    assert client.get_run(scoped).info.experiment_id == created.experiment_id
    assert client.get_run(parent).info.experiment_id == experiment[1]
    assert client.get_run(after).info.experiment_id == experiment[1]


# --- tests: the context itself -----------------------------------------------------------------


def test_with_block_restores_previous_settings(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A with-block's settings apply inside it only; the previous ones return on exit, even on an error."""
    config = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1], tags={"team": "ml"})
    ctx = config
    out: dict[str, str] = (
        flyte.with_runcontext(mode="local", custom_context=ctx).run(scoped_settings).outputs()[0]
    )
    outer = dict(config)
    assert json.loads(out["before"]) == outer
    inside = json.loads(out["inside"])
    assert json.loads(inside.pop("mlflow_tags")) == {"scope": "outer", "team": "ml"}
    untagged = {k: v for k, v in outer.items() if k != "mlflow_tags"}
    assert inside == {**untagged, "mlflow_run_mode": "new"}
    inner = json.loads(out["inner"])
    assert inner["mlflow_experiment_name"] == "inner-experiment"
    assert "mlflow_experiment_id" not in inner
    assert json.loads(inner["mlflow_tags"]) == {"scope": "outer", "team": "ml", "level": "inner"}
    assert out["between"] == out["inside"]
    assert json.loads(out["after"]) == outer
    assert json.loads(out["after_error"]) == outer
    assert out["shared_after_error"] == out["parent"]


def test_get_mlflow_context_inside_and_outside_tasks(tracking_uri: str) -> None:
    """get_mlflow_context() returns the workflow's settings inside a task, and None outside or without any."""
    config = mlflow_config(
        tracking_uri=tracking_uri,
        experiment_id="846992856162999",
        run_name="2024",
        tags={"team": "ml"},
        link_host="http://mlflow.example",
    )
    assert get_mlflow_context() is None
    seen: list[str] = (
        flyte.with_runcontext(mode="local", custom_context=config).run(read_context).outputs()[0]
    )
    assert json.loads(seen[0]) == dict(config)
    assert json.loads(seen[1]) == {
        "experiment_id": "846992856162999",
        "run_name": "2024",
        "tags": {"team": "ml"},
        "link_host": "http://mlflow.example",
        "run_mode": "auto",
    }
    assert flyte.with_runcontext(mode="local").run(read_context).outputs()[0] == ["null", "null"]
    assert get_mlflow_context() is None


def test_get_mlflow_context_in_tracked_task(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Inside a tracked task, get_mlflow_context() still shows the workflow's settings."""
    config = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1], tags={"team": "ml"})
    ctx = config
    seen: str = flyte.with_runcontext(mode="local", custom_context=ctx).run(read_context_tracked).outputs()[0]
    assert json.loads(seen) == dict(config)


def test_get_mlflow_context_leaves_out_the_decorators_own_settings(
    tracking_uri: str, experiment: tuple[str, str]
) -> None:
    """What the decorator sets (here tags and a run name) is not in get_mlflow_context(): it holds the
    Flyte context's settings only (docs/distributed-training.md says so for a decorator's URI)."""
    config = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])
    seen: str = (
        flyte.with_runcontext(mode="local", custom_context=config).run(read_context_decorated).outputs()[0]
    )
    assert json.loads(seen) == dict(config)


def test_tracker_config_as_workflow_context(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """tracker.config() passed to with_runcontext configures the workflow's tasks like mlflow_config would."""
    tracker = MlflowRun(
        tracking_uri=tracking_uri, experiment_id=experiment[1], tags={"via": "config"}, run_name="from-config"
    )
    config = tracker.config()
    assert config == mlflow_config(
        tracking_uri=tracking_uri, experiment_id=experiment[1], tags={"via": "config"}, run_name="from-config"
    )
    run_id: str = flyte.with_runcontext(mode="local", custom_context=config).run(lone).outputs()[0]
    run = client.get_run(run_id)
    assert run.info.experiment_id == experiment[1]
    assert run.info.run_name == "from-config"
    assert run.data.tags["via"] == "config"
