"""Credentials: refused in URIs at construction, and never repeated anywhere when given the right way.

MLflow reads credentials from ``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``. These tests put a unique secret there, run tracked tasks against the
real server and against a loopback socket that records what it receives (which proves the secret
was really sent), and then search every place a secret could leak: log records at DEBUG from every
logger, everything written to stdout and stderr, exception text and tracebacks, run tags and params,
the ``custom_context`` that children receive, and rendered links.
"""

from __future__ import annotations

import base64
import logging
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import flyte
import flyte.errors
import pytest
from flyte.extend import TaskTemplate
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import (
    Mlflow,
    MlflowConfig,
    MlflowRun,
    MlflowTrackingError,
    get_mlflow_run,
    mlflow_config,
    mlflow_run,
)
from flyteplugins.mlflow._settings.config import decode
from tests.helpers.support import Recorder

env = flyte.TaskEnvironment(name="credentials")

USER = "bob-7f3a"
PASSWORD = "hunter2-e81c"


# --- refused at construction -------------------------------------------------------------------

CONSTRUCTORS: dict[str, Callable[[str], object]] = {
    "MlflowRun(tracking_uri=)": lambda uri: MlflowRun(tracking_uri=uri),
    "MlflowConfig(tracking_uri=)": lambda uri: MlflowConfig(tracking_uri=uri),
    "mlflow_run(tracking_uri=)": lambda uri: mlflow_run(tracking_uri=uri),
    "mlflow_config(tracking_uri=)": lambda uri: mlflow_config(tracking_uri=uri),
    "MlflowRun(link_host=)": lambda uri: MlflowRun(link_host=uri),
    "MlflowConfig(link_host=)": lambda uri: MlflowConfig(link_host=uri),
    "mlflow_run(link_host=)": lambda uri: mlflow_run(link_host=uri),
    "mlflow_config(link_host=)": lambda uri: mlflow_config(link_host=uri),
}

ENV_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "flyte.Secret")

URIS_WITH_CREDENTIALS = [
    f"http://{USER}:{PASSWORD}@host",
    f"https://{USER}:{PASSWORD}@mlflow.example.com:8443/tracking?x=1",
    f"http://:{PASSWORD}@host",
    f"http://{PASSWORD}@host:5000",
    f"http://{USER}:{PASSWORD}@[::1",
]


@pytest.mark.parametrize("uri", URIS_WITH_CREDENTIALS)
@pytest.mark.parametrize("build", list(CONSTRUCTORS.values()), ids=list(CONSTRUCTORS))
def test_uri_with_credentials_is_refused(build: Callable[[str], object], uri: str) -> None:
    """A URI with a user name or password is a ValueError that explains why and what to do instead."""
    with pytest.raises(ValueError) as caught:
        build(uri)
    message = str(caught.value)
    assert "must not contain credentials" in message
    assert "Flyte stores custom_context" in message
    assert "metadata" in message
    for name in ENV_VARS:
        assert name in message
    shown = message + repr(caught.value) + "".join(traceback.format_exception(caught.value))
    assert PASSWORD not in shown
    assert USER not in shown


def test_uri_without_credentials_is_accepted() -> None:
    """For contrast: an ``@`` in the path or query is not a credential."""
    config = mlflow_config(tracking_uri="http://host:5000/a@b?c=d@e")
    assert config.tracking_uri == "http://host:5000/a@b?c=d@e"


@pytest.mark.parametrize(
    ("key", "extra"),
    [
        ("mlflow_tracking_uri", {"mlflow_run_mode": "nested"}),
        ("mlflow_link_host", {}),
        ("mlflow_run_mode", {}),
        ("mlflow_experiment_name", {"mlflow_experiment_id": "1"}),
    ],
)
def test_credentials_in_a_context_are_not_repeated_by_the_decoder(key: str, extra: dict[str, str]) -> None:
    """A hand-made custom_context with a credential URI is refused, naming the key but not the secret."""
    context = {key: f"http://{USER}:{PASSWORD}@host", **extra}
    with pytest.raises(ValueError) as caught:
        decode(context)
    assert key in str(caught.value)
    assert "http://***@host" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert USER not in str(caught.value)
    link = Mlflow().get_link("run", "project", "domain", context, "parent", "action", "pod")
    assert link == ""


# --- never leaked when passed the right way ----------------------------------------------------


