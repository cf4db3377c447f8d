"""Remote runs: a child task in a process of its own, started in the Flyte task context its parent sends.

On a cluster, a parent task submits a child by writing the child's inputs, which carry the parent's
``custom_context``, and the child runs in another container from Flyte's ``a0`` entry point. Here
the parent is a real tracked task in the test process. It builds the child's inputs with Flyte's own
``convert_from_native_to_inputs``, inside the plugin's scope, exactly as the remote controller does,
writes them to a file, and runs the child through Flyte's ``load_and_run_task`` in a subprocess
(``tests/helpers/remote_child.py``). While the child's process runs, the parent only waits, so every
request the tracking server sees in that window comes from the child's process.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import flyte
import pytest
from flyte._internal.runtime.convert import convert_from_native_to_inputs, convert_outputs_to_native
from flyte._internal.runtime.entrypoints import load_task
from flyte._internal.runtime.io import error_path, load_outputs, outputs_path
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import get_mlflow_run, mlflow_config, mlflow_run
from tests.helpers.support import CREATE, GET_RUN, LOG_METRIC, UPDATE

env = flyte.TaskEnvironment(name="remote-tests")

ROOT = Path(__file__).resolve().parents[1]
RESOLVER = "flyte._internal.resolvers.default.DefaultTaskResolver"
CHILD_MODULE = "tests.helpers.remote_child"
CHILD_ENTRY = "import sys; from tests.helpers import remote_child; sys.exit(remote_child.main(sys.argv[1:]))"


class RequestLog(Protocol):
    """The parts of the session's ``MlflowServer`` the parent task uses."""

    uri: str

    def mark(self) -> int: ...

    def requests(self, since: int) -> list[tuple[str, str]]: ...


_server: list[RequestLog] = []


@pytest.fixture
def server(mlflow_server: RequestLog) -> Iterator[RequestLog]:
    """Make the session server reachable from the parent task, which runs in this process."""
    _server.append(mlflow_server)
    try:
        yield mlflow_server
    finally:
        _server.clear()


def _child_env() -> dict[str, str]:
    """The child's environment: nothing MLflow-specific, as in a fresh container; only the context says."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    child_env.pop("RANK", None)
    child_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), child_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return child_env


@env.task
async def context_probe() -> dict[str, str]:
    """Return the custom_context this task received from its caller."""
    return dict(flyte.ctx().custom_context or {})


@mlflow_run
@env.task
async def parent(child_name: str, value: float, workdir: str) -> str:
    """Run ``child_name`` as a remote child would run, and report what happened around it (as JSON)."""
    log = _server[0]
    run = get_mlflow_run()
    assert run is not None
    parent_id = str(run.info.run_id)
    client = MlflowClient(log.uri)

    child = load_task(RESOLVER, "mod", CHILD_MODULE, "instance", child_name)
    inputs = await convert_from_native_to_inputs(child.native_interface, value=value)
    sent = dict(inputs.context)
    received_locally = await context_probe()

    base = Path(workdir)
    inputs_file = base / "inputs.pb"
    inputs_file.write_bytes(inputs.proto_inputs.SerializeToString(deterministic=True))
    out_dir = base / "outputs"
    out_dir.mkdir()
    action = f"a{uuid.uuid4().hex[:8]}"
    run_name = f"remote-{uuid.uuid4().hex[:8]}"

    mark = await asyncio.to_thread(log.mark)
    with (base / "child.log").open("wb") as child_log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD_ENTRY,
            child_name,
            str(inputs_file),
            str(out_dir),
            run_name,
            action,
            cwd=workdir,
            env=_child_env(),
            stdout=child_log,
            stderr=child_log,
        )
        exit_code = await process.wait()
    requests = await asyncio.to_thread(log.requests, mark)

    status_after_child = client.get_run(parent_id).info.status
    child_output: str | None = None
    if Path(outputs_path(str(out_dir))).exists():
        outputs = await load_outputs(outputs_path(str(out_dir)))
        native: Any = await convert_outputs_to_native(child.native_interface, outputs)
        child_output = str(native)
    report = {
        "parent_id": parent_id,
        "parent_experiment": str(run.info.experiment_id),
        "sent": sent,
        "received_locally": received_locally,
        "exit_code": exit_code,
        "child_output": child_output,
        "child_error": Path(error_path(str(out_dir))).exists(),
        "child_log": (base / "child.log").read_text(errors="replace")[-4000:],
        "requests": requests,
        "status_after_child": status_after_child,
        "flyte_run_name": run_name,
        "flyte_action": action,
    }
    return json.dumps(report)


def _run_parent(
    child_name: str, tmp_path: Path, tracking_uri: str, experiment_id: str, value: float, **settings: Any
) -> dict[str, Any]:
    workdir = tmp_path / child_name
    workdir.mkdir()
    ctx = mlflow_config(
        tracking_uri=tracking_uri, experiment_id=experiment_id, tags={"origin": "remote-test"}, **settings
    )
    report = (
        flyte.with_runcontext(mode="local", custom_context=ctx)
        .run(parent, child_name=child_name, value=value, workdir=str(workdir))
        .outputs()[0]
    )
    result: dict[str, Any] = json.loads(report)
    result["requests"] = [tuple(r) for r in result["requests"]]
    assert result["exit_code"] == 0, result["child_log"]
    assert result["child_error"] is False, result["child_log"]
    assert isinstance(result["child_output"], str), result["child_log"]
    return result


def test_child_receives_the_parents_context(
    server: RequestLog, tmp_path: Path, experiment: tuple[str, str]
) -> None:
    """The inputs a remote child gets carry the same context a local child gets: settings and parent run."""
    result = _run_parent("quiet_auto_child", tmp_path, server.uri, experiment[1], 1.0)
    sent = result["sent"]
    assert sent == result["received_locally"]
    assert sent["mlflow_parent_run_id"] == result["parent_id"]
    assert sent["mlflow_parent_experiment_id"] == experiment[1]
    assert sent["mlflow_tracking_uri"] == server.uri
    assert json.loads(sent["mlflow_tags"]) == {"origin": "remote-test"}


def test_auto_child_shares_the_run_and_never_ends_it(
    server: RequestLog, tmp_path: Path, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """An auto child in its own process logs into the parent's run, which is still RUNNING after it exits."""
    result = _run_parent("auto_child", tmp_path, server.uri, experiment[1], 0.25)
    parent_id = result["parent_id"]
    assert result["child_output"] == parent_id
    assert result["status_after_child"] == "RUNNING", result["requests"]
    assert not any(path.endswith("/runs/update") for _, path in result["requests"])
    parent_run = client.get_run(parent_id)
    assert parent_run.data.metrics == {"remote_auto": 0.25}
    assert parent_run.info.status == "FINISHED"
    assert [r.info.run_id for r in client.search_runs([experiment[1]])] == [parent_id]


