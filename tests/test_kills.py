"""Kills, retries and restarts, the way a pod lives them: Flyte's task runner in a subprocess.

Each attempt of an action is a process of its own, started the way the backend starts one
(``tests.helpers.remote_child.main``: the task loaded by name, its inputs file, the same run and
action names for every attempt, ``FLYTE_ATTEMPT_NUMBER`` counting from 0, and checkpoint paths). The
test kills it with SIGKILL mid-body, as the OOM killer or a lost node would, then starts the next
attempt, and reads what the real tracking server holds afterwards. The server's access log counts
the requests.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import flyte
import pytest
from flyte._internal.runtime.convert import convert_from_native_to_inputs
from flyte._internal.runtime.entrypoints import load_task
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import mlflow_config, mlflow_run
from flyteplugins.mlflow._runs.sigterm import KILL_DEADLINE
from tests.helpers.pods import REMOTE_CHILD, RESOLVER, Action, make_inputs, reaped, wait_blocked
from tests.helpers.support import (
    CREATE,
    GET_RUN,
    LOG_BATCH,
    LOG_METRIC,
    SEARCH,
    UPDATE,
    MlflowServer,
    free_port,
    own_run_id,
)

env = flyte.TaskEnvironment(name="kills-tests")


def finish(proc: subprocess.Popen[bytes]) -> None:
    """Wait for an attempt that should succeed."""
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]


def plugin_requests(seen: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The requests the plugin made itself: everything but the body's ``log_metric`` calls."""
    return [r for r in seen if r != LOG_METRIC]


@pytest.fixture
def context(mlflow_server: MlflowServer, experiment: tuple[str, str]) -> dict[str, str]:
    """The workflow's settings, as the backend hands them to a top-level action."""
    return dict(mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1]))


RETRIES = {
    "resume-after-flyte-retry": ("resumed_training", 1, {}),
    "new-after-flyte-retry": ("replaced_training", 1, {}),
    "resume-after-elastic-restart": ("resumed_training", 0, {"TORCHELASTIC_RESTART_COUNT": "1"}),
}


@pytest.mark.parametrize("case", list(RETRIES))
def test_sigkill_mid_body_then_a_retry(
    case: str,
    tmp_path: Path,
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
    context: dict[str, str],
) -> None:
    """After SIGKILL mid-body, the next attempt finds the killed attempt's run: ``resume`` reopens it and
    the metric history carries on from the checkpoint; ``new`` marks it KILLED and links the two runs.
    An elastic restart (``TORCHELASTIC_RESTART_COUNT``) is handled as a retry."""
    task_name, next_attempt, next_env = RETRIES[case]
    action = Action(tmp_path, task_name, make_inputs(task_name, context, steps=6, block_at=3))

    mark = mlflow_server.mark()
    first = action.start(0)
    killed_id = wait_blocked(first, tmp_path)
    first_requests = plugin_requests(mlflow_server.requests(mark))
    assert client.get_run(killed_id).info.status == "RUNNING"
    first.kill()
    assert first.wait(timeout=30) == -signal.SIGKILL
    assert first_requests == [CREATE], "a first attempt makes no look-up"

    mark = mlflow_server.mark()
    finish(action.start(next_attempt, next_env))
    retry_requests = plugin_requests(mlflow_server.requests(mark))

    runs = {r.info.run_id: r for r in client.search_runs([experiment[1]])}
    label = "0.1" if next_env else "1"
    if task_name == "resumed_training":
        assert list(runs) == [killed_id]
        run = runs[killed_id]
        assert run.info.status == "FINISHED"
        assert run.data.tags["flyte.attempts"] == f"0,{label}"
        history = client.get_metric_history(killed_id, "loss")
        assert sorted(m.step for m in history) == list(range(6)), "one history, continued after the kill"
        assert retry_requests == [SEARCH, UPDATE, LOG_BATCH, GET_RUN, UPDATE, SEARCH]
    else:
        assert len(runs) == 2
        old = runs[killed_id]
        (new,) = (r for r in runs.values() if r.info.run_id != killed_id)
        assert old.info.status == "KILLED" and old.info.end_time is not None
        assert new.info.status == "FINISHED"
        assert new.data.tags["flyte.replaces"] == killed_id
        assert old.data.tags["flyte.replaced_by"] == new.info.run_id
        assert (old.data.tags["flyte.attempts"], new.data.tags["flyte.attempts"]) == ("0", label)
        assert sorted(m.step for m in client.get_metric_history(killed_id, "loss")) == [0, 1, 2]
        assert sorted(m.step for m in client.get_metric_history(new.info.run_id, "loss")) == [3, 4, 5]
        assert retry_requests == [SEARCH, CREATE, UPDATE, LOG_BATCH, UPDATE, SEARCH]
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


