"""Tracking-server faults: unreachable, silent, gone mid-task, briefly down at the end.

Every server here is real: a port with nothing listening, a loopback socket that accepts connections
and never answers (or hangs up at once), a dedicated ``mlflow server`` that the tests stop while a
task runs, and a loopback HTTP proxy in front of the session server that drops the first few
``runs/update`` requests. Connections and requests are counted, never timed; the elapsed times are
only printed, for the record.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import flyte
import flyte.errors
import pytest
from flyte.extend import TaskTemplate
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import (
    MlflowTrackingError,
    TrackingRequestError,
    TrackingServerUnreachable,
    get_mlflow_run,
    mlflow_config,
    mlflow_run,
)
from flyteplugins.mlflow._transport import rest as _rest
from flyteplugins.mlflow._transport.policy import DEFAULT_POLICY, RequestPolicy
from flyteplugins.mlflow._transport.rest import MAX_CONCURRENT_REQUESTS
from tests.helpers.support import MlflowServer, Relay, free_port, serving

env = flyte.TaskEnvironment(name="faults")

BODY_MARKER = "body-ran"
_started = threading.Event()
_resume = threading.Event()
_run_ids: list[str] = []


# --- tasks -------------------------------------------------------------------------------------


@mlflow_run
@env.task
async def marked() -> str:
    Path(BODY_MARKER).touch()
    return "done"


@mlflow_run(on_tracking_error="warn")
@env.task
async def tolerant() -> bool:
    Path(BODY_MARKER).touch()
    return get_mlflow_run() is None


@mlflow_run
@env.task
async def outlives_server() -> str:
    run = get_mlflow_run()
    assert run is not None
    _run_ids.append(str(run.info.run_id))
    _started.set()
    await asyncio.to_thread(_resume.wait, 120)
    return "trained"


@mlflow_run
@env.task
async def quick() -> str:
    run = get_mlflow_run()
    assert run is not None
    run_id: str = run.info.run_id
    return run_id


# --- loopback helpers --------------------------------------------------------------------------


class Listener:
    """A loopback TCP socket that accepts connections and either hangs up at once or never answers."""

    def __init__(self, *, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self._held: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.hang_up:
                conn.close()
            else:
                self._held.append(conn)

    def failed_call(self, call: Callable[[], None]) -> tuple[int, str]:
        """Run a tracked call that must fail with ``TrackingRequestError``.

        Returns:
            How many connections it made to this listener, and its error message.
        """
        before = self.connections
        with pytest.raises(TrackingRequestError) as caught:
            call()
        return self.connections - before, str(caught.value)

    def close(self) -> None:
        """Stop accepting and drop every held connection."""
        self._closed = True
        self._sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture(scope="module")
def dedicated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A tracking server of this module's own, which tests may stop."""
    yield from serving(MlflowServer(tmp_path_factory.mktemp("dedicated-mlflow"), free_port()))


@pytest.fixture
def running_server(dedicated_server: MlflowServer) -> MlflowServer:
    """The dedicated server, started again if an earlier test stopped it."""
    if dedicated_server.process is None or dedicated_server.process.poll() is not None:
        dedicated_server.start()
    return dedicated_server


@pytest.fixture(autouse=True)
def _fresh_events() -> None:
    _started.clear()
    _resume.clear()
    _run_ids.clear()


def _stop_when_started(server: MlflowServer) -> threading.Thread:
    """Stop ``server`` as soon as the task body signals that it runs, then let the body finish."""

    def stop() -> None:
        if _started.wait(120):
            server.stop()
        _resume.set()

    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    return thread


def _run_local(task: TaskTemplate[Any, Any, Any], uri: str, **settings: Any) -> Any:
    """Run ``task`` locally against ``uri``, and return its output."""
    ctx = mlflow_config(tracking_uri=uri, experiment_id="0", **settings)
    run = flyte.with_runcontext(mode="local", custom_context=cast("dict[str, str]", ctx)).run(task)
    return run.outputs()[0]


def _warnings_naming(caplog: pytest.LogCaptureFixture, where: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "flyteplugins.mlflow" and r.levelno == logging.WARNING and where in r.getMessage()
    ]


# --- unreachable and silent servers ------------------------------------------------------------


