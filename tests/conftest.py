"""Shared fixtures: one real ``mlflow server`` per test session, started on loopback with SQLite.

The server's access log is the ground truth for request counts: :meth:`MlflowServer.requests` returns
the tracking API requests it answered since a mark, so tests can pin how many round-trips the plugin
makes without trusting the plugin's own bookkeeping.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import flyte
import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient

_REQUEST = re.compile(r'"(GET|POST|PATCH|DELETE) (/api/2\.0/mlflow/[^ ?"]*)')


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MlflowServer:
    """A running ``mlflow server`` subprocess and its access log."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self.log_path = root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers ``/health``."""
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "64",
            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "128",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                mlflow_bin, "server",
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--default-artifact-root", str(self.root / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "2",
            ],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(self.uri + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop the server."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def mark(self) -> int:
        """A position in the access log; pass it to :meth:`requests`."""
        time.sleep(0.2)  # let the server write the lines of requests already answered
        return self.log_path.stat().st_size

    def requests(self, since: int) -> list[tuple[str, str]]:
        """The ``(method, path)`` of every tracking API request answered since ``since``."""
        time.sleep(0.3)
        with self.log_path.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        return [(m.group(1), m.group(2)) for m in _REQUEST.finditer(text)]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real tracking server for the whole session."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tracking_uri(mlflow_server: MlflowServer) -> str:
    """The session server's URI."""
    return mlflow_server.uri


@pytest.fixture
def client(tracking_uri: str) -> MlflowClient:
    """A client that reads results back from the session server."""
    return MlflowClient(tracking_uri)


@pytest.fixture
def experiment(client: MlflowClient) -> tuple[str, str]:
    """A fresh experiment on the session server: ``(name, id)``."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    return name, client.create_experiment(name)


@pytest.fixture(scope="session", autouse=True)
def _flyte_local(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Initialise Flyte once for local runs."""
    flyte.init()


@pytest.fixture(autouse=True)
def _isolated_mlflow_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run each test in its own directory, and check it leaves MLflow's global state as it found it."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "RANK"):
        monkeypatch.delenv(var, raising=False)
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils

    before = (utils._tracking_uri, fluent._active_experiment_id)
    yield
    assert mlflow.active_run() is None, "a run was left active in the calling process"
    assert (utils._tracking_uri, fluent._active_experiment_id) == before, (
        "MLflow's global state was not restored"
    )
    assert "MLFLOW_TRACKING_URI" not in os.environ, "MLFLOW_TRACKING_URI was left set"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the local MLflow store that a stray default run would create in the repo."""
    stray = Path(session.config.rootpath) / "mlruns"
    if stray.exists() and not any(stray.iterdir()):
        shutil.rmtree(stray)
