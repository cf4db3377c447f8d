"""Shared fixtures: one real ``mlflow server`` per test session, started on loopback with SQLite.

The server's access log is the ground truth for request counts: :meth:`MlflowServer.requests` returns
the tracking API requests it answered since a mark, so tests can pin how many round-trips the plugin
makes without trusting the plugin's own bookkeeping.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flyte
import mlflow
import pytest
from flyte._persistence._db import LocalDB
from flyte._persistence._run_store import RunStore
from flyte.config._reader import get_config_file
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser, sync_playwright

from tests.helpers.support import ArtifactServer, AuthServer, MlflowServer, Team, free_port, serving

__all__ = ["AuthServer", "Links", "MlflowServer", "Recorded", "free_port"]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real tracking server for the whole session."""
    yield from serving(MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port()))


@pytest.fixture(scope="session")
def artifact_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArtifactServer]:
    """A real ``mlflow server --serve-artifacts`` for the session, for tests that store models."""
    yield from serving(ArtifactServer(tmp_path_factory.mktemp("mlflow-artifact-server"), free_port()))


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """One real ``mlflow server --app-name basic-auth`` for the session, started on first use."""
    yield from serving(AuthServer(tmp_path_factory.mktemp("mlflow-auth-server"), free_port()))


@pytest.fixture
def team(auth_server: AuthServer) -> Team:
    """A fresh user with EDIT on one new experiment, READ on a second and nothing on a third."""
    tag = uuid.uuid4().hex[:10]
    user, password = f"alice-{tag}", f"pw-{uuid.uuid4().hex}"
    auth_server.add_user(user, password)
    editable, readable, forbidden = (auth_server.create_experiment(f"{kind}-{tag}") for kind in "erf")
    auth_server.grant(user, editable, "EDIT")
    auth_server.grant(user, readable, "READ")
    return Team(user, password, editable, readable, forbidden)


@pytest.fixture(scope="module")
def admin(auth_server: AuthServer) -> Iterator[MlflowClient]:
    """A client that reads everything on the auth server, through a relay that logs in as the admin."""
    gate = auth_server.admin_gate()
    try:
        yield MlflowClient(gate.uri)
    finally:
        gate.close()


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


FLYTE_METADATA = Path("/tmp/flyte/metadata")  # where Flyte's local runs keep each action's metadata


@pytest.fixture
def where() -> Iterator[Path]:
    """A unique Flyte run name (a path under Flyte's local metadata root, where its reports are
    saved), removed afterwards."""
    where = FLYTE_METADATA / f"run-{uuid.uuid4().hex[:16]}"
    yield where
    shutil.rmtree(where, ignore_errors=True)


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


# The longest modules, longest first: ``make test`` gives each module whole to one of two workers
# in the order collected, so these start first and the short ones fill in around them.
LONGEST_FIRST = (
    "test_nodes.py",
    "test_outages.py",
    "test_auth.py",
    "test_elastic.py",
    "test_kills.py",
    "test_docs.py",
    "test_examples.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that drives Chromium, so ``make screenshots`` can run just those; put the
    longest modules first (each module's own order is kept)."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the local MLflow store that a stray default run would create in the repo."""
    stray = Path(session.config.rootpath) / "mlruns"
    if stray.exists() and not any(stray.iterdir()):
        shutil.rmtree(stray)


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium (Debian's package, which ``make test`` installs), driven by Playwright.

    Module-scoped: while Playwright's sync API is open the main thread has a running event loop, so
    a session-wide browser would make every later test that calls ``asyncio.run`` fail.
    """
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make browser` (or set CHROMIUM to its path)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


Links = dict[str, list[tuple[str, str]]]


class Recorded:
    """Runs workflows with run recording on, and reads back the links each task's action recorded."""

    def run(self, task: Any, custom_context: Any, **inputs: Any) -> tuple[Any, Links]:
        """Run ``task`` locally; return its output and ``{task function name: [(name, url), ...]}``."""
        name = f"links-{uuid.uuid4().hex[:16]}"
        result = flyte.with_runcontext(mode="local", name=name, custom_context=custom_context).run(
            task, **inputs
        )
        output = result.outputs()[0]
        links: Links = {}
        for record in RunStore.list_actions_for_run_sync(name):
            if record.action_name == "a0" or record.task_name is None:
                continue
            short = record.task_name.rsplit(".", 1)[-1]
            pairs = json.loads(record.log_links) if record.log_links else []
            links.setdefault(short, []).extend((str(n), str(u)) for n, u in pairs)
        return output, links


def _forget_store() -> None:
    """Close Flyte's local store and forget the config file it was located by, so it is found anew."""
    LocalDB.close_sync()  # type: ignore[no-untyped-call]
    get_config_file.cache_clear()


@pytest.fixture
def recorded(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    """Turn Flyte's local run recording on, into a store in a temporary directory, for one test."""
    store = tmp_path_factory.mktemp("flyte-run-store")
    config = store / "config.yaml"
    config.write_text("")
    monkeypatch.delenv("UCTL_CONFIG", raising=False)
    monkeypatch.setenv("FLYTECTL_CONFIG", str(config))
    _forget_store()
    flyte.init(local_persistence=True)
    try:
        yield Recorded()
    finally:
        flyte.init()
        _forget_store()
    assert (store / "local-cache" / "cache.db").exists(), "the run store was not written where expected"