def test_unreachable_server_fails_the_task_before_its_body() -> None:
    """With nothing listening, the task fails with the plugin's error naming host:port, body never run."""
    port = free_port()
    started = time.monotonic()
    with pytest.raises(flyte.errors.RuntimeUserError) as caught:
        _run_local(marked, f"http://127.0.0.1:{port}")
    elapsed = time.monotonic() - started
    print(f"\nunreachable server (connection refused): task failed after {elapsed:.2f}s")
    assert caught.value.code == "TrackingServerUnreachable"
    assert issubclass(TrackingServerUnreachable, MlflowTrackingError)
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "could not be reached to create a run" in message
    assert "after 3 attempts" in message
    assert not Path(BODY_MARKER).exists()


def test_unreachable_error_is_an_mlflow_tracking_error() -> None:
    """Outside Flyte the raised exception itself is a TrackingServerUnreachable, after 1 + 2 retries."""
    port = free_port()
    ran: list[bool] = []

    @mlflow_run(tracking_uri=f"http://127.0.0.1:{port}", experiment_id="0")
    def train() -> None:
        ran.append(True)

    with pytest.raises(TrackingServerUnreachable) as caught:
        train()
    assert isinstance(caught.value, MlflowTrackingError)
    message = str(caught.value)
    assert message.startswith(f"the MLflow tracking server at 127.0.0.1:{port} could not be reached")
    assert "ConnectionError after 3 attempts" in message
    assert ran == []


def test_run_creation_is_not_repeated_once_it_may_have_landed() -> None:
    """A server that hangs up mid-request gets one run creation (it may have landed) but 3 lookups."""
    listener = Listener(hang_up=True)

    @mlflow_run(tracking_uri=listener.uri, experiment_id="0")
    def by_id() -> None:
        raise AssertionError("the body must not run")

    @mlflow_run(tracking_uri=listener.uri, experiment_name="never")
    def by_name() -> None:
        raise AssertionError("the body must not run")

    try:
        creates, create = listener.failed_call(by_id)
        lookups, lookup = listener.failed_call(by_name)
    finally:
        listener.close()
    assert creates == 1
    assert "did not create a run: ConnectionAborted after 1 attempt " in create
    assert lookups == 3
    assert "did not find the experiment: ConnectionAborted after 3 attempts" in lookup


@pytest.fixture
def free_slots() -> None:
    """Wait (up to 2 minutes) until no request of an earlier test holds one of the process's 8 slots.

    The tests that use it give a silent server budgets of about a second, and count on getting a slot
    at once; a request of an earlier test still waiting out a 30 s answer timeout would take one.
    """
    taken = [_rest._SLOTS.acquire(timeout=120) for _ in range(MAX_CONCURRENT_REQUESTS)]
    for got in taken:
        if got:
            _rest._SLOTS.release()
    assert all(taken), "requests of earlier tests held the request slots for 2 minutes"


@pytest.mark.usefixtures("free_slots")
def test_request_timeout_and_retries_are_configurable() -> None:
    """A silent server gets request_retries + 1 lookups, and a run creation that may have landed gets one."""
    listener = Listener(hang_up=False)

    @mlflow_run(tracking_uri=listener.uri, experiment_name="never", request_timeout=0.3, request_retries=1)
    def by_name() -> None:
        raise AssertionError("the body must not run")

    @mlflow_run(tracking_uri=listener.uri, experiment_id="0", request_timeout=0.3, request_retries=4)
    def by_id() -> None:
        raise AssertionError("the body must not run")

    try:
        lookups, lookup = listener.failed_call(by_name)
        creates, create = listener.failed_call(by_id)
    finally:
        listener.close()
    assert lookups == 2
    assert "find the experiment: ReadTimeout after 2 attempts" in lookup
    assert "request_timeout=0.3s, request_retries=1" in lookup
    assert creates == 1
    assert "create a run: ReadTimeout after 1 attempt " in create


def test_a_calls_budget_is_its_worst_case() -> None:
    """The budget is every attempt timing out plus the backoffs. By default an attempt may take 4 s
    to connect and 30 s for the answer, so a call's budget is 3 x 30 s + 0.5 s + 1 s."""
    assert (DEFAULT_POLICY.timeout, DEFAULT_POLICY.answer_timeout) == (4.0, 30.0)
    assert DEFAULT_POLICY.budget() == 91.5
    assert DEFAULT_POLICY.for_finalize().budget() == 6 * 30.0 + 0.5 + 1 + 2 + 4 + 4
    assert RequestPolicy(timeout=0.5, retries=0).budget() == 0.5
    assert (
        DEFAULT_POLICY.describe() == "request_timeout unset: 4s to connect, 30s to answer; request_retries=2"
    )


