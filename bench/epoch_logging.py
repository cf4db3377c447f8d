"""Scenario (f): per-epoch logging in parallel trials, untracked vs synchronous vs ``async_logging=True``.

The study of issue 11: nested trials under ``asyncio.gather``, each running ``EPOCHS`` epochs of
``await asyncio.sleep(0.05)`` (training that yields the event loop) and one ``mlflow.log_metrics``
call of 3 metrics per epoch. Three shapes: 16 trials x 20 epochs (the documented search), 32 trials x
20 epochs, and 16 trials x 100 epochs. For each shape the untracked study (the same trials, no MLflow
calls), the plugin with synchronous logging and the plugin with ``async_logging=True`` run in turn,
once to warm up (through the counting proxy) and then ``REPEAT`` times; the medians are printed side by side.

After every tracked repetition each trial's metric history is read back and checked: every point
is there (3 keys x epochs), with the values that trial logged (a value encodes its trial and epoch,
so a point that went into another trial's run is caught), under the trial's own run, nested under
the study's run. The requests each variant sends are counted in its warm-up run, through a loopback
proxy in front of the server; the timed runs go to the server directly, since the proxy is a thread
of the benchmark's own process and would charge its CPU to the study.

Run: ``python -m bench.epoch_logging`` (or ``make bench`` for every scenario).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Final

import attrs
import flyte
import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from bench._support import Proxy, scenario_server, unique
from flyteplugins.mlflow import MlflowConfig, get_mlflow_run, mlflow_config, mlflow_run
from flyteplugins.mlflow._queue import LIMIT, RunQueue

env = flyte.TaskEnvironment(name="bench-epoch-logging")

SHAPES: Final = ((16, 20, 5), (32, 20, 5), (16, 100, 3))  # trials, epochs, repetitions
KEYS: Final = ("loss", "accuracy", "lr")
EPOCH = 0.05
TARGET = 1.3


def value(trial: int, epoch: int, k: int) -> float:
    """The value trial ``trial`` logs for its ``k``-th key at ``epoch``: unique across the study."""
    return trial * 1_000_000 + epoch * 10 + k


async def train(i: int, epochs: int, log: bool) -> None:
    """The trial body: ``epochs`` epochs of sleep, and one ``log_metrics`` call per epoch if ``log``."""
    for epoch in range(epochs):
        await asyncio.sleep(EPOCH)
        if log:
            mlflow.log_metrics({key: value(i, epoch, k) for k, key in enumerate(KEYS)}, step=epoch)


@env.task
async def plain_trial(i: int, epochs: int) -> str:
    await train(i, epochs, log=False)
    return ""


@env.task
async def plain_study(n: int, epochs: int) -> list[str]:
    return list(await asyncio.gather(*(plain_trial(i, epochs) for i in range(n))))


@mlflow_run(run_mode="nested")
@env.task
async def trial(i: int, epochs: int) -> str:
    mlflow.set_tag("bench.trial", str(i))
    await train(i, epochs, log=True)
    run = get_mlflow_run()
    assert run is not None
    return str(run.info.run_id)


@mlflow_run
@env.task
async def study(n: int, epochs: int) -> list[str]:
    run = get_mlflow_run()
    assert run is not None
    ids = await asyncio.gather(*(trial(i, epochs) for i in range(n)))
    return [str(run.info.run_id), *ids]


@attrs.frozen
class Row:
    """One variant of one shape: median wall time, requests per run, and what the checks found."""

    label: str
    wall: float
    spread: tuple[float, float]
    requests: Counter[str]
    points: int
    expected: int
    misrouted: int
    unfinished: int


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
    requests: Counter[str] = Counter(
        path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] for _, path in proxy.requests(mark)
    )
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
        statistics.median(walls),
        (min(walls), max(walls)),
        requests,
        points,
        expected,
        misrouted,
        unfinished,
    )


def local(config: MlflowConfig, task: object, **inputs: object) -> Callable[[], list[str]]:
    """A callable that runs a study task once in Flyte's local mode and returns its run ids."""

    def go() -> list[str]:
        result: list[str] = (
            flyte.with_runcontext(mode="local", custom_context=config).run(task, **inputs).outputs()[0]
        )
        return result

    return go


def main() -> None:
    """Print every shape's three variants side by side, the checks, and the target's verdict."""
    flyte.init()
    with scenario_server("per-epoch logging in parallel trials") as server, Proxy(server.uri) as proxy:
        client = MlflowClient(server.uri)
        experiment_id = client.create_experiment(unique("epoch-logging"))
        verdicts = []
        header()
        for shape in SHAPES:
            n, epochs, _ = shape
            variants = (
                ("untracked", None, plain_study, None),
                ("plugin, synchronous", False, study, client),
                ("plugin, async_logging=True", True, study, client),
            )
            rows = []
            for label, queue, task, reader in variants:
                direct, counting = (
                    (mlflow_config(), mlflow_config())
                    if queue is None
                    else tuple(
                        mlflow_config(tracking_uri=uri, experiment_id=experiment_id, async_logging=queue)
                        for uri in (server.uri, proxy.uri)
                    )
                )
                timed = local(direct, task, n=n, epochs=epochs)
                counted = local(counting, task, n=n, epochs=epochs)
                rows.append(measure(label, timed, counted, proxy, reader, shape))
            verdicts.append(report(n, epochs, rows))
    print(f"target in every shape: {'holds' if all(verdicts) else 'MISSED'}")
    memory()


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


def report(n: int, epochs: int, rows: list[Row]) -> bool:
    """Print one shape's figures and verdict; return whether the target holds."""
    base = rows[0].wall
    print(f"{n} trials x {epochs} epochs")
    print(
        f"  {'variant':<28} {'wall':>6} {'x':>6} {'range':>13} {'points stored':>17} {'misrouted':>9}  "
        "requests per study"
    )
    for r in rows:
        stored = f"{r.points}/{r.expected}" if r.expected else "-"
        wrong = str(r.misrouted) if r.expected else "-"
        asked = ", ".join(f"{v} {k}" for k, v in sorted(r.requests.items())) or "none"
        print(
            f"  {r.label:<28} {r.wall:>5.2f}s {r.wall / base:>5.2f}x "
            f"{r.spread[0]:>5.2f}-{r.spread[1]:.2f}s {stored:>17} {wrong:>9}  {asked}"
        )
    queued = rows[2]
    ok = queued.wall / base <= TARGET and queued.points == queued.expected and not queued.misrouted
    ok = ok and not queued.unfinished
    print(
        f"  target: async_logging=True <= {TARGET}x untracked, every point stored, none misrouted: "
        f"{'holds' if ok else 'MISSED'} ({queued.wall / base:.2f}x)",
        flush=True,
    )
    return ok


if __name__ == "__main__":
    main()
