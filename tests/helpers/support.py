"""Test support: a real ``mlflow server`` subprocess (also behind TLS), a loopback relay to put in front
of one, a TCP tunnel that counts connections, and a socket that records requests and never answers.

All are real network peers; nothing here imitates MLflow.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import requests
import trustme
from mlflow.tracking import MlflowClient
from playwright.sync_api import Locator, Page

from flyteplugins.mlflow import get_mlflow_run

# The tracking API requests the tests count, as ``(method, path)`` in the server's access log.
CREATE = ("POST", "/api/2.0/mlflow/runs/create")
UPDATE = ("POST", "/api/2.0/mlflow/runs/update")
SEARCH = ("POST", "/api/2.0/mlflow/runs/search")
GET_RUN = ("GET", "/api/2.0/mlflow/runs/get")
BY_NAME = ("GET", "/api/2.0/mlflow/experiments/get-by-name")
LOG_BATCH = ("POST", "/api/2.0/mlflow/runs/log-batch")
LOG_METRIC = ("POST", "/api/2.0/mlflow/runs/log-metric")
LOG_INPUTS = ("POST", "/api/2.0/mlflow/runs/log-inputs")

_REQUEST = re.compile(r'"(GET|POST|PATCH|DELETE) (/api/2\.0/mlflow/[^ ?"]*)')
_ANSWER = re.compile(r'"(GET|POST|PATCH|DELETE) (/api/2\.0/mlflow/[^ ?"]*)[^"]*" (\d{3})')

# The replay command a journal's warning or error names, with the journal's location.
REPLAY = re.compile(r"python -m flyteplugins\.mlflow replay (\S+)")


DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
SCREENSHOTS_ENV = "FLYTE_MLFLOW_SCREENSHOTS"


def screenshot(target: Locator | Page, name: str, full_page: bool = False) -> bytes:
    """Take a PNG screenshot of an element, the visible page, or the ``full_page``, and check it is one.

    With ``FLYTE_MLFLOW_SCREENSHOTS=1`` (``make screenshots``) it is also saved as
    ``docs/images/<name>.png`` for the docs; otherwise test runs leave the committed pictures alone.
    """
    png = target.screenshot(full_page=True) if full_page and isinstance(target, Page) else target.screenshot()
    assert png.startswith(b"\x89PNG") and len(png) > 1000, f"no real screenshot for {name}"
    if os.environ.get(SCREENSHOTS_ENV) == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        (DOCS_IMAGES / f"{name}.png").write_bytes(png)
    return png


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MlflowServer:
    """A running ``mlflow server`` subprocess and its access log."""

    def __init__(
        self,
        root: Path,
        port: int,
        app: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        backend: str | None = None,
    ) -> None:
        self.root = root
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self.log_path = root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.backend = backend or f"sqlite:///{root / 'mlflow.db'}"
        self._app = app
        self._env = env or {}
        self.verify: bool | str = True  # how the start-up check verifies the server's certificate
        self.cert: str | None = None  # and the client certificate it shows

    def start(self) -> None:
        """Start the server and wait until it answers ``/health``."""
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "64",
            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "128",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background job runners: tracking only
            **self._env,
        }
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(var, None)
        mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                mlflow_bin, "server",
                "--backend-store-uri", self.backend,
                "--default-artifact-root", str(self.root / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                *self._app,
            ],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                health = requests.get(self.uri + "/health", timeout=1, verify=self.verify, cert=self.cert)
                if health.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop the server and every process it started.

        The server runs in a process group of its own, and the whole group is stopped: MLflow 3.4's
        ``mlflow server`` leaves its uvicorn child running (and holding the port) when only the
        ``mlflow`` process is terminated.
        """
        if self.process is None:
            return
        group = self.process.pid  # start_new_session: the server leads a group of its own
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        deadline = time.monotonic() + 20
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

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

    def answers(self, since: int) -> list[tuple[str, str, int]]:
        """The ``(method, path, status)`` of every tracking API request answered since ``since``."""
        time.sleep(0.3)
        with self.log_path.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        return [(m.group(1), m.group(2), int(m.group(3))) for m in _ANSWER.finditer(text)]