@pytest.mark.usefixtures("free_slots")
def test_trials_queued_behind_a_silent_server_give_up_without_trying() -> None:
    """80 parallel trials against a server that never answers: those still waiting for one of the 8
    request slots when the server has been silent for a whole call's budget fail without sending.

    Without that, each would wait its turn and time out in rounds of eight (80 connections, ten
    timeouts end to end); here at most two rounds connect.
    """
    listener = Listener(hang_up=False)

    @mlflow_run(tracking_uri=listener.uri, experiment_id="0", request_timeout=0.5, request_retries=0)
    def trial() -> None:
        raise AssertionError("the body must not run")

    def outcome() -> type[BaseException]:
        try:
            trial()
        except MlflowTrackingError as e:
            return type(e)
        raise AssertionError("the trial did not fail")

    try:
        with ThreadPoolExecutor(max_workers=80) as pool:
            kinds = list(pool.map(lambda _: outcome(), range(80)))
        connections = listener.connections
    finally:
        listener.close()
    assert connections <= 2 * MAX_CONCURRENT_REQUESTS, f"{connections} connections"
    assert kinds.count(TrackingRequestError) == connections  # sent, and timed out
    assert kinds.count(TrackingServerUnreachable) == 80 - connections  # gave up while waiting


def test_warn_runs_the_body_untracked(caplog: pytest.LogCaptureFixture) -> None:
    """Under on_tracking_error="warn" the body runs without a run and a root-logger warning names the URI."""
    caplog.set_level(logging.WARNING)
    port = free_port()
    result = _run_local(tolerant, f"http://127.0.0.1:{port}")
    assert result is True
    assert Path(BODY_MARKER).exists()
    warnings = _warnings_naming(caplog, f"127.0.0.1:{port}")
    assert len(warnings) == 1
    assert "tracking is off" in warnings[0]


# --- a server that goes away -------------------------------------------------------------------


def test_server_gone_mid_task_raise_fails_the_task(running_server: MlflowServer) -> None:
    """Under "raise", a run whose server stays away past outage_timeout fails the task, naming the URI
    and the journal that keeps its final status; the run is not lost."""
    stopper = _stop_when_started(running_server)
    with pytest.raises(flyte.errors.RuntimeUserError) as caught:
        _run_local(outlives_server, running_server.uri, outage_timeout=1.0)
    stopper.join(30)
    assert caught.value.code == "MlflowTrackingError"
    assert f"127.0.0.1:{running_server.port}" in str(caught.value)
    assert "stayed away past outage_timeout=1s" in str(caught.value)
    assert "FINISHED status, is in a journal" in str(caught.value)
    assert "python -m flyteplugins.mlflow replay " in str(caught.value)
    running_server.start()
    run = MlflowClient(running_server.uri).get_run(_run_ids[0])
    assert run.info.status == "RUNNING"


def test_server_gone_mid_task_warn_still_returns_the_result(
    running_server: MlflowServer, caplog: pytest.LogCaptureFixture
) -> None:
    """When the server stops while the body runs, "warn" returns the result and names the URI."""
    caplog.set_level(logging.WARNING)
    stopper = _stop_when_started(running_server)
    result = _run_local(outlives_server, running_server.uri, on_tracking_error="warn", outage_timeout=1.0)
    stopper.join(30)
    assert result == "trained"
    warnings = _warnings_naming(caplog, f"127.0.0.1:{running_server.port}")
    assert len(warnings) == 1
    assert f"MLflow run {_run_ids[0]} could not be marked FINISHED" in warnings[0]
    assert "python -m flyteplugins.mlflow replay " in warnings[0]


def test_finalize_survives_a_brief_outage(tracking_uri: str, client: MlflowClient) -> None:
    """A server that hangs up on the first three status updates still gets the run FINISHED."""
    dropped: list[str] = []

    def drop_first_updates(method: str, path: str) -> bool:
        if path.endswith("/runs/update") and len(dropped) < 3:
            dropped.append(path)
            return False
        return True

    proxy = Relay(tracking_uri, before=drop_first_updates)
    try:
        run_id = _run_local(quick, proxy.uri)
    finally:
        proxy.close()
    assert isinstance(run_id, str)
    assert len(dropped) == 3
    updates = [status for _, path, status in proxy.forwarded if path.endswith("/runs/update")]
    assert updates == [200]
    assert client.get_run(run_id).info.status == "FINISHED"
