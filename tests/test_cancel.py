"""Cancellation: a cancelled or interrupted call ends its run ``KILLED``, and so does SIGTERM.

The SIGTERM tests run a real subprocess: a script with a tracked task that blocks, driven by
``flyte.with_runcontext(mode="local").run``. The test waits until the run is ``RUNNING`` on the server,
sends SIGTERM, and checks how the process ended and what the server holds.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import cast

import flyte
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import mlflow_config, mlflow_run
from flyteplugins.mlflow._tags import PARENT_EXPERIMENT_KEY, PARENT_RUN_KEY
from tests.helpers.support import Relay, own_run_id

env = flyte.TaskEnvironment(name="cancellation")

_child_runs: list[str] = []


@mlflow_run(run_mode="nested")
@env.task
async def endless_child() -> str:
    _child_runs.append(own_run_id())
    await asyncio.sleep(600)
    return "never"


@mlflow_run
@env.task
async def impatient_parent() -> list[str]:
    child = asyncio.ensure_future(endless_child())
    while not _child_runs:
        await asyncio.sleep(0.05)
    child.cancel()
    try:
        await child
    except asyncio.CancelledError:
        return [own_run_id(), _child_runs[-1]]
    return []


def test_cancelled_task_ends_killed(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A child task cancelled by its parent ends KILLED; the parent goes on and ends FINISHED."""
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])
    run = flyte.with_runcontext(mode="local", custom_context=cast("dict[str, str]", ctx)).run(
        impatient_parent
    )
    parent_id, child_id = run.outputs()[0]
    assert client.get_run(child_id).info.status == "KILLED"
    assert client.get_run(child_id).data.tags["mlflow.parentRunId"] == parent_id
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_cancelled_coroutine_ends_killed(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A decorated coroutine cancelled while it runs ends its run KILLED and re-raises CancelledError."""
    seen: list[str] = []

    @mlflow_run(tracking_uri=tracking_uri, experiment_id=experiment[1])
    async def work() -> None:
        seen.append(own_run_id())
        await asyncio.sleep(600)

    async def main() -> None:
        task = asyncio.ensure_future(work())
        while not seen:
            await asyncio.sleep(0.05)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert len(seen) == 1
    run = client.get_run(seen[0])
    assert run.info.status == "KILLED"
    assert run.info.end_time is not None


def test_cancelled_while_the_run_is_created_ends_killed(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A coroutine cancelled while its run is being created waits for the run, then ends it KILLED."""
    create_arrived = threading.Event()

    def hold_creates(method: str, path: str) -> bool:
        if path.endswith("/runs/create"):
            create_arrived.set()
            time.sleep(1.0)
        return True

    proxy = Relay(tracking_uri, before=hold_creates)
    ran: list[bool] = []

    @mlflow_run(tracking_uri=proxy.uri, experiment_id=experiment[1])
    async def work() -> None:
        ran.append(True)

    async def main() -> None:
        task = asyncio.ensure_future(work())
        assert await asyncio.to_thread(create_arrived.wait, 30)
        task.cancel()
        await task

    try:
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(main())
    finally:
        proxy.close()
    assert ran == []
    runs = client.search_runs([experiment[1]])
    assert [r.info.status for r in runs] == ["KILLED"]


def test_keyboard_interrupt_ends_killed(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A KeyboardInterrupt inside a decorated sync function ends its run KILLED and propagates."""
    seen: list[str] = []

    @mlflow_run(tracking_uri=tracking_uri, experiment_id=experiment[1])
    def work() -> None:
        seen.append(own_run_id())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        work()
    assert client.get_run(seen[0]).info.status == "KILLED"


def test_ordinary_failure_is_failed_not_killed(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """For contrast, an ordinary exception ends the run FAILED."""
    seen: list[str] = []

    @mlflow_run(tracking_uri=tracking_uri, experiment_id=experiment[1])
    def work() -> None:
        seen.append(own_run_id())
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        work()
    assert client.get_run(seen[0]).info.status == "FAILED"


# --- SIGTERM, in a real subprocess -------------------------------------------------------------

_SCRIPT = """
import asyncio, json, signal, sys, time
from pathlib import Path

{before_import}

import flyte
from flyteplugins.mlflow import get_mlflow_run, mlflow_run

env = flyte.TaskEnvironment(name="sigterm-subprocess")


def _announce() -> None:
    run = get_mlflow_run()
    Path("run-id.tmp").write_text(run.info.run_id)
    Path("run-id.tmp").rename("run-id")


@mlflow_run
@env.task
async def blocks_async() -> str:
    _announce()
    await asyncio.sleep(600)
    return "never"


@mlflow_run
@env.task
def blocks_sync() -> str:
    _announce()
    time.sleep(600)
    return "never"


@mlflow_run(run_mode="nested")
@env.task
def slow_sync_child() -> str:
    _announce()
    time.sleep(600)
    return "never"


@mlflow_run
@env.task
async def abandons_its_child() -> str:
    child = asyncio.ensure_future(slow_sync_child.aio())
    while not Path("run-id").exists():
        await asyncio.sleep(0.05)
    child.cancel()
    try:
        await child
    except asyncio.CancelledError:
        pass
    return "abandoned"


if __name__ == "__main__":
    tasks = {{"async": blocks_async, "sync": blocks_sync, "abandon": abandons_its_child}}
    task = tasks[sys.argv[1]]
    flyte.init()
    flyte.with_runcontext(mode="local", custom_context=json.loads(sys.argv[2])).run(task)
"""

_CHAINED = """
def _previous(signum, frame):
    Path("previous-handler-ran").touch()
    sys.exit(3)

signal.signal(signal.SIGTERM, _previous)
"""


def _start(
    tmp_path: Path, kind: str, context: dict[str, str], before_import: str = ""
) -> subprocess.Popen[bytes]:
    script = tmp_path / "blocking_task.py"
    script.write_text(textwrap.dedent(_SCRIPT).format(before_import=before_import))
    return subprocess.Popen(
        [sys.executable, str(script), kind, json.dumps(context)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_until_running(proc: subprocess.Popen[bytes], tmp_path: Path, client: MlflowClient) -> Run:
    """Wait until the subprocess announced its run and the server shows it RUNNING."""
    deadline = time.monotonic() + 120
    marker = tmp_path / "run-id"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.fail(f"the subprocess exited early with {proc.returncode}:\n{out[-3000:]}")
        if marker.exists():
            run = client.get_run(marker.read_text())
            if run.info.status == "RUNNING":
                return run
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the subprocess never reported a RUNNING run")


def _terminate(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_sigterm_marks_the_open_run_killed(
    kind: str, tmp_path: Path, tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """SIGTERM to a process running a tracked task ends its run KILLED, and the process dies of SIGTERM."""
    ctx = dict(mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1]))
    proc = _start(tmp_path, kind, ctx)
    run = _wait_until_running(proc, tmp_path, client)
    assert _terminate(proc) == -signal.SIGTERM
    after = client.get_run(run.info.run_id)
    assert after.info.status == "KILLED"
    assert after.info.end_time is not None


def test_sigterm_chains_to_the_previous_handler(
    tmp_path: Path, tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A SIGTERM handler installed before the plugin still runs, after the run is marked KILLED."""
    ctx = dict(mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1]))
    proc = _start(tmp_path, "async", ctx, before_import=_CHAINED)
    run = _wait_until_running(proc, tmp_path, client)
    assert _terminate(proc) == 3
    assert (tmp_path / "previous-handler-ran").exists()
    assert client.get_run(run.info.run_id).info.status == "KILLED"