def _group_alive(group: int) -> bool:
    """Whether a process of the process group ``group`` still runs (a zombie, which holds no port and
    which this machine's PID 1 may be slow to reap, does not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its closing ')'
            state, _ppid, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
            if int(pgrp) == group and state != "Z":
                return True
    return False


class ArtifactServer(MlflowServer):
    """``mlflow server --serve-artifacts``: clients upload and download artifacts through the server.

    New experiments get ``mlflow-artifacts:/`` as their artifact root (given after the base class's
    local ``--default-artifact-root``, so it wins), and the server keeps the files in ``served/``.
    """

    def __init__(self, root: Path, port: int) -> None:
        self.served = root / "served"
        app = ("--serve-artifacts", "--artifacts-destination", str(self.served))
        super().__init__(root, port, app=(*app, "--default-artifact-root", "mlflow-artifacts:/"))


class TlsServer(MlflowServer):
    """``mlflow server`` behind uvicorn's own TLS, with certificates from a CA that trustme makes.

    ``ca_path`` is the CA bundle that verifies the server's certificate (issued for ``127.0.0.1``
    and ``localhost``). With ``mutual``, the server also asks every client for a certificate signed
    by that CA, and refuses the handshake without one; ``client_cert_path`` is such a certificate,
    its key in the same PEM file, as ``MLFLOW_TRACKING_CLIENT_CERT_PATH`` takes it.
    """

    def __init__(self, root: Path, port: int, mutual: bool = False) -> None:
        ca = trustme.CA()
        self.ca_path = root / "ca.pem"
        ca.cert_pem.write_to_path(self.ca_path)
        issued = ca.issue_cert("127.0.0.1", "localhost")
        key, chain = root / "server-key.pem", root / "server.pem"
        issued.private_key_pem.write_to_path(key)
        issued.cert_chain_pems[0].write_to_path(chain)
        self.client_cert_path = root / "client.pem"
        ca.issue_cert("trainer@flyte.test").private_key_and_cert_chain_pem.write_to_path(
            self.client_cert_path
        )
        # Behind TLS, uvicorn waits for idle keep-alive connections to close before it stops: 1 s at most.
        opts = f"--ssl-keyfile {key} --ssl-certfile {chain} --timeout-graceful-shutdown 1"
        if mutual:
            opts += f" --ssl-ca-certs {self.ca_path} --ssl-cert-reqs 2"  # 2: ssl.CERT_REQUIRED
        super().__init__(root, port, app=("--uvicorn-opts", opts))
        self.uri = f"https://127.0.0.1:{port}"
        self.verify = str(self.ca_path)
        self.cert = str(self.client_cert_path) if mutual else None


def other_ca(root: Path) -> Path:
    """The CA bundle of a CA that signed nothing the servers show: it trusts none of them."""
    path = root / f"other-ca-{uuid.uuid4().hex[:8]}.pem"
    trustme.CA().cert_pem.write_to_path(path)
    return path


S = TypeVar("S", bound=MlflowServer)


def serving(server: S) -> Iterator[S]:
    """Start ``server``, yield it, and stop it afterwards (the body of a server fixture)."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


