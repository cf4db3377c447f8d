"""What every benchmark needs: a real ``mlflow server`` of its own, and a loopback proxy that counts.

The server runs on loopback with a SQLite store in a temporary directory and a large SQLAlchemy pool,
so bursts of parallel requests are not refused. :class:`Proxy` forwards HTTP to it, optionally after
a fixed delay (to imitate a remote server), and records the method and path of every request, which
is how the benchmarks count round-trips at the server side rather than trusting the plugin.

A scenario module started by ``run_all`` reuses the server that ``run_all`` started (its address and
database path come in as ``--tracking-uri`` and ``--db``); started alone, it starts one of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import attrs
import requests

__all__ = [
    "SERVER_ARGS",
    "Proxy",
    "Server",
    "median_seconds",
    "scenario_server",
    "start_server",
    "unique",
]

API_PREFIX = "/api/"
OTLP_PREFIX = "/v1/"  # MLflow's exporter sends spans to POST /v1/traces
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade", "te"}
)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unique(prefix: str) -> str:
    """A name no earlier benchmark run has used (experiments live on in a reused server)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@attrs.frozen
class Server:
    """A running tracking server: its URI, the SQLite file behind it, and its process group (if ours)."""

    uri: str
    db: Path
    pgid: int | None = None

    def cpu_seconds(self) -> float | None:
        """CPU time used so far by the server's processes (Linux ``/proc``); ``None`` if unknown."""
        if self.pgid is None or not Path("/proc").is_dir():
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.pgid:  # fields after the name: state, ppid, pgrp, ...
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks


# Gunicorn's sync workers serve MLflow's Flask app directly. The default uvicorn server puts a
# FastAPI layer in front of the same app, which costs about twice the CPU per tracking request, and
# with more than one worker uvicorn (0.54) binds the listening socket without IPPROTO_TCP, so asyncio
# never sets TCP_NODELAY and each request after the first on a keep-alive connection waits ~40 ms
# for a delayed ACK. Either would make the server, not the plugin, the subject of every figure.
SERVER_ARGS: tuple[str, ...] = ("--workers", "2", "--gunicorn-opts", "--timeout 120")


@contextlib.contextmanager
def start_server(args: tuple[str, ...] = SERVER_ARGS) -> Iterator[Server]:
    """Start ``mlflow server`` (SQLite in a temporary directory) and stop it on exit.

    Raises:
        RuntimeError: the server exited or did not answer ``/health`` within two minutes.
    """
    with tempfile.TemporaryDirectory(prefix="flyteplugins-mlflow-bench-") as tmp:
        root = Path(tmp)
        port = free_port()
        env = {
            **os.environ,
            "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "64",
            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "128",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background job runners: tracking only
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        db = root / "mlflow.db"
        log_path = root / "server.log"
        command = [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", f"sqlite:///{db}",
            "--default-artifact-root", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), *args,
        ]  # fmt: skip
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
            )
        uri = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(uri, process, log_path)
            _warm(uri)
            yield Server(uri=uri, db=db, pgid=process.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_healthy(uri: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"mlflow server exited early:\n{log_path.read_text()[-3000:]}"
            raise RuntimeError(msg)
        with contextlib.suppress(requests.RequestException):
            if requests.get(uri + "/health", timeout=1).status_code == 200:
                return
        time.sleep(0.3)
    msg = f"mlflow server did not start:\n{log_path.read_text()[-3000:]}"
    raise RuntimeError(msg)


def _warm(uri: str) -> None:
    """Search runs a few times at once, so that every worker has done its first search.

    A worker's first ``runs/search`` takes about 0.6 s of CPU here (MLflow sets its search up lazily),
    once per worker process. Left in place, it lands in whichever timed repetition first reaches
    that worker, and a one-time cost of the server is charged to one study.
    """
    body = {"experiment_ids": ["0"], "filter": "tags.`warm` = 'up' and attributes.status = 'RUNNING'"}

    def search(_: int) -> None:
        requests.post(uri + "/api/2.0/mlflow/runs/search", json=body, timeout=60).raise_for_status()

    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            list(pool.map(search, range(4)))


@contextlib.contextmanager
def scenario_server(description: str) -> Iterator[Server]:
    """The server a scenario runs against: ``--tracking-uri``/``--db``/``--pgid`` if given, else its own."""
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # MlflowClient's "View run at" lines
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tracking-uri", help="an already running mlflow server (started by run_all)")
    parser.add_argument("--db", type=Path, help="the SQLite file behind --tracking-uri")
    parser.add_argument("--pgid", type=int, help="the process group of --tracking-uri's server")
    args = parser.parse_args()
    if args.tracking_uri:
        if args.db is None:
            parser.error("--db is required with --tracking-uri")
        yield Server(uri=args.tracking_uri, db=args.db, pgid=args.pgid)
        return
    print("starting an mlflow server (SQLite, temporary directory) ...", flush=True)
    with start_server() as server:
        yield server


class _ProxyHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, owner: Proxy) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: don't wait for an ACK between
    server: _ProxyHTTPServer

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        proxy = self.server.owner
        proxy.record(self.command, self.path.split("?", 1)[0])
        if proxy.delay:
            time.sleep(proxy.delay)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        status, reply_headers, data = proxy.send_upstream(self.command, self.path, body, headers)
        self.send_response(status)
        for key, value in reply_headers:
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: the benchmarks print their own figures."""


class Proxy:
    """A loopback HTTP proxy in front of the tracking server: adds ``delay`` seconds, counts requests.

    Each client connection gets a thread and a keep-alive connection of its own to the server, so
    the proxy adds the delay and little else. Use it as a context manager.
    """

    def __init__(self, upstream: str, delay: float = 0.0) -> None:
        host_port = upstream.split("://", 1)[1].rstrip("/")
        host, port = host_port.rsplit(":", 1)
        self.upstream_host = host
        self.upstream_port = int(port)
        self.delay = delay
        self._seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._http = _ProxyHTTPServer(self)
        self._thread = threading.Thread(target=self._http.serve_forever, name="bench-proxy", daemon=True)

    @property
    def uri(self) -> str:
        """The proxy's own address: use it as the tracking URI."""
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()

    def record(self, method: str, path: str) -> None:
        """Note one request (called by the handler before it forwards it)."""
        with self._lock:
            self._seen.append((method, path))

    def send_upstream(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send one request to the server on this thread's connection, reconnecting once if it dropped."""
        for attempt in (1, 2):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
                self._local.conn = conn
            try:
                conn.request(method, path, body=body, headers=headers)
                reply = conn.getresponse()
                return reply.status, reply.getheaders(), reply.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def mark(self) -> int:
        """A position in the request record; pass it to :meth:`requests`."""
        with self._lock:
            return len(self._seen)

    def requests(self, since: int = 0) -> list[tuple[str, str]]:
        """The ``(method, path)`` of every API request forwarded since ``since``."""
        with self._lock:
            return [r for r in self._seen[since:] if r[1].startswith((API_PREFIX, OTLP_PREFIX))]


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    """The median wall time of ``repeat`` calls of ``fn``."""
    times: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
