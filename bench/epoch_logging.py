"""Scenario (f): per-epoch logging in parallel trials, untracked vs synchronous vs ``async_logging=True``.

The study of issue 11 (see :mod:`bench.epoch_study`): nested trials under ``asyncio.gather``, each
running epochs of ``await asyncio.sleep(0.05)`` and one ``mlflow.log_metrics`` call of 3 metrics per
epoch. Three shapes: 16 trials x 20 epochs (the documented search), 32 trials x 20 epochs, and 16
trials x 100 epochs. For each shape these run in turn, once to warm up (through the counting proxy)
and then several times, and the medians are printed side by side:

* the untracked study (the same trials, no MLflow calls);
* the floor: the same trials tracked by hand with the fewest requests from a bare HTTP client, which
  is what the server costs whoever tracks;
* the plugin with synchronous logging and with ``async_logging=True``;
* for 16 x 20 only, main's code from before issue 11, synchronous and queued, in a process of its
  own, and the plugin's synchronous variant once more after it (target 2: synchronous logging no
  slower than then; the plugin's runs before and after main's are pooled, so drift weighs on both).
* for 16 x 20 only, the floor again on a second server set up as the issue's figures were taken
  (MLflow's default uvicorn server with one worker).

After every tracked repetition each trial's metric history is read back and checked: every point
is there (3 keys x epochs), with the values that trial logged (a value encodes its trial and epoch,
so a point that went into another trial's run is caught), under the trial's own run, nested under
the study's run. The requests each variant sends are counted in its warm-up run, through a loopback
proxy in front of the server; the timed runs go to the server directly, since the proxy is a thread
of the benchmark's own process and would charge its CPU to the study.

Run: ``python -m bench.epoch_logging`` (or ``make bench`` for every scenario).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Final

import attrs
import flyte
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from bench._support import Proxy, scenario_server, start_server, unique
from bench.epoch_study import EPOCH, KEYS, floor_study, local, plain_study, study, value
from flyteplugins.mlflow import mlflow_config
from flyteplugins.mlflow._buffer.queue import LIMIT, RunQueue

SHAPES: Final = ((16, 20, 5), (32, 20, 5), (16, 100, 3))  # trials, epochs, repetitions
TARGET = 1.3
ROOT: Final = Path(__file__).resolve().parent.parent
BASELINE: Final = "896205d"
"""Main before issue 11: the last commit before the plugin's queue, when the issue's figures were taken."""
BEFORE_REDESIGN: Final = "330862d"
"""Main before issue 27 (the rooms): the same requests are expected of the redesign, at the same speed."""


@attrs.frozen
class Row:
    """One variant of one shape: its wall times, requests per run, and what the checks found."""

    label: str
    walls: tuple[float, ...]
    requests: Counter[str]
    points: int
    expected: int
    misrouted: int
    unfinished: int

    @property
    def wall(self) -> float:
        """The median wall time."""
        return statistics.median(self.walls)

    @property
    def spread(self) -> tuple[float, float]:
        """The shortest and longest wall time."""
        return min(self.walls), max(self.walls)


def check(client: MlflowClient, ids: list[str], epochs: int) -> tuple[int, int, int]:
    """Read every trial's history back: the points found, the points in a wrong run, the runs not FINISHED."""
    parent, trials = ids[0], ids[1:]
    found = misrouted = unfinished = 0
    for i, run_id in enumerate(trials):
        run = client.get_run(run_id)
        if run.info.status != "FINISHED":
            unfinished += 1
        if run.data.tags.get("mlflow.parentRunId") != parent or run.data.tags.get("bench.trial") != str(i):
            misrouted += 1
        for k, key in enumerate(KEYS):
            history = client.get_metric_history(run_id, key)
            found += len(history)
            expected = {(e, value(i, e, k)) for e in range(epochs)}
            misrouted += sum(1 for m in history if (m.step, m.value) not in expected)
    if client.get_run(parent).info.status != "FINISHED":
        unfinished += 1
    return found, misrouted, unfinished


def measure(
    label: str,
    timed: Callable[[], list[str]],
    counted: Callable[[], list[str]],
    proxy: Proxy,
    client: MlflowClient | None,
    shape: tuple[int, int, int],
) -> Row:
    """Run the shape once through the counting proxy (also the warm-up), then time its repetitions.

    The proxy is a thread of this process: every request through it costs the study's own process
    CPU and a hop. So the requests are counted in the first run only, and the timed repetitions talk
    to the server directly. Every tracked run, counted or timed, is read back and checked.
    """
    n, epochs, repeat = shape
    mark = proxy.mark()
    ids = counted()
    requests = counted_requests(proxy, mark)
    points = misrouted = unfinished = 0
    if client is not None:
        points, misrouted, unfinished = check(client, ids, epochs)
    walls: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        ids = timed()
        walls.append(time.perf_counter() - started)
        if client is not None:
            found, wrong, open_ = check(client, ids, epochs)
            points, misrouted, unfinished = points + found, misrouted + wrong, unfinished + open_
    expected = (repeat + 1) * n * epochs * len(KEYS) if client is not None else 0
    return Row(
        label,
        tuple(walls),
        requests,
        points,
        expected,
        misrouted,
        unfinished,
    )