def test_auto_child_costs_one_request(
    server: RequestLog, tmp_path: Path, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Sharing the parent's run from another process costs the child one request (it fetches the run),
    before the body's own logging and nothing after it."""
    quiet = _run_parent("quiet_auto_child", tmp_path, server.uri, experiment[1], 1.0)
    assert quiet["child_output"] == quiet["parent_id"]
    assert quiet["requests"] == [GET_RUN]
    assert quiet["status_after_child"] == "RUNNING"

    logging = _run_parent("auto_child", tmp_path, server.uri, experiment[1], 2.0)
    assert logging["requests"] == [GET_RUN, LOG_METRIC]


def test_nested_child_runs_under_the_parent(
    server: RequestLog, tmp_path: Path, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A nested child in its own process creates a finished run whose parentRunId is the parent's run."""
    result = _run_parent("nested_child", tmp_path, server.uri, experiment[1], 0.5)
    parent_id, child_id = result["parent_id"], result["child_output"]
    assert child_id != parent_id
    child_run = client.get_run(child_id)
    assert child_run.data.tags["mlflow.parentRunId"] == parent_id
    assert child_run.data.tags["origin"] == "remote-test"
    assert child_run.data.tags["flyte.action_name"] == result["flyte_action"]
    assert child_run.data.tags["flyte.run_name"] == result["flyte_run_name"]
    assert child_run.info.experiment_id == experiment[1]
    assert child_run.data.metrics == {"remote_nested": 0.5}
    assert child_run.info.status == "FINISHED"
    assert result["status_after_child"] == "RUNNING"
    # The child creates its run (tags included), logs, and ends the run itself, in its process:
    assert result["requests"] == [CREATE, LOG_METRIC, UPDATE]
    assert client.get_run(parent_id).data.metrics == {}
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_new_child_runs_on_its_own(
    server: RequestLog, tmp_path: Path, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A new child in its own process creates a finished top-level run with no parentRunId."""
    result = _run_parent("new_child", tmp_path, server.uri, experiment[1], 0.75)
    parent_id, child_id = result["parent_id"], result["child_output"]
    assert child_id != parent_id
    child_run = client.get_run(child_id)
    assert "mlflow.parentRunId" not in child_run.data.tags
    assert child_run.data.metrics == {"remote_new": 0.75}
    assert result["requests"] == [CREATE, LOG_METRIC, UPDATE]
    assert child_run.info.status == "FINISHED"
    assert child_run.info.experiment_id == experiment[1]
    assert result["status_after_child"] == "RUNNING"
    assert client.get_run(parent_id).info.status == "FINISHED"
