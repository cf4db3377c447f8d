"""Scenario (g): a 20 s restart of the tracking server in the middle of a queued 16-trial study.

The study: 16 nested trials under ``asyncio.gather`` below one tracked root, ``async_logging=True``,
each logging one ``mlflow.log_metric`` point every 0.1 s (an epoch of ``await asyncio.sleep``) for
550 epochs, about 55 s. It runs twice, after a short warm-up that is not timed: once with no outage,
and once while a thread stops the server 10 s after the study began (SIGTERM to its process group),
waits 20 s once it has exited, and starts it again on the same port and SQLite file (runs survive a
restart), waiting for ``/health``. The plugin keeps what the server did not take and sends it again
when it is back; the trials' ``log_metric`` calls should not notice.

Printed for each run of the study: its wall time, the points logged (``log_metric`` calls) and the
points stored (every trial's metric history read back: each point exactly once, with the value
that trial logged at that step), the runs' final statuses, the slowest single ``log_metric`` call,
and what the queue held: its high water in values, what it spilled to disk past its memory bound,
and the process's peak RSS. A thread samples the queue (``_mlflow_state.queue()``) during the
study, since it is uninstalled when the last tracked task ends. Exits non-zero if a point was lost,
stored twice or stored wrong, a run did not end ``FINISHED``, the study failed, or the server could
not be restarted.

The scenario always starts its own server, since it stops it: run by ``run_all``, it accepts
``--tracking-uri``, ``--db`` and ``--pgid`` and leaves that shared server alone.

Run: ``python -m bench.outage`` (or ``make bench`` for every scenario).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs
import flyte
import mlflow
from mlflow.tracking import MlflowClient

from bench._support import SERVER_ARGS, _wait_healthy, _warm, free_port, unique
from bench.epoch_study import local
from flyteplugins.mlflow import get_mlflow_run, mlflow_config, mlflow_run
from flyteplugins.mlflow._buffer.queue import LIMIT, RunQueue, interval
from flyteplugins.mlflow._patches import process_state as _mlflow_state
from flyteplugins.mlflow._transport.policy import DEFAULT_OUTAGE_TIMEOUT

__all__ = ["Outage", "OwnServer", "Sampler", "Tally", "main", "study", "trial", "value"]

TRIALS: Final = 16
EPOCHS: Final = 550
PERIOD: Final = 0.1
"""Seconds per epoch: each trial logs one point per epoch."""
OUTAGE_AFTER: Final = 10.0
"""Seconds after the study starts at which the server is stopped."""
DOWN_FOR: Final = 20.0
"""Seconds between the server's exit and its start again."""
KEY: Final = "loss"

env = flyte.TaskEnvironment(name="bench-outage")


def value(trial: int, epoch: int) -> float:
    """The value trial ``trial`` logs at ``epoch``: unique across the study."""
    return float(trial * 1_000_000 + epoch)


class Tally:
    """The trials' ``log_metric`` calls: how many, how long each took, and when the last one was made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.durations: list[float] = []
        self.last = 0.0  # time.perf_counter() of the latest call

    def add(self, took: float, at: float) -> None:
        """Record one call that took ``took`` seconds and ended at ``at`` (``time.perf_counter()``)."""
        with self._lock:
            self.durations.append(took)
            self.last = max(self.last, at)

    def reset(self) -> None:
        """Forget every call so far."""
        with self._lock:
            self.durations = []
            self.last = 0.0


TALLY: Final = Tally()


@mlflow_run(run_mode="nested")
@env.task
async def trial(i: int, epochs: int, period: float) -> str:
    """One trial: ``epochs`` epochs of ``period`` seconds of sleep, one ``log_metric`` call after each."""
    mlflow.set_tag("bench.trial", str(i))
    for epoch in range(epochs):
        await asyncio.sleep(period)
        began = time.perf_counter()
        mlflow.log_metric(KEY, value(i, epoch), step=epoch)
        ended = time.perf_counter()
        TALLY.add(ended - began, ended)
    run = get_mlflow_run()
    assert run is not None
    return str(run.info.run_id)


@mlflow_run
@env.task
async def study(n: int, epochs: int, period: float) -> list[str]:
    """The tracked root: ``n`` nested trials under ``asyncio.gather``; its run id, then the trials'."""
    run = get_mlflow_run()
    assert run is not None
    ids = await asyncio.gather(*(trial(i, epochs, period) for i in range(n)))
    return [str(run.info.run_id), *ids]


