"""Tracking-server outages: a real ``mlflow server`` stopped and started again on the same port and
SQLite file while local Flyte runs train against it, and a relay in front of it that hangs.

The server of this module is its own, so stopping it leaves the session's server alone. A restart
takes the server away for the time the test keeps it stopped plus its start-up (several seconds).
Where a bound on time is asserted, it is the feature itself (the training loop is not held up, a
server never reached still fails fast), with a wide margin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flyte
import mlflow
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import MlflowConfig, mlflow_config, mlflow_run
from flyteplugins.mlflow._buffer import journal as _journal
from flyteplugins.mlflow._buffer.queue import RunQueue
from flyteplugins.mlflow._buffer.values import Values
from flyteplugins.mlflow._runs.sigterm import KILL_DEADLINE
from flyteplugins.mlflow._tags import PARENT_EXPERIMENT_KEY, PARENT_RUN_KEY
from flyteplugins.mlflow._transport.client import client_for
from flyteplugins.mlflow._transport.policy import DEFAULT_OUTAGE_TIMEOUT, DEFAULT_POLICY
from flyteplugins.mlflow._transport.rest import RestClient
from tests.helpers.pods import Action, make_inputs, wait_blocked
from tests.helpers.support import (
    CREATE,
    REPLAY,
    MlflowServer,
    Relay,
    Silent,
    free_port,
    own_run_id,
    replay,
    replayed_twice,
    serving,
    steps,
)

env = flyte.TaskEnvironment(name="outage-tests")


class Outages:
    """The module's server, and stopping it now and starting it again later, in the background."""

    def __init__(self, server: MlflowServer) -> None:
        self.server = server
        self._restarts: list[threading.Thread] = []

    def stop_for(self, seconds: float) -> None:
        """Stop the server now; start it again on the same port and database ``seconds`` later."""
        self.server.stop()

        def restart() -> None:
            time.sleep(seconds)
            self.server.start()

        thread = threading.Thread(target=restart, daemon=True)
        thread.start()
        self._restarts.append(thread)

    def wait_up(self) -> None:
        """Wait until every restart is done and the server answers."""
        for thread in self._restarts:
            thread.join(180)
        self._restarts.clear()
        if self.server.process is None or self.server.process.poll() is not None:
            self.server.start()


_outages: list[Outages] = []


@pytest.fixture(scope="module")
def outage_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A server of this module's own, to stop and start again."""
    yield from serving(MlflowServer(tmp_path_factory.mktemp("mlflow-outage-server"), free_port()))


@pytest.fixture
def outages(outage_server: MlflowServer) -> Iterator[Outages]:
    """Restarts of the module's server for the tasks of a test (they run in this process)."""
    made = Outages(outage_server)
    _outages.append(made)
    try:
        yield made
    finally:
        _outages.clear()
        made.wait_up()


@pytest.fixture
def where(outage_server: MlflowServer) -> tuple[MlflowClient, str]:
    """A client of the module's server, and a fresh experiment on it."""
    client = MlflowClient(outage_server.uri)
    return client, client.create_experiment(f"outage-{time.time_ns()}")


def context(server: MlflowServer, experiment_id: str, **settings: Any) -> MlflowConfig:
    """The workflow's settings for the module's server."""
    return mlflow_config(tracking_uri=server.uri, experiment_id=experiment_id, **settings)


# --- a restart across the end of a sync task ----------------------------------------------------


@mlflow_run
@env.task
def trains_then_loses_the_server(n: int, down: float) -> str:
    """Log ``n`` points synchronously, then the server goes away as the task returns."""
    for i in range(n):
        mlflow.log_metric("loss", 1.0 / (i + 1), step=i)
    _outages[0].stop_for(down)
    return own_run_id()


def test_a_restart_across_the_end_of_a_sync_task_is_waited_for(
    outages: Outages, where: tuple[MlflowClient, str]
) -> None:
    """The task has trained and returned when the server goes away for a restart: its final status
    waits for the server (well past today's 11.5 s of finalize retries), the task returns its result
    and the run ends FINISHED with every point."""
    client, experiment_id = where
    started = time.monotonic()
    run = flyte.with_runcontext(mode="local", custom_context=context(outages.server, experiment_id)).run(
        trains_then_loses_the_server, n=20, down=14.0
    )
    took = time.monotonic() - started
    run_id = run.outputs()[0]
    assert took > 14.0, "the server was away for at least 14 s, and the status waited for it"
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert steps(client, run_id, "loss") == list(range(20))