@mlflow_run(run_mode="nested")
@env.task(links=(Mlflow(),))
async def child() -> dict[str, str]:
    ctx = flyte.ctx()
    assert ctx is not None
    return dict(ctx.custom_context or {})


@mlflow_run
@env.task
async def parent() -> tuple[str, dict[str, str]]:
    run = get_mlflow_run()
    assert run is not None
    return run.info.run_id, await child()


@mlflow_run
@env.task
async def unlucky() -> str:
    return "never"


@mlflow_run(on_tracking_error="warn")
@env.task
async def tolerant() -> str:
    return "ran untracked"


@pytest.fixture(params=["token", "basic"])
def secrets(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Put unique credentials in MLflow's environment variables; returns every form they could leak in."""
    tag = uuid.uuid4().hex
    if request.param == "token":
        token = f"tok-{tag}"
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
        return [token]
    user, password = f"user-{tag[:8]}", f"pw-{tag}"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return [password, base64.b64encode(f"{user}:{password}".encode()).decode()]


@pytest.fixture
def every_logger(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture DEBUG records from every logger, including those that do not propagate (Flyte's)."""
    caplog.set_level(logging.DEBUG)
    attached: list[tuple[logging.Logger, int]] = []
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        if not logger.propagate:
            attached.append((logger, logger.level))
            logger.addHandler(caplog.handler)
            logger.setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        for logger, level in attached:
            logger.removeHandler(caplog.handler)
            logger.setLevel(level)


def _outputs(task: TaskTemplate[Any, Any, Any], config: MlflowConfig) -> Any:
    run = flyte.with_runcontext(mode="local", custom_context=cast("dict[str, str]", config)).run(task)
    return run.outputs()


def _failure_text(error: BaseException) -> str:
    return str(error) + repr(error) + "".join(traceback.format_exception(error))


def test_secret_never_leaks(
    secrets: list[str],
    every_logger: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    tracking_uri: str,
    client: MlflowClient,
    experiment: tuple[str, str],
) -> None:
    """With credentials in the environment, tracked runs that succeed and fail never repeat them."""
    seen: list[str] = []

    # A successful parent and nested child against the real server, with a link host set.
    config = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1], link_host=tracking_uri)
    seen.append(repr(config) + repr(dict(config)))
    outputs = _outputs(parent, config)
    parent_id, child_context = outputs[0], outputs[1]
    seen.extend(f"{k}={v}" for k, v in child_context.items())
    link = Mlflow().get_link("run", "project", "domain", child_context, "parent", "action", "pod")
    seen.append(link)
    runs = client.search_runs([experiment[1]])
    for run in runs:
        seen.extend(f"{k}={v}" for k, v in {**run.data.tags, **run.data.params}.items())
    assert len(runs) == 2
    assert parent_id in {r.info.run_id for r in runs}
    assert link.rpartition("/runs/")[2] in {r.info.run_id for r in runs}

    # The same against a server that hangs up: under "raise", under "warn", and outside Flyte.
    recorder = Recorder()
    try:
        failing = mlflow_config(tracking_uri=recorder.uri, experiment_id="0")
        with pytest.raises(flyte.errors.RuntimeUserError) as in_task:
            _outputs(unlucky, failing)
        seen.append(_failure_text(in_task.value))
        assert _outputs(tolerant, failing)[0] == "ran untracked"

        @mlflow_run(tracking_uri=recorder.uri, experiment_name="anything")
        def plain() -> None:
            raise AssertionError("the body must not run")

        with pytest.raises(MlflowTrackingError) as outside:
            plain()
        seen.append(_failure_text(outside.value))
    finally:
        recorder.close()

    captured = capfd.readouterr()
    seen.extend([captured.out, captured.err, every_logger.text])
    for record in every_logger.records:
        seen.append(record.getMessage() + (record.exc_text or ""))
        if record.exc_info and record.exc_info[1] is not None:
            seen.append(_failure_text(record.exc_info[1]))

    sent = b"".join(recorder.received).decode(errors="replace")
    assert f"Authorization: {'Bearer' if len(secrets) == 1 else 'Basic'} {secrets[-1]}" in sent
    assert any(r.name.startswith("urllib3") and r.levelno == logging.DEBUG for r in every_logger.records)
    assert any("tracking is off" in r.getMessage() for r in every_logger.records)
    assert recorder.uri.removeprefix("http://") in captured.err + captured.out + every_logger.text
    everything = "\n".join(seen)
    for secret in secrets:
        assert secret not in everything