class OwnServer:
    """An ``mlflow server`` that can be stopped and started again on the same port and SQLite file.

    Started as :func:`bench._support.start_server` starts its server (gunicorn with 2 workers, a
    large SQLAlchemy pool, no job runners), in ``root``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.db = root / "mlflow.db"
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "64",
            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "128",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background job runners: tracking only
        }
        self.env.pop("MLFLOW_TRACKING_URI", None)

    def start(self) -> None:
        """Start the server and wait until it answers ``/health``.

        Raises:
            RuntimeError: it exited (the port taken, say) or did not answer within two minutes.
        """
        command = [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", f"sqlite:///{self.db}",
            "--default-artifact-root", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), *SERVER_ARGS,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )
        _wait_healthy(self.uri, self._process, self.log_path)

    def stop(self) -> float | None:
        """Stop the server's process group (SIGTERM, then SIGKILL after 20 s) and wait for it to exit.

        Returns:
            When (``time.perf_counter()``) its port stopped taking connections, ``None`` if it never
            ran; gunicorn closes its port at once and lets its workers finish for a few seconds.
        """
        process, self._process = self._process, None
        if process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        closed: float | None = None
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            if closed is None and not self.listening():
                closed = time.perf_counter()
            time.sleep(0.05)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        return closed or time.perf_counter()

    def listening(self) -> bool:
        """Whether anything accepts connections on the server's port right now."""
        with socket.socket() as s:
            s.settimeout(1.0)
            return s.connect_ex(("127.0.0.1", self.port)) == 0


@contextlib.contextmanager
def own_server() -> Iterator[OwnServer]:
    """A started :class:`OwnServer` in a temporary directory, warmed up; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="flyteplugins-mlflow-bench-outage-") as tmp:
        server = OwnServer(Path(tmp))
        try:
            server.start()
            _warm(server.uri)
            yield server
        finally:
            server.stop()


@attrs.define
class Outage:
    """The outage: stop ``server`` ``after`` seconds past ``t0``, start it again ``down`` s after it exited.

    Times are seconds after ``t0`` (``time.perf_counter()``), as they happened.
    """

    server: OwnServer
    after: float
    down: float
    t0: float = 0.0
    stop_sent: float | None = None
    closed: float | None = None
    stopped: float | None = None
    port_free: bool | None = None
    start_sent: float | None = None
    healthy: float | None = None
    error: str | None = None
    _cancel: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None

    def begin(self) -> None:
        """Start the outage's thread; the clock starts now."""
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="bench-outage", daemon=True)
        self._thread.start()

    def end(self) -> None:
        """Wait for the outage's thread (a server being started again is waited for)."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout=180)

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    def _run(self) -> None:
        if self._cancel.wait(self.after):
            self.error = "the study ended before the outage began"
            return
        try:
            self.stop_sent = self._now()
            closed = self.server.stop()
            self.stopped = self._now()
            self.closed = None if closed is None else closed - self.t0
            self.port_free = not self.server.listening()
            time.sleep(self.down)
            self.start_sent = self._now()
            self.server.start()
            self.healthy = self._now()
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"

    @property
    def unreachable(self) -> float | None:
        """Seconds from the port closing to ``/health`` answering again."""
        if self.closed is None or self.healthy is None:
            return None
        return self.healthy - self.closed


def rss_bytes() -> int:
    """The process's resident memory now (Linux ``/proc``), else its peak so far."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