class AuthServer(MlflowServer):
    """``mlflow server --app-name basic-auth``: MLflow's own app that checks a password on every request.

    Users have no permission on an experiment unless they created it or were granted one
    (``default_permission = NO_PERMISSIONS``); the admin may do anything. The password hashes live in
    their own SQLite file next to the tracking store.
    """

    ADMIN = "admin"

    def __init__(self, root: Path, port: int) -> None:
        self.admin_password = f"admin-{uuid.uuid4().hex}"
        config = root / "basic_auth.ini"
        config.write_text(
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
            f"admin_username = {self.ADMIN}\n"
            f"admin_password = {self.admin_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex}
        super().__init__(root, port, app=("--app-name", "basic-auth"), env=env)

    def _admin(self, method: str, path: str, body: dict[str, str], version: int = 2) -> dict[str, Any]:
        reply = requests.request(
            method,
            f"{self.uri}/api/{version}.0/mlflow/{path}",
            json=body,
            auth=(self.ADMIN, self.admin_password),
            timeout=60,
        )
        reply.raise_for_status()
        answer: dict[str, Any] = reply.json() if reply.content else {}
        return answer

    def add_user(self, username: str, password: str) -> None:
        """Create a user who may do nothing yet."""
        self._admin("POST", "users/create", {"username": username, "password": password})

    def set_password(self, username: str, password: str) -> None:
        """Change a user's password (the old one stops working at once)."""
        self._admin("PATCH", "users/update-password", {"username": username, "password": password})

    def create_experiment(self, name: str) -> str:
        """Create an experiment as the admin; returns its id."""
        experiment_id: str = self._admin("POST", "experiments/create", {"name": name})["experiment_id"]
        return experiment_id

    def grant(self, username: str, experiment_id: str, permission: str) -> None:
        """Give ``username`` a permission (``READ``, ``EDIT``, ``MANAGE``) on one experiment."""
        body = {
            "username": username,
            "resource_type": "experiment",
            "resource_id": experiment_id,
            "permission": permission,
        }
        self._admin("POST", "users/permissions/grant", body, version=3)

    def admin_gate(self) -> Relay:
        """A loopback relay that sends every request on as the admin; ``MlflowClient(gate.uri)`` reads all.

        The test process's environment then never holds the admin's password.
        """
        login = base64.b64encode(f"{self.ADMIN}:{self.admin_password}".encode()).decode()
        return Relay(self.uri, headers={"Authorization": f"Basic {login}"})


@attrs.frozen
class Team:
    """A user of the auth server and the experiments they may edit, only read, or not touch."""

    user: str
    password: str
    editable: str
    readable: str
    forbidden: str


class Relay:
    """A loopback HTTP proxy in front of ``upstream`` that records and can disturb what passes.

    Args:
        upstream: the server to forward to.
        before: called with ``(method, path)`` before a request is forwarded; it may sleep to delay
            the request, and returns ``False`` to hang up without an answer instead.
        classify: names the kind of a request path, for :attr:`peak` (most in flight at once per kind).
        identify: names the sender of a request from its client port, for :attr:`senders` (called
            while the connection is open, so the port still belongs to the sender).
        headers: added to every request sent upstream (the client's own headers are not passed on,
            apart from ``Content-Type``).
        admit: called with the request's ``Authorization`` header; ``False`` answers 401 instead of
            forwarding, as an authenticating proxy in front of a server would.
    """

    def __init__(
        self,
        upstream: str,
        before: Callable[[str, str], bool] | None = None,
        classify: Callable[[str], str] = lambda path: "all",
        identify: Callable[[int], object] | None = None,
        headers: dict[str, str] | None = None,
        admit: Callable[[str | None], bool] | None = None,
    ) -> None:
        self.upstream = upstream
        self.forwarded: list[tuple[str, str, int]] = []
        self.senders: list[tuple[object, str, str]] = []
        self.peak: dict[str, int] = {}
        self._now: dict[str, int] = {}
        self._lock = threading.Lock()
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                if identify is not None:
                    sender = identify(self.client_address[1])
                    with relay._lock:
                        relay.senders.append((sender, self.command, path))
                if admit is not None and not admit(self.headers.get("Authorization")):
                    with relay._lock:
                        relay.forwarded.append((self.command, path, 401))
                    refusal = (
                        b'{"error_code": "UNAUTHENTICATED", "message": "a valid bearer token is required"}'
                    )
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(refusal)))
                    self.end_headers()
                    self.wfile.write(refusal)
                    return
                if before is not None and not before(self.command, path):
                    self.close_connection = True
                    return  # hang up without an answer, as a server going away would
                kind = classify(path)
                with relay._lock:
                    relay._now[kind] = relay._now.get(kind, 0) + 1
                    relay.peak[kind] = max(relay.peak.get(kind, 0), relay._now[kind])
                try:
                    reply = requests.request(
                        self.command,
                        relay.upstream + self.path,
                        data=body,
                        headers={
                            "Content-Type": self.headers.get("Content-Type", "application/json"),
                            **(headers or {}),
                        },
                        timeout=60,
                    )
                finally:
                    # Counted out before the client can see the answer, so the count never overstates.
                    with relay._lock:
                        relay._now[kind] -= 1
                with relay._lock:
                    relay.forwarded.append((self.command, path, reply.status_code))
                self.send_response(reply.status_code)
                self.send_header("Content-Type", reply.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            do_GET = _relay
            do_POST = _relay
            do_PATCH = _relay

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.request_queue_size = 512
        self.uri = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop the relay."""
        self._server.shutdown()
        self._server.server_close()


class Silent:
    """A loopback socket that takes every connection and never answers: a server that hangs rather
    than refuses. Connections stay open until :meth:`close`."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.uri = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _take(self, conn: socket.socket) -> None:
        self.connections.append(conn)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._take(conn)

    def close(self) -> None:
        """Stop listening and drop the connections."""
        self._sock.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.close()


class Tunnel(Silent):
    """A loopback TCP relay to ``port`` that passes the bytes both ways untouched and counts the
    connections made through it: TLS runs end to end, so every handshake shows as one connection,
    whether it fails or not (a failed one never reaches the server's access log)."""

    def __init__(self, port: int, scheme: str = "https") -> None:
        self._upstream = port
        self.made = 0
        self._lock = threading.Lock()
        super().__init__()
        self.port = int(self.uri.rsplit(":", 1)[1])
        self.uri = f"{scheme}://127.0.0.1:{self.port}"

    def _take(self, conn: socket.socket) -> None:
        with self._lock:
            self.made += 1
        upstream = socket.create_connection(("127.0.0.1", self._upstream))
        self.connections += [conn, upstream]
        for source, sink in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes from ``source`` to ``sink`` until ``source`` ends, then end ``sink``'s side too."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class Recorder(Silent):
    """A loopback socket that reads each request, keeps its bytes, and hangs up without answering."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        super().__init__()

    def _take(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            self.received.append(_read_request(conn))


def _read_request(conn: socket.socket) -> bytes:
    """Read one HTTP request: its head, then as many body bytes as its ``Content-Length`` says.

    The head and the body may arrive in separate segments, so one ``recv`` is not enough.
    """
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        while length and len(body) < int(length.group(1)):
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
            data += chunk
    return data


def own_run_id() -> str:
    """The id of the plugin's run for the calling task (asserting there is one)."""
    run = get_mlflow_run()
    assert run is not None, "no MLflow run inside a tracked call"
    run_id: str = run.info.run_id
    return run_id


def replay(location: str) -> subprocess.CompletedProcess[str]:
    """Run the replay command as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "flyteplugins.mlflow", "replay", location],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    """The steps of a metric's stored history, sorted (a point stored twice shows twice)."""
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def replayed_twice(client: MlflowClient, location: str, run_id: str, points: int) -> None:
    """Replay the journal at ``location`` twice, as a user would: each time it sends the ``points``
    points of ``loss``, the param ``lr`` and the FINISHED status, and the run holds each point once."""
    for _ in range(2):
        done = replay(location)
        assert done.returncode == 0, done.stderr
        assert f"{points} metric point(s)" in done.stdout and "status FINISHED" in done.stdout
        assert steps(client, run_id, "loss") == list(range(points)), "each point once, after each replay"
        stored = client.get_run(run_id)
        assert stored.info.status == "FINISHED"
        assert stored.data.params == {"lr": "0.1"}
