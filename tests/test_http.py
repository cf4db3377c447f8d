"""The plugin's HTTP path: MLflow's headers, credentials and TLS settings, set up once per server.

The plugin sends its own requests (create a run, set its status) through ``_http.send``. For a plain
server the constant parts of a request are worked out once per server and process; what can change
while a process runs (credentials, TLS settings) is read for every request. These tests look at what
really goes over the wire, with a loopback socket that records requests, and run the real server.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Iterator
from multiprocessing.queues import Queue
from typing import Any

import pytest
import requests
from mlflow.tracking import MlflowClient
from mlflow.tracking.request_header.registry import resolve_request_headers
from mlflow.utils import rest_utils
from mlflow.utils.rest_utils import MlflowHostCreds

from flyteplugins.mlflow._transport import http as _http
from flyteplugins.mlflow._transport.client import client_for
from tests.helpers.support import Recorder

UPDATE = "/api/2.0/mlflow/runs/update"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A loopback socket that keeps every request's bytes and hangs up without answering."""
    recording = Recorder()
    try:
        yield recording
    finally:
        recording.close()


def _sent(recorder: Recorder, uri: str, body: dict[str, Any] | None = None) -> str:
    """Send one update to ``uri`` (answered by nobody) and return what ``recorder`` received."""
    before = len(recorder.received)
    with pytest.raises(requests.RequestException):
        _http.send(uri, UPDATE, "POST", body or {"run_id": "r1", "status": "FINISHED"}, timeout=(2, 2))
    assert len(recorder.received) == before + 1
    return recorder.received[-1].decode(errors="replace")


@pytest.fixture(autouse=True)
def _no_mlflow_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_INSECURE_TLS",
        "MLFLOW_TRACKING_SERVER_CERT_PATH",
        "MLFLOW_TRACKING_CLIENT_CERT_PATH",
        "MLFLOW_TRACKING_AWS_SIGV4",
        "MLFLOW_TRACKING_AUTH",
        "MLFLOW_WORKSPACE",
        "MLFLOW_DATABRICKS_TRAFFIC_ID",
    ):
        monkeypatch.delenv(name, raising=False)