class Sampler:
    """Samples the plugin's queue (while installed) and the process's RSS every ``period`` seconds."""

    def __init__(self, t0: float, period: float = 0.05) -> None:
        self.t0 = t0
        self.period = period
        self.held: list[tuple[float, int]] = []  # (seconds after t0, values held)
        self.queues: list[RunQueue] = []
        self.peak_rss = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-outage-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        queue = _mlflow_state.queue()
        if queue is not None:
            if not any(q is queue for q in self.queues):
                self.queues.append(queue)
            self.held.append((time.perf_counter() - self.t0, queue.held()))
        self.peak_rss = max(self.peak_rss, rss_bytes())

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    @property
    def high_water(self) -> int:
        """The most values any queue seen held in memory at once (its own counter)."""
        return max((q.high_water for q in self.queues), default=0)

    @property
    def spilled(self) -> tuple[int, int]:
        """Values and bytes the queues seen spilled to disk."""
        return sum(q.spilled for q in self.queues), sum(q.spilled_bytes for q in self.queues)

    def peak_held(self, since: float = 0.0) -> int:
        """The most values held in a sample taken ``since`` seconds after ``t0`` or later."""
        return max((h for t, h in self.held if t >= since), default=0)

    def back_to(self, level: int, since: float) -> float | None:
        """When, after ``since``, the queue first held ``level`` values or fewer (seconds after ``t0``)."""
        return next((t for t, h in self.held if t >= since and h <= level), None)


class _Warnings(logging.Handler):
    """Keeps the plugin's warnings and errors (a journal written, values not stored, ...)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep one record's message."""
        self.messages.append(f"{record.levelname}: {record.getMessage()}")