def counted_requests(proxy: Proxy, mark: int) -> Counter[str]:
    """The API requests through ``proxy`` since ``mark``, by endpoint (``runs/create``, ...)."""
    return Counter(
        path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] for _, path in proxy.requests(mark)
    )


def main() -> None:
    """Print every shape's variants side by side, the checks, and the target's verdict."""
    flyte.init()
    with scenario_server("per-epoch logging in parallel trials") as server, Proxy(server.uri) as proxy:
        client = MlflowClient(server.uri)
        experiment_id = client.create_experiment(unique("epoch-logging"))
        verdicts = []
        header()
        for shape in SHAPES:
            n, epochs, _ = shape
            untracked = mlflow_config()
            rows = [
                measure(
                    "untracked",
                    local(untracked, plain_study, n=n, epochs=epochs),
                    local(untracked, plain_study, n=n, epochs=epochs),
                    proxy,
                    None,
                    shape,
                ),
                measure(
                    "floor: fewest requests, bare client",
                    local(
                        untracked,
                        floor_study,
                        n=n,
                        epochs=epochs,
                        uri=server.uri,
                        experiment_id=experiment_id,
                    ),
                    local(
                        untracked, floor_study, n=n, epochs=epochs, uri=proxy.uri, experiment_id=experiment_id
                    ),
                    proxy,
                    client,
                    shape,
                ),
            ]
            variants = {}
            for label, queued in (("plugin, synchronous", False), ("plugin, async_logging=True", True)):
                direct, counting = (
                    mlflow_config(tracking_uri=uri, experiment_id=experiment_id, async_logging=queued)
                    for uri in (server.uri, proxy.uri)
                )
                variants[queued] = (
                    local(direct, study, n=n, epochs=epochs),
                    local(counting, study, n=n, epochs=epochs),
                )
                rows.append(measure(label, *variants[queued], proxy, client, shape))
            sync_variant = variants[False]
            if shape == SHAPES[0]:
                rows += baseline(server.uri, proxy, experiment_id, client, shape)
                rows += baseline(
                    server.uri, proxy, experiment_id, client, shape, BEFORE_REDESIGN, "main before issue 27"
                )
                # Synchronous again after main's code, so that drift over the minutes in between weighs
                # on both sides alike: target 2 compares main's median with that of both runs.
                rows.append(measure("plugin, synchronous, again", *sync_variant, proxy, client, shape))
            verdicts.append(report(n, epochs, rows))
            if shape == SHAPES[0]:
                issue_setup(rows[0].wall, shape)
    print(f"target in every shape: {'holds' if all(verdicts) else 'MISSED'}")
    memory()


def issue_setup(untracked: float, shape: tuple[int, int, int]) -> None:
    """The floor again, on a server set up as the issue's figures were taken: MLflow's default
    uvicorn server with one worker (``--workers 1``), in place of gunicorn's two sync workers."""
    n, epochs, _ = shape
    with start_server(("--workers", "1")) as server, Proxy(server.uri) as proxy:
        client = MlflowClient(server.uri)
        experiment_id = client.create_experiment(unique("epoch-logging-issue-setup"))
        floor = measure(
            "floor, uvicorn with one worker",
            local(
                mlflow_config(), floor_study, n=n, epochs=epochs, uri=server.uri, experiment_id=experiment_id
            ),
            local(
                mlflow_config(), floor_study, n=n, epochs=epochs, uri=proxy.uri, experiment_id=experiment_id
            ),
            proxy,
            client,
            shape,
        )
    print(
        f"  the floor on the issue's set-up (uvicorn, one worker): {floor.wall:.2f}s, "
        f"{floor.wall / untracked:.2f}x untracked ({floor.points}/{floor.expected} points stored)",
        flush=True,
    )


def baseline(
    uri: str,
    proxy: Proxy,
    experiment_id: str,
    client: MlflowClient,
    shape: tuple[int, int, int],
    revision: str = BASELINE,
    name: str = "main before issue 11",
) -> list[Row]:
    """The same study with main's code at ``revision`` (by default :data:`BASELINE`), synchronous and queued.

    The package as it was is unpacked from git into a temporary directory, and ``bench.epoch_study``
    runs in a process of its own with that directory first on ``sys.path``; its warm-up run goes
    through ``proxy``, which counts its requests, and its timed runs straight to the server. Without
    git history (a source archive) there is nothing to compare with, and the rows are left out.
    """
    n, epochs, repeat = shape
    with tempfile.TemporaryDirectory(prefix="flyteplugins-mlflow-baseline-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "flyteplugins"],
            capture_output=True,
            check=False,
        )
        if archive.returncode:
            print(f"  ({name}, {revision}, not compared: {archive.stderr.decode().strip()})")
            return []
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        rows = []
        for label, queued in ((f"{name}, sync", False), (f"{name}, async", True)):
            args = [
                "--tracking-uri", uri, "--experiment-id", experiment_id,
                "--trials", str(n), "--epochs", str(epochs), "--repeat", str(repeat),
                "--warm-up-uri", proxy.uri,
            ]  # fmt: skip
            if queued:
                args.append("--async-logging")
            code = (
                "import runpy, sys; "
                f"sys.path[:0] = [{tmp!r}, {str(ROOT)!r}]; sys.argv = ['epoch_study', *{args!r}]; "
                "import flyteplugins.mlflow as p; "
                f"assert p.__file__.startswith({tmp!r}), p.__file__; "
                "runpy.run_module('bench.epoch_study', run_name='__main__')"
            )
            mark = proxy.mark()
            done = subprocess.run(
                [sys.executable, "-c", code],
                cwd=tmp,
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "PYTHONPATH": ""},
            )
            if done.returncode:
                print(f"  ({label}: failed: {done.stderr.strip()[-500:]})")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            walls: list[float] = result["walls"]
            points = misrouted = unfinished = 0
            for ids in result["ids"]:
                found, wrong, open_ = check(client, ids, epochs)
                points, misrouted, unfinished = points + found, misrouted + wrong, unfinished + open_
            rows.append(
                Row(
                    label,
                    tuple(walls),
                    counted_requests(proxy, mark),
                    points,
                    repeat * n * epochs * len(KEYS),
                    misrouted,
                    unfinished,
                )
            )
        return rows