# --- queued logging through a restart -----------------------------------------------------------

_timings: list[float] = []
_loop: list[float] = []


@mlflow_run(async_logging=True)
@env.task
def logs_every_50ms(points: int, stop_at: int, down: float) -> str:
    """Log one point every 50 ms; at point ``stop_at`` the server goes away for a restart. Each
    ``log_metric`` call is timed, and the loop (but for the test's own stopping of the server)."""
    _timings.clear()
    _loop.clear()
    loop = 0.0
    for i in range(points):
        if i == stop_at:
            _outages[0].stop_for(down)
        t0 = time.monotonic()
        mlflow.log_metric("loss", float(i), step=i)
        _timings.append(time.monotonic() - t0)
        time.sleep(0.05)
        loop += time.monotonic() - t0
    _loop.append(loop)
    return own_run_id()


def test_queued_logging_rides_out_a_restart_without_holding_up_the_training(
    outages: Outages, where: tuple[MlflowClient, str]
) -> None:
    """300 points, one every 50 ms, with the server away for a restart of about 10 s in the middle:
    every ``log_metric`` call returns at once (the slowest under 0.5 s, all 300 under 3 s together:
    the loop's own sleeps, which a loaded machine stretches, are not counted), and at the end all
    300 points are stored once and the run is FINISHED."""
    client, experiment_id = where
    run = flyte.with_runcontext(mode="local", custom_context=context(outages.server, experiment_id)).run(
        logs_every_50ms, points=300, stop_at=60, down=5.0
    )
    run_id = run.outputs()[0]
    (loop,) = _loop
    assert len(_timings) == 300
    print(f"slowest log_metric {max(_timings) * 1000:.1f} ms, all {sum(_timings):.2f} s; loop {loop:.1f} s")
    assert max(_timings) < 0.5, "no log_metric call waited for the server"
    assert sum(_timings) < 3.0, "the loop was not held up by the outage"
    assert steps(client, run_id, "loss") == list(range(300)), "every point, each stored once"
    assert client.get_run(run_id).info.status == "FINISHED"


@mlflow_run(async_logging=True)
@env.task
def queues_then_loses_the_server(n: int, down: float) -> str:
    """Queue ``n`` points at once (they wait for the queue's interval), then lose the server at the end."""
    for i in range(n):
        mlflow.log_metric("acc", float(i), step=i)
    _outages[0].stop_for(down)
    return own_run_id()


def test_a_restart_across_the_end_with_queued_values(
    outages: Outages, where: tuple[MlflowClient, str]
) -> None:
    """Points still queued when the task returns and the server goes away: the end waits for the
    queue to drain, then sets the status; every point is stored once, the run FINISHED."""
    client, experiment_id = where
    run = flyte.with_runcontext(mode="local", custom_context=context(outages.server, experiment_id)).run(
        queues_then_loses_the_server, n=200, down=3.0
    )
    run_id = run.outputs()[0]
    assert steps(client, run_id, "acc") == list(range(200))
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_flush_while_the_server_is_away_keeps_the_values(
    outage_server: MlflowServer, where: tuple[MlflowClient, str]
) -> None:
    """While a reached server drops every log-batch, ``flush`` (``mlflow.flush_async_logging``)
    returns with the values still queued, not lost; once it takes them again, a drain stores each
    once, in order."""
    client, experiment_id = where
    run_id = client.create_run(experiment_id).info.run_id
    away = [True]
    relay = Relay(outage_server.uri, before=lambda method, path: not (away[0] and path.endswith("log-batch")))
    try:
        server = client_for(relay.uri)
        server.get_run(run_id)  # reached: it has answered this process
        assert isinstance(server, RestClient)
        queue = RunQueue(server.log_batch)
        for i in range(50):
            queue.log_batch_async(run_id, [], [], [Metric("m", float(i), 1_700_000_000_000 + i, i)])
        queue.flush()
        assert queue.held() == 50, "kept while the server is away"
        away[0] = False
        assert queue.drain(run_id) == []
        assert queue.held() == 0
        queue.close()
    finally:
        relay.close()
    assert steps(client, run_id, "m") == list(range(50))