@attrs.frozen
class Result:
    """One run of the study: what it took, what was logged and stored, and what the queue held."""

    label: str
    wall: float
    error: str | None
    logged: int
    expected: int
    stored: int
    missing: int
    duplicated: int
    wrong: int
    finished: int
    runs: int
    statuses: tuple[str, ...]
    slowest: float
    p99: float
    last_log: float
    high_water: int
    peak_held: int
    spilled: int
    spilled_bytes: int
    peak_rss: int
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Every point stored once, as logged; every run ``FINISHED``; the study did not fail."""
        return (
            self.error is None
            and self.logged == self.expected
            and self.stored == self.expected
            and not (self.missing or self.duplicated or self.wrong)
            and self.finished == self.runs
        )


def check(client: MlflowClient, ids: list[str], n: int, epochs: int) -> tuple[int, int, int, int, list[str]]:
    """Read every trial's history back: points stored, missing, stored twice, wrong; the runs' statuses.

    A point is "wrong" if its step or value is not one this trial logged (it went into another
    trial's run, or was changed), or its run is not this trial's (tag, parent).
    """
    parent, trials = ids[0], ids[1:]
    stored = missing = duplicated = wrong = 0
    statuses = [client.get_run(parent).info.status]
    for i, run_id in enumerate(trials):
        run = client.get_run(run_id)
        statuses.append(run.info.status)
        if run.data.tags.get("mlflow.parentRunId") != parent or run.data.tags.get("bench.trial") != str(i):
            wrong += 1
        history = client.get_metric_history(run_id, KEY)
        stored += len(history)
        expected = {e: value(i, e) for e in range(epochs)}
        steps = [m.step for m in history]
        duplicated += len(steps) - len(set(steps))
        missing += len(expected.keys() - set(steps))
        wrong += sum(1 for m in history if expected.get(m.step) != m.value)
    missing += (n - len(trials)) * epochs  # trials whose run id never came back
    return stored, missing, duplicated, wrong, statuses


def run_study(
    label: str,
    client: MlflowClient,
    uri: str,
    experiment_id: str,
    n: int,
    epochs: int,
    period: float,
    outage: Outage | None,
) -> tuple[Result, Sampler]:
    """Run the study once (with ``outage`` started alongside, if given), read it back, and sum it up."""
    TALLY.reset()
    caught = _Warnings()
    plugin_logger = logging.getLogger("flyteplugins.mlflow")
    plugin_logger.addHandler(caught)
    go = local(
        mlflow_config(tracking_uri=uri, experiment_id=experiment_id, async_logging=True),
        study,
        n=n,
        epochs=epochs,
        period=period,
    )
    error: str | None = None
    ids: list[str] = []
    started = time.perf_counter()
    wall = 0.0
    try:
        with Sampler(started) as sampler:
            if outage is not None:
                outage.begin()
            try:
                ids = go()
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
            wall = time.perf_counter() - started
            if outage is not None:
                outage.end()
    finally:
        plugin_logger.removeHandler(caught)
    if outage is not None and outage.error is not None:
        error = f"{error + '; ' if error else ''}outage: {outage.error}"
    stored = missing = duplicated = wrong = 0
    statuses: list[str] = []
    if ids:
        stored, missing, duplicated, wrong, statuses = check(client, ids, n, epochs)
    else:
        missing = n * epochs
    durations = sorted(TALLY.durations)
    spilled, spilled_bytes = sampler.spilled
    return Result(
        label=label,
        wall=wall,
        error=error,
        logged=len(durations),
        expected=n * epochs,
        stored=stored,
        missing=missing,
        duplicated=duplicated,
        wrong=wrong,
        finished=statuses.count("FINISHED"),
        runs=n + 1,
        statuses=tuple(statuses),
        slowest=durations[-1] if durations else 0.0,
        p99=statistics.quantiles(durations, n=100)[98] if len(durations) > 1 else 0.0,
        last_log=TALLY.last - started if TALLY.last else 0.0,
        high_water=sampler.high_water,
        peak_held=sampler.peak_held(),
        spilled=spilled,
        spilled_bytes=spilled_bytes,
        peak_rss=sampler.peak_rss,
        warnings=tuple(caught.messages),
    ), sampler


def main() -> int:
    """Run the study with no outage and with a restart in its middle; print both; non-zero on a loss."""
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # MlflowClient's "View run at" lines
    parser = argparse.ArgumentParser(description="a tracking server restart in the middle of a queued study")
    parser.add_argument(
        "--tracking-uri", help="ignored: this scenario stops its server, so it starts its own"
    )
    parser.add_argument("--db", type=Path, help="ignored, as --tracking-uri")
    parser.add_argument("--pgid", type=int, help="ignored, as --tracking-uri")
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--period", type=float, default=PERIOD, help="seconds per epoch")
    parser.add_argument("--outage-after", type=float, default=OUTAGE_AFTER)
    parser.add_argument("--down-for", type=float, default=DOWN_FOR)
    args = parser.parse_args()
    n, epochs, period = args.trials, args.epochs, args.period
    flyte.init()
    print(
        "starting an mlflow server of its own (SQLite, temporary directory; it will be restarted) ...",
        flush=True,
    )
    with own_server() as server:
        client = MlflowClient(server.uri)
        experiment_id = client.create_experiment(unique("outage"))
        local(
            mlflow_config(tracking_uri=server.uri, experiment_id=experiment_id, async_logging=True),
            study,
            n=n,
            epochs=5,
            period=period,
        )()  # warm-up, not timed
        base, _ = run_study("no outage", client, server.uri, experiment_id, n, epochs, period, None)
        outage = Outage(server, args.outage_after, args.down_for)
        hit, hit_sampler = run_study("outage", client, server.uri, experiment_id, n, epochs, period, outage)
    return report(n, epochs, period, base, hit, outage, hit_sampler)


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def _at(t: float | None) -> str:
    return "-" if t is None else f"{t:.1f}s"


def report(
    n: int, epochs: int, period: float, base: Result, hit: Result, outage: Outage, sampler: Sampler
) -> int:
    """Print the figures side by side and the verdict; return the exit code."""
    print()
    print(
        f"(g) a restart of the tracking server in the middle of a queued study: {n} nested trials under "
        f"asyncio.gather, one mlflow.log_metric every {period:g}s for {epochs} epochs each"
    )
    print(
        f"    async_logging=True, outage_timeout {DEFAULT_OUTAGE_TIMEOUT:g}s (default), queue interval "
        f"{interval():g}s, memory bound {LIMIT:,} values; the server: gunicorn, 2 workers, SQLite"
    )
    port = "free" if outage.port_free else "STILL LISTENING" if outage.port_free is False else "-"
    print(
        f"    outage: SIGTERM at {_at(outage.stop_sent)}, port closed at {_at(outage.closed)}, "
        f"exited at {_at(outage.stopped)} (port {port} then), "
        f"started again at {_at(outage.start_sent)} on the same port and SQLite file, /health at "
        f"{_at(outage.healthy)}: unreachable for {_at(outage.unreachable)}; trials logged their last "
        f"point at {_at(hit.last_log)}, the study returned at {_at(hit.wall)}"
    )
    drained = None
    if outage.healthy is not None:
        back = sampler.back_to(base.peak_held, outage.healthy)
        drained = None if back is None else back - outage.healthy
    rows = [
        ("study wall time", f"{base.wall:.2f}s", f"{hit.wall:.2f}s ({hit.wall - base.wall:+.2f}s)"),
        (
            "points logged (log_metric calls)",
            f"{base.logged}/{base.expected}",
            f"{hit.logged}/{hit.expected}",
        ),
        ("points stored (read back)", f"{base.stored}/{base.expected}", f"{hit.stored}/{hit.expected}"),
        (
            "missing / stored twice / wrong",
            f"{base.missing} / {base.duplicated} / {base.wrong}",
            f"{hit.missing} / {hit.duplicated} / {hit.wrong}",
        ),
        ("runs FINISHED", f"{base.finished}/{base.runs}", f"{hit.finished}/{hit.runs}"),
        ("slowest log_metric call", f"{base.slowest * 1e3:.1f} ms", f"{hit.slowest * 1e3:.1f} ms"),
        ("99th percentile log_metric call", f"{base.p99 * 1e3:.2f} ms", f"{hit.p99 * 1e3:.2f} ms"),
        ("queue high water (values in memory)", f"{base.high_water:,}", f"{hit.high_water:,}"),
        (
            "queue spilled to disk",
            f"{base.spilled:,} ({base.spilled_bytes:,} B)",
            f"{hit.spilled:,} ({hit.spilled_bytes:,} B)",
        ),
        ("peak RSS of the process", _mb(base.peak_rss), _mb(hit.peak_rss)),
        (
            "backlog back to the no-outage peak",
            "-",
            "never" if drained is None else f"{drained:.1f}s after /health",
        ),
        ("plugin warnings and errors", str(len(base.warnings)), str(len(hit.warnings))),
    ]
    width = max(len(r[0]) for r in rows)
    middle = max(len(r[1]) for r in [*rows, ("", "no outage", "")])
    print(f"  {'':<{width}}  {'no outage':>{middle}}  restart")
    for name, left, right in rows:
        print(f"  {name:<{width}}  {left:>{middle}}  {right}")
    for result in (base, hit):
        if result.error:
            print(f"  {result.label}: FAILED: {result.error}")
        if result.finished != result.runs:
            print(f"  {result.label}: run statuses (root first): {', '.join(result.statuses) or 'none read'}")
        for message in result.warnings[:5]:
            print(f"  {result.label}: {message[:300]}")
        if len(result.warnings) > 5:
            print(f"  {result.label}: ... {len(result.warnings) - 5} more")
    happened = outage.closed is not None and outage.healthy is not None
    if happened and outage.healthy is not None and outage.healthy >= hit.last_log:
        print(
            "  note: the server answered again only after the trials' last point, so the outage covered "
            "the study's end (the tasks' final drain), not only its middle"
        )
    ok = base.ok and hit.ok and happened
    print(
        f"  every point stored exactly once, every run FINISHED, the server stopped and back: "
        f"{'holds' if ok else 'MISSED'}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