def test_a_retry_that_finds_no_earlier_run_creates_one(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
    context: dict[str, str],
) -> None:
    """Attempt 1 of an action whose attempt 0 left no run searches once, then creates its run."""
    action = Action(
        tmp_path, "resumed_training", make_inputs("resumed_training", context, steps=2, block_at=0)
    )
    mark = mlflow_server.mark()
    finish(action.start(1))
    assert plugin_requests(mlflow_server.requests(mark)) == [SEARCH, CREATE, UPDATE, SEARCH]
    (run,) = client.search_runs([experiment[1]])
    assert run.info.status == "FINISHED"
    assert run.data.tags["flyte.attempts"] == "1"
    assert run.data.tags["flyte.action_id"] == f"tests/development/{action.run_name}/{action.action}"


# --- the sweep: a child killed without a retry under a parent that survives -------------------

_server: list[MlflowServer] = []


@pytest.fixture
def server(mlflow_server: MlflowServer) -> Iterator[MlflowServer]:
    """Make the session server reachable from the parent task, which runs in this process."""
    _server.append(mlflow_server)
    try:
        yield mlflow_server
    finally:
        _server.clear()


@mlflow_run
@env.task
async def outlives_its_child(workdir: str) -> str:
    """Start a nested child in a pod of its own, SIGKILL it mid-body, and return what happened (JSON)."""
    child = load_task(RESOLVER, "mod", REMOTE_CHILD, "instance", "blocking_nested_child")
    inputs = await convert_from_native_to_inputs(child.native_interface, value=0.5)
    action = Action(
        Path(workdir), "blocking_nested_child", inputs.proto_inputs.SerializeToString(deterministic=True)
    )
    proc = await asyncio.to_thread(action.start, 0)
    child_id = await asyncio.to_thread(wait_blocked, proc, Path(workdir))
    proc.kill()
    code = await asyncio.to_thread(proc.wait, 30)
    status = MlflowClient(_server[0].uri).get_run(child_id).info.status
    mark = await asyncio.to_thread(_server[0].mark)
    return json.dumps(
        {"parent": own_run_id(), "child": child_id, "code": code, "status": status, "mark": mark}
    )