def memory() -> None:
    """Print what a held value costs in the plugin's queue, and so what its bound costs at most.

    The queue's sends are held back (its sender waits on an event), so everything logged stays held.
    """
    gate = threading.Event()

    def held_back(**_: object) -> None:
        gate.wait()

    queue = RunQueue(held_back, limit=10**9)
    try:
        for per_call in (1, 3):
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for i in range(30_000 // per_call):
                metrics = [Metric(key, float(i), 1_700_000_000_000 + i, i) for key in KEYS[:per_call]]
                queue.log_batch_async(f"run-{per_call}", [], [], metrics)
            per_value = (tracemalloc.get_traced_memory()[0] - before) / 30_000
            tracemalloc.stop()
            print(
                f"memory: {per_value:.0f} bytes per value held, {per_call} metric(s) per call; at the bound "
                f"({LIMIT:,} values) {per_value * LIMIT / 1e6:.0f} MB"
            )
    finally:
        gate.set()
        queue.close()


def header() -> None:
    """Print what the scenario measures."""
    print()
    print(
        f"(f) nested trials under asyncio.gather, {EPOCH}s epochs, "
        f"one log_metrics of {len(KEYS)} metrics per epoch"
    )
    print(
        "    medians of 5 runs (3 at 100 epochs) straight to the server, after a warm-up through a "
        "proxy that counts the requests; 'x': wall time against the untracked study"
    )
    print(
        "    floor: the same trials tracked by hand with the fewest requests (create and status per run, "
        "one log-batch per trial at its end, one search) from http.client: the server's share"
    )


def find(rows: list[Row], label: str) -> Row | None:
    """The row called ``label``, if it was measured."""
    return next((r for r in rows if r.label == label), None)


def report(n: int, epochs: int, rows: list[Row]) -> bool:
    """Print one shape's figures and verdicts; return whether the target holds."""
    base = rows[0].wall
    width = max(len(r.label) for r in rows)
    print(f"{n} trials x {epochs} epochs")
    print(
        f"  {'variant':<{width}} {'wall':>6} {'x':>6} {'range':>13} {'points stored':>17} {'misrouted':>9}  "
        "requests per study"
    )
    for r in rows:
        stored = f"{r.points}/{r.expected}" if r.expected else "-"
        wrong = str(r.misrouted) if r.expected else "-"
        asked = ", ".join(f"{v} {k}" for k, v in sorted(r.requests.items())) or (
            "none" if r.label == "untracked" else "not counted"
        )
        print(
            f"  {r.label:<{width}} {r.wall:>5.2f}s {r.wall / base:>5.2f}x "
            f"{r.spread[0]:>5.2f}-{r.spread[1]:.2f}s {stored:>17} {wrong:>9}  {asked}"
        )
    floor, sync, queued = rows[1], rows[2], rows[3]
    ok = queued.wall / base <= TARGET and queued.points == queued.expected and not queued.misrouted
    ok = ok and not queued.unfinished
    print(
        f"  target: async_logging=True <= {TARGET}x untracked, every point stored, none misrouted: "
        f"{'holds' if ok else 'MISSED'} ({queued.wall / base:.2f}x); the floor alone: "
        f"{floor.wall / base:.2f}x, the plugin's share above it: {queued.wall - floor.wall:+.2f}s"
    )
    old_sync, again = find(rows, "main before issue 11, sync"), find(rows, "plugin, synchronous, again")
    if old_sync is not None and again is not None:
        ours = statistics.median(sync.walls + again.walls)
        verdict = "holds" if ours <= old_sync.wall else "MISSED"
        print(
            f"  target: synchronous no slower than main before issue 11: {verdict} "
            f"(median {ours:.2f}s of the plugin's {len(sync.walls) + len(again.walls)} synchronous runs, "
            f"before and after main's, against {old_sync.wall:.2f}s)"
        )
    print(end="", flush=True)
    return ok


if __name__ == "__main__":
    main()