def test_sigterm_never_ends_a_shared_run(
    tmp_path: Path, tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A process whose task only shares its caller's run (from the context) leaves that run RUNNING."""
    shared = client.create_run(experiment[1])
    ctx = {
        **mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1]),
        PARENT_RUN_KEY: shared.info.run_id,
        PARENT_EXPERIMENT_KEY: experiment[1],
    }
    proc = _start(tmp_path, "async", ctx)
    run = _wait_until_running(proc, tmp_path, client)
    assert run.info.run_id == shared.info.run_id
    assert _terminate(proc) == -signal.SIGTERM
    assert client.get_run(shared.info.run_id).info.status == "RUNNING"
    client.set_terminated(shared.info.run_id)


def test_a_run_left_open_at_exit_ends_killed(
    tmp_path: Path, tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A sync child whose caller was cancelled keeps running in its thread; when the process exits first,
    its run still ends KILLED rather than RUNNING."""
    ctx = dict(mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1]))
    proc = _start(tmp_path, "abandon", ctx)
    try:
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    child = client.get_run((tmp_path / "run-id").read_text())
    assert child.info.status == "KILLED"
    assert child.data.tags["mlflow.parentRunId"]


_FORKS = """
import os, signal, sys, time
import flyte
from flyteplugins.mlflow import mlflow_run
from flyteplugins.mlflow._runs import sigterm as _signals

env = flyte.TaskEnvironment(name="sigterm-fork")


@mlflow_run
@env.task
async def tracked() -> None: ...


assert _signals.installed(), "decorating on the main thread installs the handler"
child = os.fork()
if child == 0:
    assert not _signals.installed()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    os._exit(7)
_, status = os.waitpid(child, 0)
assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
time.sleep(1.0)  # long enough for a watcher woken by the child's signal to have ended this process
print("parent alive")
"""


def test_a_forked_child_gets_the_signal_set_up_from_before_the_plugin(tmp_path: Path) -> None:
    """A child forked after the handler is installed has the default SIGTERM disposition again, and its
    SIGTERM never reaches the parent's watcher through the inherited wakeup pipe."""
    script = tmp_path / "forks.py"
    script.write_text(_FORKS)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "parent alive" in done.stdout