def test_a_child_killed_without_a_retry_is_swept_by_the_root(
    server: MlflowServer, tmp_path: Path, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A nested child whose pod is SIGKILLed leaves its run RUNNING; when the root ends, the root's one
    sweep request finds it and marks it KILLED, and the root itself ends FINISHED."""
    ctx = mlflow_config(tracking_uri=server.uri, experiment_id=experiment[1])
    report = json.loads(
        flyte.with_runcontext(mode="local", custom_context=ctx)
        .run(outlives_its_child, workdir=str(tmp_path))
        .outputs()[0]
    )
    assert report["code"] == -signal.SIGKILL
    assert report["status"] == "RUNNING", "nobody could end the killed child's run"
    after = server.requests(report["mark"])
    assert after == [UPDATE, SEARCH, UPDATE], "the root's FINISHED; one search; the orphan's KILLED"
    child = client.get_run(report["child"])
    assert child.info.status == "KILLED" and child.info.end_time is not None
    assert child.data.tags["mlflow.parentRunId"] == report["parent"]
    assert client.get_run(report["parent"]).info.status == "FINISHED"
    assert {r.info.status for r in client.search_runs([experiment[1]])} == {"FINISHED", "KILLED"}


# --- SIGTERM to a process blocked in native code ----------------------------------------------

PLAIN_CHILD = "tests.helpers.plain_child"  # the same blocking task in a module without the plugin

# module, task, extra environment, whether the process owns a run, its SIGTERM disposition is the default
SIGTERM_CASES = {
    "tracked-main-thread-in-gloo": (REMOTE_CHILD, "blocks_in_gloo", {}, True, False),
    "tracked-sync-task-in-gloo": (REMOTE_CHILD, "blocks_in_gloo_sync", {}, True, False),
    "rank-1-in-gloo": (REMOTE_CHILD, "blocks_in_gloo", {"RANK": "1"}, False, True),
    "untracked-task-in-gloo": (REMOTE_CHILD, "untracked_blocks_in_gloo", {}, False, False),
    "without-the-plugin": (PLAIN_CHILD, "blocks_in_gloo", {}, False, True),
}


@pytest.mark.parametrize("case", list(SIGTERM_CASES))
def test_sigterm_to_a_process_blocked_in_native_code(
    case: str, tmp_path: Path, client: MlflowClient, context: dict[str, str]
) -> None:
    """A pod's process waiting in gloo's rendezvous (native code, the thread never back in Python)
    dies of SIGTERM within the final-status budget. A tracked one first marks its run KILLED. Rank 1
    has the default disposition, as a process without the plugin has; an untracked task in a module
    that tracks others has the plugin's handler, which lets it die at once all the same. Wherever the
    plugin's handler is, its watcher thread runs beside it: in the sync task's process the main thread
    sits in the event loop, where the Python handler alone would do, but a main thread blocked in
    native code (the first case) needs the watcher. No process outlives the test."""
    module, task_name, extra_env, tracked, default_disposition = SIGTERM_CASES[case]
    rank = int(extra_env.get("RANK", "0"))
    inputs = make_inputs(task_name, context, module=module, port=free_port(), rank=rank)
    with reaped(Action(tmp_path, task_name, inputs, module=module).start(0, extra_env)) as proc:
        state = json.loads(wait_blocked(proc, tmp_path))
        time.sleep(1.0)  # well inside the native wait by now
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=KILL_DEADLINE + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still alive {KILL_DEADLINE + 5}s after SIGTERM")
    took = time.monotonic() - sent
    print(f"{case}: exited {took:.3f}s after SIGTERM")
    assert code == -signal.SIGTERM
    assert took <= KILL_DEADLINE + 1.0
    assert state["default_sigterm"] is default_disposition
    assert state["watcher"] is not default_disposition, "the watcher runs where the handler is, only there"
    if tracked:
        run = client.get_run(state["run"])
        assert run.info.status == "KILLED" and run.info.end_time is not None
    else:
        assert state["run"] == "-"


def test_sigterm_stores_the_queued_logging_before_killed(
    tmp_path: Path, mlflow_server: MlflowServer, client: MlflowClient, context: dict[str, str]
) -> None:
    """A task with ``async_logging=True`` that has 500 metrics still queued (the queue's interval is set
    far beyond the test) when SIGTERM comes: within the budget they are all stored, then the run is KILLED,
    and the process dies of SIGTERM."""
    task_name = "queues_then_blocks_in_gloo"
    inputs = make_inputs(task_name, context, port=free_port(), rank=0)
    attempt = Action(tmp_path, task_name, inputs).start(0, {"MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": "600"})
    with reaped(attempt) as proc:
        state = json.loads(wait_blocked(proc, tmp_path))
        mark = mlflow_server.mark()
        time.sleep(1.0)
        assert mlflow_server.requests(mark) == []  # nothing sent while blocked: the metrics are still queued
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=KILL_DEADLINE + 5)
    assert code == -signal.SIGTERM
    assert time.monotonic() - sent <= KILL_DEADLINE + 1.0
    assert mlflow_server.requests(mark) == [LOG_BATCH, GET_RUN, UPDATE]
    run = client.get_run(state["run"])
    assert run.info.status == "KILLED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "queued")) == list(range(500))