def test_headers_are_worked_out_once_per_server(
    monkeypatch: pytest.MonkeyPatch, tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Against the real server: MLflow's request headers are resolved once for many requests."""
    resolved: list[int] = []

    def counted() -> dict[str, str]:
        resolved.append(1)
        return dict(resolve_request_headers())

    monkeypatch.setattr("flyteplugins.mlflow._transport.http.resolve_request_headers", counted)
    _http._transport.cache_clear()
    server = client_for(tracking_uri)
    ids = []
    for _ in range(5):
        run = server.create_run(experiment[1], None, {"k": "v"}, 1)
        server.set_status(run.info.run_id, "FINISHED", 2)
        ids.append(run.info.run_id)
    assert resolved == [1]
    for run_id in ids:
        stored = client.get_run(run_id)
        assert (stored.info.status, stored.data.tags["k"]) == ("FINISHED", "v")


def _in_forked_child(uri: str, experiment_id: str, parent: int, answers: Queue[object]) -> None:
    try:
        inherited = _http._transport(uri, parent).session  # the parent's, copied by the fork
        run = client_for(uri).create_run(experiment_id, None, {"side": "child"}, 1)
        client_for(uri).set_status(run.info.run_id, "FINISHED", 2)
        answers.put((run.info.run_id, _http._transport(uri, os.getpid()).session is not inherited))
    except BaseException as e:
        answers.put(repr(e))


def test_a_forked_child_does_not_share_the_parents_connections(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A process forked after the parent sent requests opens connections of its own."""
    server = client_for(tracking_uri)
    server.set_status(server.create_run(experiment[1], None, {}, 1).info.run_id, "FINISHED", 2)
    fork = multiprocessing.get_context("fork")
    answers: Queue[object] = fork.Queue()
    child = fork.Process(target=_in_forked_child, args=(tracking_uri, experiment[1], os.getpid(), answers))
    child.start()
    answer = answers.get(timeout=60)
    child.join(timeout=60)
    assert isinstance(answer, tuple), answer
    run_id, own_session = answer
    assert own_session
    stored = client.get_run(str(run_id))
    assert (stored.info.status, stored.data.tags["side"]) == ("FINISHED", "child")
    server.set_status(server.create_run(experiment[1], None, {}, 1).info.run_id, "FINISHED", 2)


def test_mlflow_headers_and_json_body_are_sent(recorder: Recorder) -> None:
    """Each request carries MLflow's client headers and the body as JSON, like MLflow's own."""
    sent = _sent(recorder, recorder.uri, {"run_id": "r9", "status": "KILLED"})
    assert sent.startswith(f"POST {UPDATE} HTTP/1.1")
    assert "User-Agent: mlflow-python-client/" in sent
    assert "Content-Type: application/json" in sent
    assert '"run_id": "r9"' in sent
    assert "Authorization" not in sent


def test_credentials_are_read_for_every_request(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token rotated while the process runs is used from the next request on; basic auth too."""
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "first-token")
    assert "Authorization: Bearer first-token" in _sent(recorder, recorder.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "second-token")
    assert "Authorization: Bearer second-token" in _sent(recorder, recorder.uri)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ann")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    assert "Authorization: Basic YW5uOnB3" in _sent(recorder, recorder.uri)  # base64("ann:pw")


def test_proxy_from_the_environment_is_used(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """``HTTP_PROXY`` is honoured, as MLflow's own requests honour it: the request goes to the proxy."""
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", recorder.uri)
    host = f"tracking-{uuid.uuid4().hex[:8]}.example:5000"  # a host this process has not used yet
    sent = _sent(recorder, f"http://{host}")
    assert sent.startswith(f"POST http://{host}{UPDATE} HTTP/1.1")


@pytest.mark.parametrize(
    ("env", "verify", "cert"),
    [
        ({}, "bundle", None),
        ({"MLFLOW_TRACKING_INSECURE_TLS": "true"}, False, None),
        ({"MLFLOW_TRACKING_SERVER_CERT_PATH": "/certs/ca.pem"}, "/certs/ca.pem", None),
        ({"MLFLOW_TRACKING_CLIENT_CERT_PATH": "/certs/me.pem"}, "bundle", "/certs/me.pem"),
    ],
)
def test_tls_settings_are_read_for_every_request(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], verify: bool | str, cert: str | None
) -> None:
    """MLflow's TLS variables win; otherwise the CA bundle requests would find in the environment."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/bundles/corp.pem")
    uri = f"https://tls-{uuid.uuid4().hex[:8]}.example"
    transport = _http._transport(uri, os.getpid())
    assert transport.verify == "/bundles/corp.pem"
    seen: dict[str, Any] = {}

    def capture(method: str, url: str, **kwargs: Any) -> requests.Response:
        seen.update(kwargs, method=method, url=url)
        reply = requests.Response()
        reply.status_code = 200
        return reply

    monkeypatch.setattr(transport.session, "request", capture)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _http.send(uri, "/api/2.0/mlflow/runs/get", "GET", {"run_id": "r1"}, timeout=(3, 3))
    assert seen["verify"] == ("/bundles/corp.pem" if verify == "bundle" else verify)
    assert seen["cert"] == cert
    assert (seen["method"], seen["url"], seen["params"], seen["timeout"]) == (
        "GET",
        uri + "/api/2.0/mlflow/runs/get",
        {"run_id": "r1"},
        (3, 3),
    )


@pytest.mark.parametrize(
    ("creds", "plain"),
    [
        (MlflowHostCreds("http://h"), True),
        (MlflowHostCreds("http://h", token="t"), True),
        (MlflowHostCreds("http://h", username="u", password="p", client_cert_path="/c.pem"), True),
        (MlflowHostCreds("http://h", ignore_tls_verification=True), True),
        (MlflowHostCreds("http://h", aws_sigv4=True), False),
        (MlflowHostCreds("http://h", auth="kubernetes"), False),
        (MlflowHostCreds("http://h", use_databricks_sdk=True), False),
        (MlflowHostCreds("http://h", client_id="i", client_secret="s"), False),
    ],
)
def test_which_requests_are_plain(creds: MlflowHostCreds, plain: bool) -> None:
    """Only what needs nothing beyond headers, TLS settings and a certificate takes the plugin's path."""
    assert _http.is_plain(creds) is plain


@pytest.mark.parametrize(
    ("variable", "needs"),
    [
        ("MLFLOW_WORKSPACE", "get_request_workspace"),
        ("MLFLOW_DATABRICKS_TRAFFIC_ID", "_MLFLOW_DATABRICKS_TRAFFIC_ID"),
    ],
)
def test_a_workspace_or_traffic_id_is_not_plain(
    monkeypatch: pytest.MonkeyPatch, variable: str, needs: str
) -> None:
    """A request MLflow would tag with a workspace or a Databricks traffic id goes through MLflow."""
    if not hasattr(rest_utils, needs):
        pytest.skip(f"this MLflow has no {needs}")
    assert _http.is_plain(MlflowHostCreds("http://h"))
    monkeypatch.setenv(variable, "team-a")
    assert not _http.is_plain(MlflowHostCreds("http://h"))


def test_anything_else_goes_through_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """With AWS SigV4 on, the request is handed to MLflow's ``http_request``, retries off."""
    monkeypatch.setenv("MLFLOW_TRACKING_AWS_SIGV4", "true")
    calls: list[tuple[Any, ...]] = []

    def mlflow_http_request(creds: MlflowHostCreds, endpoint: str, method: str, **kwargs: Any) -> Any:
        calls.append((creds.aws_sigv4, endpoint, method, kwargs))
        reply = requests.Response()
        reply.status_code = 200
        return reply

    monkeypatch.setattr(_http, "http_request", mlflow_http_request)
    reply = _http.send("https://sigv4.example", UPDATE, "POST", {"run_id": "r1"}, timeout=(2, 2))
    assert reply.status_code == 200
    assert calls == [
        (
            True,
            UPDATE,
            "POST",
            {
                "max_retries": 0,
                "backoff_factor": 0,
                "timeout": 2,
                "raise_on_status": False,
                "json": {"run_id": "r1"},
            },
        )
    ]