# --- a nested child that starts during the restart ----------------------------------------------


@mlflow_run(run_mode="nested")
@env.task
async def nested_trial(x: float) -> str:
    """A nested child that logs one param."""
    mlflow.log_param("x", x)
    return own_run_id()


@mlflow_run
@env.task
async def parent_loses_the_server_then_starts_a_child(down: float) -> str:
    """Reach the server, lose it, and start a nested child while it is away."""
    await asyncio.to_thread(_outages[0].stop_for, down)
    child = await nested_trial(0.5)
    return json.dumps({"parent": own_run_id(), "child": child})


def test_a_nested_child_started_during_a_restart_waits_and_makes_one_run(
    outages: Outages, where: tuple[MlflowClient, str]
) -> None:
    """The child's create meets refused connections and waits for the server, so the child runs; its
    run is created exactly once (the server answered two creates: the parent's and the child's)."""
    client, experiment_id = where
    mark = outages.server.mark()
    run = flyte.with_runcontext(mode="local", custom_context=context(outages.server, experiment_id)).run(
        parent_loses_the_server_then_starts_a_child, down=3.0
    )
    ids = json.loads(run.outputs()[0])
    answered = [(m, p) for m, p, code in outages.server.answers(mark) if code == 200]
    assert answered.count(CREATE) == 2
    runs = client.search_runs([experiment_id])
    assert len(runs) == 2
    child = client.get_run(ids["child"])
    assert child.data.tags["mlflow.parentRunId"] == ids["parent"]
    assert child.data.params == {"x": "0.5"}
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_child_pod_started_during_a_restart_waits_for_its_callers_server(
    tmp_path: Path, outages: Outages, where: tuple[MlflowClient, str]
) -> None:
    """A nested child in a pod of its own (Flyte's task runner in a fresh process, which has never
    had an answer from the server) starts while the server is away: its context carries the run its
    caller created there, so it waits for the server instead of failing in 1.5 s, and creates its
    run once, under the caller's."""
    client, experiment_id = where
    parent = client.create_run(experiment_id).info.run_id
    settings = {
        **dict(context(outages.server, experiment_id)),
        PARENT_RUN_KEY: parent,
        PARENT_EXPERIMENT_KEY: experiment_id,
    }
    action = Action(tmp_path, "nested_child", make_inputs("nested_child", settings, value=0.25))
    outages.stop_for(4.0)
    proc = action.start(0)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0 and not action.failed(), out.decode(errors="replace")[-3000:]
    children = [r for r in client.search_runs([experiment_id]) if r.info.run_id != parent]
    assert len(children) == 1
    (child,) = children
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.metrics == {"remote_nested": 0.25}
    assert child.info.status == "FINISHED"


# --- a server never reached ---------------------------------------------------------------------


@mlflow_run
@env.task
def never_gets_a_server() -> str:
    """Never runs: its server was never there."""
    return "trained"


def test_a_server_never_reached_that_hangs_still_fails_fast() -> None:
    """A tracking URI that takes connections and never answers, never having answered: the task
    fails within 15 s (the first-contact budget of 12 s), not after three 30 s answer timeouts."""
    silent = Silent()
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as caught:
            flyte.with_runcontext(mode="local", custom_context=mlflow_config(tracking_uri=silent.uri)).run(
                never_gets_a_server
            )
    finally:
        silent.close()
    took = time.monotonic() - started
    assert took < 15.0, f"{took:.1f}s"
    assert "ReadTimeout" in str(caught.value) and "outage_timeout" not in str(caught.value)


def test_a_server_never_reached_still_fails_fast() -> None:
    """A tracking URI that has never answered is not waited for: the task fails within 15 s (the
    policy's three attempts), with the clear error, although outage_timeout is 300 s."""
    assert DEFAULT_POLICY.outage == DEFAULT_OUTAGE_TIMEOUT == 300.0
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        flyte.with_runcontext(mode="local", custom_context=mlflow_config(tracking_uri=uri)).run(
            never_gets_a_server
        )
    took = time.monotonic() - started
    assert took < 15.0
    assert "could not be reached to" in str(caught.value) and "after 3 attempts" in str(caught.value)
    assert "outage_timeout" not in str(caught.value)


