"""TLS as it runs: ``mlflow server`` behind uvicorn's own TLS, with certificates from trustme.

Queued parallel trials track through each of MLflow's TLS settings: a CA bundle, no verification,
and mutual TLS with a client certificate. A certificate that does not verify fails the task after
one attempt, on first contact and on a server reached before alike; a server that wants a client
certificate and gets none says so. Attempts are counted as the connections made through a TCP
tunnel in front of the server: a failed handshake never reaches the server's access log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flyte
import flyte.errors
import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import MlflowConfig, mlflow_config, mlflow_run
from flyteplugins.mlflow._transport.tls import (
    client_certificate_hint,
    closed_in_handshake,
    untrusted_certificate,
    untrusted_message,
)
from tests.helpers.support import Recorder, TlsServer, Tunnel, free_port, other_ca, own_run_id, serving

env = flyte.TaskEnvironment(name="tls-tests")

TRIALS = 8
POINTS = 25
CA_BUNDLE = "MLFLOW_TRACKING_SERVER_CERT_PATH"
INSECURE = "MLFLOW_TRACKING_INSECURE_TLS"
CLIENT_CERT = "MLFLOW_TRACKING_CLIENT_CERT_PATH"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """A server behind TLS, for the module."""
    yield from serving(TlsServer(tmp_path_factory.mktemp("mlflow-tls-server"), free_port()))


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """A server behind mutual TLS: it wants a client certificate signed by its CA, for the module."""
    yield from serving(TlsServer(tmp_path_factory.mktemp("mlflow-mtls-server"), free_port(), mutual=True))


@pytest.fixture
def tls_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No TLS setting from the environment the tests run in: each test sets its own."""
    for var in (CA_BUNDLE, INSECURE, CLIENT_CERT, "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@mlflow_run(run_mode="nested", async_logging=True)
@env.task
async def trial(i: int) -> str:
    """Queue a param and ``POINTS`` points of a loss, yielding to the other trials between them."""
    mlflow.log_param("trial", i)
    for step in range(POINTS):
        mlflow.log_metric("loss", i + step / 100, step=step)
        await asyncio.sleep(0)
    return own_run_id()


@mlflow_run(async_logging=True)
@env.task
async def study(n: int) -> list[str]:
    """Run ``n`` trials in parallel; log the number of trials; return the parent's and the trials' runs."""
    mlflow.log_param("n_trials", n)
    ids = await asyncio.gather(*(trial(i) for i in range(n)))
    return [own_run_id(), *ids]


def _run(config: MlflowConfig, n: int = TRIALS) -> list[str]:
    ids: list[str] = flyte.with_runcontext(mode="local", custom_context=config).run(study, n).outputs()[0]
    return ids


def _refused(config: MlflowConfig) -> flyte.errors.RuntimeUserError:
    """Run the study with ``config``, expect it to fail, and return the error."""
    with pytest.raises(flyte.errors.RuntimeUserError) as caught:
        _run(config, n=2)
    return caught.value


def _setup(name: str, tls: TlsServer, mtls: TlsServer, monkeypatch: pytest.MonkeyPatch) -> TlsServer:
    """Set the variables of one setup; return the server it is for."""
    if name == "ca-bundle":
        monkeypatch.setenv(CA_BUNDLE, str(tls.ca_path))
        return tls
    if name == "insecure":
        monkeypatch.setenv(INSECURE, "true")
        return tls
    monkeypatch.setenv(CA_BUNDLE, str(mtls.ca_path))
    monkeypatch.setenv(CLIENT_CERT, str(mtls.client_cert_path))
    return mtls


@pytest.mark.parametrize(
    "setup",
    [
        "ca-bundle",
        pytest.param(
            "insecure", marks=pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
        ),
        "mutual",
    ],
)
def test_queued_parallel_trials_over_tls(
    setup: str, tls_server: TlsServer, mtls_server: TlsServer, tls_env: pytest.MonkeyPatch
) -> None:
    """Eight trials in parallel queue their logging over TLS (a CA bundle in
    MLFLOW_TRACKING_SERVER_CERT_PATH; MLFLOW_TRACKING_INSECURE_TLS=true; mutual TLS with
    MLFLOW_TRACKING_CLIENT_CERT_PATH): every point of every trial is stored once, and every run ends
    FINISHED under the parent."""
    server = _setup(setup, tls_server, mtls_server, tls_env)
    client = MlflowClient(server.uri)
    experiment_id = client.create_experiment(f"tls-{setup}-{uuid.uuid4().hex[:8]}")
    parent_id, *trial_ids = _run(mlflow_config(tracking_uri=server.uri, experiment_id=experiment_id))

    assert len(set(trial_ids)) == TRIALS
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params == {"n_trials": str(TRIALS)}
    for i, run_id in enumerate(trial_ids):
        run = client.get_run(run_id)
        assert (run.info.status, run.data.params) == ("FINISHED", {"trial": str(i)})
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
        assert points == [(step, i + step / 100) for step in range(POINTS)], f"trial {i}"


def _assert_untrusted(error: flyte.errors.RuntimeUserError, tunnel: Tunnel, made: int) -> None:
    """The task failed with the untrusted-certificate error, naming the server, after one connection."""
    text = str(error)
    print(f"untrusted: {text.splitlines()[-1][:400]}")
    assert error.code == "TrackingRequestError"
    assert (
        f"the MLflow tracking server at 127.0.0.1:{tunnel.port} could not be trusted to find the experiment: "
        "the server's certificate is not trusted (" in text
    )
    assert "not retried, since waiting does not change a certificate (after 1 attempt in " in text
    assert (
        f"Set {CA_BUNDLE} to a CA bundle (PEM) with the CA that signed the server's certificate, or, "
        f"for a test server only, {INSECURE}=true to skip the check" in text
    )
    assert tunnel.made - made == 1, "one attempt: one TLS handshake"


@pytest.mark.parametrize("bundle", ["none", "another-ca"])
def test_an_untrusted_certificate_fails_at_first_contact_after_one_attempt(
    bundle: str, tls_server: TlsServer, tls_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A server never reached whose certificate does not verify (no CA bundle set, or another CA's):
    the experiment's lookup, which a dropped connection would repeat, is tried once."""
    if bundle == "another-ca":
        tls_env.setenv(CA_BUNDLE, str(other_ca(tmp_path)))
    tunnel = Tunnel(tls_server.port)
    try:
        error = _refused(mlflow_config(tracking_uri=tunnel.uri, experiment_name=f"never-{uuid.uuid4().hex}"))
        _assert_untrusted(error, tunnel, made=0)
    finally:
        tunnel.close()


def test_an_untrusted_certificate_on_a_server_reached_before_is_not_waited_for(
    tls_server: TlsServer, tls_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The workflow tracks into the server with its CA bundle; then the bundle is another CA's (a
    rotated certificate). A server reached before is waited for through an outage, here for up to an
    hour, but a certificate is not an outage: the next task fails after one attempt."""
    tunnel = Tunnel(tls_server.port)
    try:
        tls_env.setenv(CA_BUNDLE, str(tls_server.ca_path))
        before = mlflow_config(tracking_uri=tunnel.uri, experiment_name=f"first-{uuid.uuid4().hex}")
        assert len(_run(before, n=2)) == 3
        tls_env.setenv(CA_BUNDLE, str(other_ca(tmp_path)))
        made = tunnel.made
        # A new experiment: its lookup is the first request, one that an outage would repeat.
        after = mlflow_config(
            tracking_uri=tunnel.uri, experiment_name=f"rotated-{uuid.uuid4().hex}", outage_timeout=3600.0
        )
        _assert_untrusted(_refused(after), tunnel, made)
    finally:
        tunnel.close()


def test_a_server_that_wants_a_client_certificate_says_so(
    mtls_server: TlsServer, tls_env: pytest.MonkeyPatch
) -> None:
    """Mutual TLS without MLFLOW_TRACKING_CLIENT_CERT_PATH: the server closes each connection right
    after the handshake, which is retried like any dropped connection (3 attempts with the defaults);
    the error adds that the server may require a client certificate, and what to set."""
    tls_env.setenv(CA_BUNDLE, str(mtls_server.ca_path))
    tunnel = Tunnel(mtls_server.port)
    try:
        error = _refused(mlflow_config(tracking_uri=tunnel.uri, experiment_name=f"m-{uuid.uuid4().hex}"))
    finally:
        tunnel.close()
    text = str(error)
    print(f"no client certificate: {text.splitlines()[-1][:400]}")
    assert (
        f"the MLflow tracking server at 127.0.0.1:{tunnel.port} did not find the experiment: "
        "ConnectionAborted after 3 attempts in " in text
    )
    assert (
        "The server closed the TLS connection without an answer: it may require a client certificate. "
        f"Set {CLIENT_CERT} to a PEM file with a certificate the server trusts and its private key" in text
    )
    assert tunnel.made == 3


def test_no_client_certificate_hint_for_a_server_reached_before(
    mtls_server: TlsServer, tls_env: pytest.MonkeyPatch
) -> None:
    """Once the workflow has tracked into the server with its client certificate, a dropped
    connection there is waited for as an outage (up to ``outage_timeout``), and its error has no hint."""
    tls_env.setenv(CA_BUNDLE, str(mtls_server.ca_path))
    tls_env.setenv(CLIENT_CERT, str(mtls_server.client_cert_path))
    tunnel = Tunnel(mtls_server.port)
    try:
        first = mlflow_config(tracking_uri=tunnel.uri, experiment_name=f"m-{uuid.uuid4().hex}")
        assert len(_run(first, n=2)) == 3
        tls_env.delenv(CLIENT_CERT)
        config = mlflow_config(
            tracking_uri=tunnel.uri, experiment_name=f"m-{uuid.uuid4().hex}", outage_timeout=1.0
        )
        text = str(_refused(config))
    finally:
        tunnel.close()
    assert "did not find the experiment: ConnectionAborted after " in text
    assert "outage_timeout=1s" in text
    assert CLIENT_CERT not in text


def _failure(url: str, **tls: Any) -> requests.RequestException:
    """The error ``requests`` raises for a GET of ``url`` (which must fail)."""
    with pytest.raises(requests.RequestException) as caught:
        requests.get(url, timeout=10, **tls)
    return caught.value


def _hang_up() -> requests.RequestException:
    """The error of a request to a loopback socket that reads it and hangs up without an answer."""
    recorder = Recorder()
    try:
        return _failure(recorder.uri)
    finally:
        recorder.close()


def test_what_counts_as_an_untrusted_certificate(
    tls_server: TlsServer, mtls_server: TlsServer, tmp_path: Path
) -> None:
    """A certificate from a CA the bundle lacks is untrusted (OpenSSL's reason is in the message); a
    refused connection, a hang-up and a server that wants a client certificate are not."""
    health = f"{tls_server.uri}/health"
    assert untrusted_certificate(_failure(health)), "no CA bundle: the system's, which lacks the test CA"
    unknown = _failure(health, verify=str(other_ca(tmp_path)))
    assert untrusted_certificate(unknown)
    assert "(unable to get local issuer certificate)" in untrusted_message(
        "h:1", "find the run", unknown, 1, 0
    )
    assert not untrusted_certificate(_failure(f"https://127.0.0.1:{free_port()}"))
    assert not untrusted_certificate(_hang_up())
    no_client_cert = _failure(f"{mtls_server.uri}/health", verify=str(mtls_server.ca_path))
    assert not untrusted_certificate(no_client_cert)
    assert closed_in_handshake(no_client_cert)


def test_the_client_certificate_hint_is_for_https_servers_that_hang_up() -> None:
    """A connection dropped without an answer gets the hint on an ``https`` URI, never on ``http``;
    a refused connection never gets it."""
    hang_up = _hang_up()
    assert closed_in_handshake(hang_up)
    uri = "https://127.0.0.1:8443"
    assert CLIENT_CERT in client_certificate_hint(uri, hang_up)
    assert client_certificate_hint(uri.replace("https:", "http:"), hang_up) == ""
    refused = _failure(f"http://127.0.0.1:{free_port()}")
    assert not closed_in_handshake(refused)
    assert client_certificate_hint(uri, refused) == ""
