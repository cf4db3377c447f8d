"""Tracking servers that authenticate: MLflow's basic-auth app, and a bearer-token proxy.

The session's :class:`~tests.helpers.support.AuthServer` is ``mlflow server --app-name basic-auth``,
which checks a password hash on every request. Each test gets a user of its own who may edit one
experiment, only read a second and do nothing with a third. Credentials reach the tasks the way a
``flyte.Secret(as_env_var=...)`` puts them in a pod: as ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``) in the environment.

Every refusal is counted at the server: one request, answered 401 or 403, and nothing after it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import flyte
import flyte.errors
import mlflow
import pytest
from flyte._persistence._db import LocalDB
from flyte.config._reader import get_config_file
from flyte.extend import TaskTemplate
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import MlflowConfig, MlflowRun, get_mlflow_run, mlflow_config, mlflow_run
from tests.helpers.support import CREATE, SEARCH, UPDATE, AuthServer, MlflowServer, Relay, Team, own_run_id

env = flyte.TaskEnvironment(name="auth")


def _log_in(monkeypatch: pytest.MonkeyPatch, user: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


# --- the tasks ----------------------------------------------------------------------------------


@mlflow_run(run_mode="nested")
@env.task
async def trial(lr: float) -> str:
    mlflow.log_param("lr", lr)
    mlflow.log_metric("loss", 1.0 / lr)
    return own_run_id()


@mlflow_run(run_mode="new")
@env.task
async def summary() -> str:
    mlflow.log_metric("trials", 1.0)
    return own_run_id()


@mlflow_run
@env.task
async def study(n: int) -> tuple[str, list[str], str]:
    mlflow.log_param("n", n)
    ids = await asyncio.gather(*(trial(lr=0.1 * (i + 1)) for i in range(n)))
    return own_run_id(), list(ids), await summary()


@mlflow_run(run_mode="nested")
@env.task
async def careful_trial(lr: float) -> float:
    if get_mlflow_run() is not None:  # under "warn" a task may run untracked: then it logs nothing
        mlflow.log_metric("loss", 1.0 / lr)
    return 1.0 / lr


@mlflow_run
@env.task
async def tolerant_study(n: int) -> str:
    losses = await asyncio.gather(*(careful_trial(lr=0.1 * (i + 1)) for i in range(n)))
    return f"the result: {min(losses):.1f}"


def _run(task: TaskTemplate[Any, Any, Any], config: MlflowConfig, **inputs: Any) -> Any:
    run = flyte.with_runcontext(mode="local", custom_context=cast("dict[str, str]", config)).run(
        task, **inputs
    )
    return run.outputs()


def _refusal(
    server: MlflowServer, task: TaskTemplate[Any, Any, Any], config: MlflowConfig
) -> tuple[str, list[tuple[str, str, int]], float]:
    """Run ``task``, expect it to fail, and return the error's text, the requests answered, the seconds."""
    mark = server.mark()
    started = time.monotonic()
    with pytest.raises(flyte.errors.RuntimeUserError) as caught:
        _run(task, config, n=2)
    took = time.monotonic() - started
    return str(caught.value), server.answers(mark), took