# --- past outage_timeout: the journal, and replaying it ----------------------------------------


@mlflow_run(async_logging=True, outage_timeout=2.0)
@env.task
def queues_and_the_server_stays_away(n: int) -> str:
    """Lose the server for longer than outage_timeout, then queue ``n`` points (the run was created
    before: the server was reached). Stopping it first leaves none of them sent, however long the
    stop takes (MLflow 3.4's server answers while it shuts down, and the queue sends every second)."""
    _outages[0].server.stop()
    for i in range(n):
        mlflow.log_metric("loss", float(i), step=i)
    mlflow.log_param("lr", 0.1)
    return own_run_id()


@pytest.mark.parametrize("policy", ["warn", "raise"])
def test_past_outage_timeout_a_journal_keeps_everything_and_replays_exactly_once(
    policy: str, outages: Outages, where: tuple[MlflowClient, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The server stays away past outage_timeout (2 s) at the task's end: the unsent points and the
    FINISHED status go to a journal under the task's raw-data prefix, named with the replay command by
    the warning (``warn``: the task returns its result) or the error (``raise``: after the journal
    is written). Replaying while the server is still away fails clearly and keeps the journal; once
    it is back, replaying stores every point once and ends the run FINISHED; replaying again changes
    nothing."""
    client, experiment_id = where
    settings = context(outages.server, experiment_id, on_tracking_error=policy)
    caplog.set_level(logging.WARNING, logger="flyteplugins.mlflow")
    if policy == "warn":
        run_id = (
            flyte.with_runcontext(mode="local", custom_context=settings)
            .run(queues_and_the_server_stays_away, n=150)
            .outputs()[0]
        )
        message = caplog.text
    else:
        with pytest.raises(Exception) as caught:
            flyte.with_runcontext(mode="local", custom_context=settings).run(
                queues_and_the_server_stays_away, n=150
            )
        message = str(caught.value)
        run_id = None
    found = REPLAY.search(message)
    assert found, message
    location = found.group(1)
    assert "mlflow-journal" in location and Path(location).is_file()
    lines = [json.loads(line) for line in Path(location).read_text().splitlines()]
    assert lines[-1]["status"] == "FINISHED"
    journaled = [m for line in lines if line.get("kind") == "values" for m in line["metrics"]]
    assert len(journaled) == 150
    run_id = run_id or lines[0]["run_id"]

    away = replay(location)
    assert away.returncode == 1 and "could not be reached" in away.stderr and location in away.stderr
    assert Path(location).is_file(), "a journal that could not be sent is kept"

    outages.wait_up()
    assert client.get_run(run_id).info.status == "RUNNING"
    replayed_twice(client, location, run_id, 150)


def test_a_journal_under_a_remote_prefix_goes_through_flytes_storage(
    outage_server: MlflowServer, where: tuple[MlflowClient, str]
) -> None:
    """Under a raw-data prefix in a store (fsspec's in-memory store stands in for S3 here: the same
    ``flyte.storage`` calls), the journal is uploaded there, and replay reads it back from there:
    every point once, twice over, and the status."""
    client, experiment_id = where
    run_id = client.create_run(experiment_id).info.run_id
    batches: list[Values] = [
        ([Metric("loss", float(i), 1_700_000_000_000 + i, i)], [], []) for i in range(30)
    ]
    location = _journal.write(
        outage_server.uri, run_id, batches, "FINISHED", 1_700_000_000_999, "memory://bucket/raw"
    )
    assert location == f"memory://bucket/raw/mlflow-journal/{run_id}-1700000000999.jsonl"
    for _ in range(2):
        done = _journal.replay(location)
        assert (done.points, done.requests, done.status) == (30, 2, "FINISHED")
        assert steps(client, run_id, "loss") == list(range(30))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).info.end_time == 1_700_000_000_999


def test_the_replay_command_has_help() -> None:
    """``python -m flyteplugins.mlflow --help`` and ``replay --help`` describe the command."""
    top = subprocess.run(
        [sys.executable, "-m", "flyteplugins.mlflow", "--help"], capture_output=True, text=True
    )
    assert top.returncode == 0 and "replay" in top.stdout
    sub = subprocess.run(
        [sys.executable, "-m", "flyteplugins.mlflow", "replay", "--help"], capture_output=True, text=True
    )
    assert sub.returncode == 0 and "LOCATION" in sub.stdout and "Flyte's store" in sub.stdout


# --- SIGTERM during an outage -------------------------------------------------------------------


def test_sigterm_during_an_outage_journals_what_it_could_not_send(
    tmp_path: Path, outages: Outages, where: tuple[MlflowClient, str]
) -> None:
    """A pod with 500 points still queued gets SIGTERM while its server is away: it still dies of
    SIGTERM within KILL_DEADLINE, and its log names a journal holding the 500 points and the KILLED
    status; replayed once the server is back, the run ends KILLED with all 500 points."""
    client, experiment_id = where
    settings = dict(context(outages.server, experiment_id))
    task_name = "queues_then_blocks_in_gloo"
    inputs = make_inputs(task_name, settings, port=free_port(), rank=0)
    proc = Action(tmp_path, task_name, inputs).start(0, {"MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": "600"})
    state = json.loads(wait_blocked(proc, tmp_path))
    outages.server.stop()
    sent = time.monotonic()
    proc.send_signal(15)
    out, _ = proc.communicate(timeout=KILL_DEADLINE + 5)
    took = time.monotonic() - sent
    assert proc.returncode == -15
    assert took <= KILL_DEADLINE + 1.0
    text = out.decode(errors="replace")
    found = REPLAY.search(text)
    assert found, text[-3000:]
    location = found.group(1)
    lines = [json.loads(line) for line in Path(location).read_text().splitlines()]
    assert lines[-1]["status"] == "KILLED"
    assert sum(len(line["metrics"]) for line in lines if line.get("kind") == "values") == 500
    outages.wait_up()
    done = replay(location)
    assert done.returncode == 0, done.stderr
    run = client.get_run(state["run"])
    assert run.info.status == "KILLED"
    assert steps(client, run.info.run_id, "queued") == list(range(500))


# --- a server that hangs rather than refuses ----------------------------------------------------

_hang = threading.Event()
_hung: list[Relay] = []


@mlflow_run(async_logging=True)
@env.task
def logs_through_a_hanging_server(points: int, hang_at: int) -> str:
    """Log one point every 20 ms; at ``hang_at`` the relay in front of the server stops answering."""
    _timings.clear()
    for i in range(points):
        if i == hang_at:
            _hang.set()
        t0 = time.monotonic()
        mlflow.log_metric("loss", float(i), step=i)
        _timings.append(time.monotonic() - t0)
        time.sleep(0.02)
    return own_run_id()


def test_queued_logging_through_a_server_that_hangs(
    outage_server: MlflowServer, where: tuple[MlflowClient, str]
) -> None:
    """A relay accepts the connections and answers nothing for 6 s (a hung server, not a refusing one):
    the training's log calls still return at once, and every point is stored once when it answers."""
    client, experiment_id = where
    released = threading.Event()

    def hold(method: str, path: str) -> bool:
        if _hang.is_set() and path.endswith("log-batch"):
            released.wait(30)
        return True

    relay = Relay(outage_server.uri, before=hold)

    def release_later() -> None:
        _hang.wait(60)
        time.sleep(6.0)
        released.set()

    threading.Thread(target=release_later, daemon=True).start()
    try:
        run = flyte.with_runcontext(
            mode="local", custom_context=mlflow_config(tracking_uri=relay.uri, experiment_id=experiment_id)
        ).run(logs_through_a_hanging_server, points=400, hang_at=100)
        run_id = run.outputs()[0]
    finally:
        _hang.clear()
        released.set()
        relay.close()
    assert max(_timings) < 0.5
    assert steps(client, run_id, "loss") == list(range(400))
    assert client.get_run(run_id).info.status == "FINISHED"