# --- the right credentials ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 16])
def test_tracked_workflow_with_credentials_from_the_environment(
    auth_server: AuthServer, team: Team, admin: MlflowClient, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """A parent, ``n`` nested trials in parallel and a new child all track into the user's experiment
    with the plugin's usual requests, none refused. Sixteen trials at once against a server that
    hashes a password on every request still fit the default request timeouts: every run is created
    once and ends FINISHED."""
    _log_in(monkeypatch, team.user, team.password)
    mark = auth_server.mark()
    parent, trials, new = _run(
        study, mlflow_config(tracking_uri=auth_server.uri, experiment_id=team.editable), n=n
    )
    answers = auth_server.answers(mark)

    assert [a for a in answers if a[2] != 200] == []
    plugin = [(m, p) for m, p, _ in answers if (m, p) in (CREATE, UPDATE, SEARCH)]
    assert sorted(plugin) == sorted([CREATE, UPDATE, SEARCH] + [CREATE, UPDATE] * (n + 1))
    runs = {r.info.run_id: r for r in admin.search_runs([team.editable], max_results=100)}
    assert set(runs) == {parent, new, *trials}
    assert len(set(trials)) == n
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert {runs[t].data.tags["mlflow.parentRunId"] for t in trials} == {parent}
    assert "mlflow.parentRunId" not in runs[new].data.tags
    assert sorted(float(runs[t].data.params["lr"]) for t in trials) == pytest.approx(
        [0.1 * (i + 1) for i in range(n)]
    )


# --- refusals -------------------------------------------------------------------------------------


def _assert_refused_once(answers: list[tuple[str, str, int]], status: int) -> None:
    """The plugin sent exactly one request, it was refused with ``status``, and nothing followed."""
    assert len(answers) == 1, answers
    assert answers[0][2] == status


def test_wrong_password(auth_server: AuthServer, team: Team, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong password fails the task at its first request, with a 401 that names the server, the
    request and the variables the credentials came from, and nothing is retried."""
    _log_in(monkeypatch, team.user, "not-the-password")
    config = mlflow_config(tracking_uri=auth_server.uri, experiment_id=team.editable)
    text, answers, took = _refusal(auth_server, study, config)
    _assert_refused_once(answers, 401)
    where = auth_server.uri.removeprefix("http://")
    assert (
        f"the MLflow tracking server at {where} refused to create a run (POST runs/create): HTTP 401" in text
    )
    assert "did not accept the credentials from MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in text
    print(f"wrong password: {took:.2f}s: {text.splitlines()[-1][:300]}")


def test_missing_credentials(auth_server: AuthServer, team: Team) -> None:
    """No credentials at all: one 401, and the error says which variables to set and how."""
    config = mlflow_config(tracking_uri=auth_server.uri, experiment_name=f"nobody-{uuid.uuid4().hex[:8]}")
    text, answers, took = _refusal(auth_server, study, config)
    _assert_refused_once(answers, 401)
    assert "refused to find the experiment (GET experiments/get-by-name): HTTP 401" in text
    assert "No credentials were sent: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in text
    assert "flyte.Secret" in text
    print(f"missing credentials: {took:.2f}s: {text.splitlines()[-1][:300]}")


@pytest.mark.parametrize(
    ("which", "by", "request_line"),
    [
        ("forbidden", "experiment_id", "create a run (POST runs/create)"),
        ("readable", "experiment_id", "create a run (POST runs/create)"),
        ("forbidden", "experiment_name", "find the experiment (GET experiments/get-by-name)"),
    ],
)
def test_no_permission_on_the_experiment(
    auth_server: AuthServer,
    team: Team,
    admin: MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
    which: str,
    by: str,
    request_line: str,
) -> None:
    """Right credentials, but no right to write to the experiment: one 403 naming the server, the
    refused request and the status, with no retries, and no run is left behind."""
    _log_in(monkeypatch, team.user, team.password)
    experiment_id = getattr(team, which)
    if by == "experiment_id":
        config = mlflow_config(tracking_uri=auth_server.uri, experiment_id=experiment_id)
    else:
        name = admin.get_experiment(experiment_id).name
        config = mlflow_config(tracking_uri=auth_server.uri, experiment_name=name)
    text, answers, took = _refusal(auth_server, study, config)
    _assert_refused_once(answers, 403)
    where = auth_server.uri.removeprefix("http://")
    assert f"the MLflow tracking server at {where} refused to {request_line}: HTTP 403" in text
    assert "lack the permission this request needs" in text
    assert admin.search_runs([experiment_id]) == []
    print(f"no permission ({which} by {by}): {took:.2f}s: {text.splitlines()[-1][:300]}")


def test_warn_keeps_the_result(
    auth_server: AuthServer,
    team: Team,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With ``on_tracking_error="warn"`` for the workflow, a refused login costs each tracked task one
    request: the workflow returns its result untracked, and the warnings say why."""
    _log_in(monkeypatch, team.user, "not-the-password")
    caplog.set_level(logging.WARNING)
    config = mlflow_config(
        tracking_uri=auth_server.uri, experiment_id=team.editable, on_tracking_error="warn"
    )
    mark = auth_server.mark()
    assert _run(tolerant_study, config, n=3)[0] == "the result: 3.3"
    answers = auth_server.answers(mark)
    warned = [r.getMessage() for r in caplog.records if "HTTP 401" in r.getMessage()]
    assert len(warned) == 4, [r.getMessage() for r in caplog.records]
    assert all("did not accept the credentials" in w for w in warned)
    assert answers == [(*CREATE, 401)] * 4


# --- rotation -------------------------------------------------------------------------------------


def test_password_rotated_between_two_tasks(
    auth_server: AuthServer, team: Team, admin: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the admin changes the password, the next task logs in with the new one from the
    environment; the old one is refused. Nothing in the process holds on to the first."""
    config = mlflow_config(tracking_uri=auth_server.uri, experiment_id=team.editable)
    _log_in(monkeypatch, team.user, team.password)
    first = _run(study, config, n=1)[0]

    rotated = f"pw-{uuid.uuid4().hex}"
    auth_server.set_password(team.user, rotated)
    _, answers, _ = _refusal(auth_server, study, config)
    _assert_refused_once(answers, 401)

    _log_in(monkeypatch, team.user, rotated)
    second = _run(study, config, n=1)[0]
    assert {admin.get_run(first).info.status, admin.get_run(second).info.status} == {"FINISHED"}


def test_bearer_token_rotated_between_two_tasks(
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind a proxy that admits one bearer token at a time, each task sends the token the
    environment holds when it runs: the first token works, then only its successor does."""
    valid = {"value": f"tok-{uuid.uuid4().hex}"}
    gate = Relay(mlflow_server.uri, admit=lambda header: header == f"Bearer {valid['value']}")
    try:
        config = mlflow_config(tracking_uri=gate.uri, experiment_id=experiment[1])
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", valid["value"])
        first = _run(study, config, n=1)[0]

        valid["value"] = f"tok-{uuid.uuid4().hex}"
        with pytest.raises(flyte.errors.RuntimeUserError) as caught:
            _run(study, config, n=1)
        assert "HTTP 401" in str(caught.value)
        assert "did not accept the credentials from MLFLOW_TRACKING_TOKEN" in str(caught.value)

        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", valid["value"])
        second = _run(study, config, n=1)[0]
    finally:
        gate.close()
    assert {client.get_run(first).info.status, client.get_run(second).info.status} == {"FINISHED"}
    refused = [f for f in gate.forwarded if f[2] == 401]
    assert [(m, p) for m, p, _ in refused] == [CREATE]


# --- leaks ----------------------------------------------------------------------------------------


@pytest.fixture
def local_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Flyte's local run store, recording every run into a temporary directory for one test."""
    store = tmp_path_factory.mktemp("flyte-run-store")
    (store / "config.yaml").write_text("")
    monkeypatch.delenv("UCTL_CONFIG", raising=False)
    monkeypatch.setenv("FLYTECTL_CONFIG", str(store / "config.yaml"))
    LocalDB.close_sync()  # type: ignore[no-untyped-call]
    get_config_file.cache_clear()
    flyte.init(local_persistence=True)
    try:
        yield store
    finally:
        flyte.init()
        LocalDB.close_sync()  # type: ignore[no-untyped-call]
        get_config_file.cache_clear()


class _Keep(logging.Handler):
    """A handler that keeps every record it is given."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _every_logger_at_debug(handler: logging.Handler) -> list[tuple[logging.Logger, int]]:
    """Attach ``handler`` at DEBUG to the root and to every logger that does not propagate (Flyte's)."""
    attached: list[tuple[logging.Logger, int]] = [(logging.root, logging.root.level)]
    logging.root.addHandler(handler)
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        if not logger.propagate:
            attached.append((logger, logger.level))
            logger.addHandler(handler)
    for logger, _ in attached:
        logger.setLevel(logging.DEBUG)
    return attached


def _text(error: BaseException) -> str:
    return str(error) + repr(error) + "".join(traceback.format_exception(error))


def test_credentials_never_appear(
    auth_server: AuthServer,
    team: Team,
    admin: MlflowClient,
    local_store: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A tracked workflow that succeeds, one refused 401, one refused 403 and one under ``warn``:
    neither the password nor its base64 forms appear in Flyte's local run store, in any log record
    at DEBUG, on stdout or stderr, in error messages, tracebacks or reprs, or in the runs' tags and
    params. Sanity check: the DEBUG logs did record the requests."""
    handler = _Keep()
    records = handler.records
    attached = _every_logger_at_debug(handler)
    seen: list[str] = []
    wrong = "wrong-" + team.password[::-1]
    try:
        _log_in(monkeypatch, team.user, team.password)
        good = mlflow_config(
            tracking_uri=auth_server.uri, experiment_id=team.editable, link_host=auth_server.uri
        )
        tracker = MlflowRun(tracking_uri=auth_server.uri, experiment_id=team.editable)
        seen += [
            repr(good),
            repr(dict(good)),
            repr(tracker),
            repr(tracker.config()),
            repr(study),
            repr(trial),
        ]
        parent, trials, new = _run(study, good, n=2)
        forbidden = mlflow_config(tracking_uri=auth_server.uri, experiment_id=team.forbidden)
        with pytest.raises(flyte.errors.RuntimeUserError) as refused:
            _run(study, forbidden, n=1)  # 403
        seen.append(_text(refused.value))
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", wrong)
        with pytest.raises(flyte.errors.RuntimeUserError) as refused:
            _run(study, good, n=1)  # 401
        seen.append(_text(refused.value))
        tolerant = mlflow_config(
            tracking_uri=auth_server.uri, experiment_id=team.editable, on_tracking_error="warn"
        )
        assert _run(tolerant_study, tolerant, n=1)[0] == "the result: 10.0"
    finally:
        for logger, level in attached:
            logger.removeHandler(handler)
            logger.setLevel(level)
        LocalDB.close_sync()  # type: ignore[no-untyped-call]

    for record in records:
        seen.append(f"{record.name} {record.getMessage()} {record.args!r}")
        if record.exc_info and record.exc_info[1] is not None:
            seen.append(_text(record.exc_info[1]))
    captured = capfd.readouterr()
    seen += [captured.out, captured.err]
    runs: list[Run] = admin.search_runs([team.editable])
    assert {r.info.run_id for r in runs} == {parent, new, *trials}
    for run in runs:
        seen += [f"{k}={v}" for k, v in {**run.data.tags, **run.data.params}.items()]
    stored = [p for p in local_store.rglob("*") if p.is_file()]
    assert any(p.name == "cache.db" for p in stored)
    store_bytes = b"".join(p.read_bytes() for p in stored)
    # The store did record these runs, their context and their links (each child's points at the parent):
    assert parent.encode() in store_bytes
    assert all(t.encode() in store_bytes for t in trials)
    assert auth_server.uri.encode() in store_bytes
    assert any(r.name.startswith("urllib3") for r in records)  # DEBUG really was captured
    assert any("HTTP 401" in r.getMessage() for r in records)  # and so was the warning

    text = "\n".join(seen)
    for secret in _forms(team.user, team.password) + _forms(team.user, wrong):
        assert secret not in text
        assert secret.encode() not in store_bytes


def _forms(user: str, password: str) -> list[str]:
    """The password, and the base64 forms an ``Authorization`` header or a careless log would hold."""
    return [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"{user}:{password}".encode()).decode(),
    ]
