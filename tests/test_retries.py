"""Retried Flyte tasks: one MLflow run per attempt, tagged ``flyte.attempt``, and none left ``RUNNING``.

Flyte's local mode retries a failed task (``retries=2`` gives up to three attempts) but reports
attempt number 0 every time, so there the tag's presence is checked, not its value. Attempts are
counted in files in the test's own working directory. The tag's value is checked on attempts run as
a pod's would be (``tests/helpers/pods.py``), each a process of its own with
``FLYTE_ATTEMPT_NUMBER``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import flyte
import flyte.errors
import mlflow
import pytest
from flyte._internal.runtime.io import error_path
from flyte.extend import TaskTemplate
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import mlflow_config, mlflow_run
from tests.helpers.pods import Action, make_inputs
from tests.helpers.support import own_run_id

env = flyte.TaskEnvironment(name="attempts")

ATTEMPT_TAG = "flyte.attempt"
PARENT_TAG = "mlflow.parentRunId"


def _attempt(counter: str) -> int:
    """Count one more attempt in the file ``counter``; returns this attempt's number, from 1."""
    path = Path(counter)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


@mlflow_run
@env.task(retries=2)
async def flaky(counter: str, failures: int) -> str:
    n = _attempt(counter)
    mlflow.log_param("attempt", n)
    if n <= failures:
        raise ValueError(f"attempt {n} fails on purpose")
    return own_run_id()


@mlflow_run(run_mode="nested")
@env.task(retries=2)
async def nested_flaky(counter: str, failures: int) -> str:
    n = _attempt(counter)
    mlflow.log_param("attempt", n)
    if n <= failures:
        raise ValueError(f"attempt {n} fails on purpose")
    return own_run_id()


@mlflow_run(run_mode="nested")
@env.task(retries=2)
def nested_sync_flaky(counter: str, failures: int) -> str:
    n = _attempt(counter)
    mlflow.log_param("attempt", n)
    if n <= failures:
        raise ValueError(f"attempt {n} fails on purpose")
    return own_run_id()


@mlflow_run
@env.task
async def study(failures: int) -> list[str]:
    first = await nested_flaky("async-child", failures)
    second = await nested_sync_flaky.aio("sync-child", failures)
    return [own_run_id(), first, second]


def _run(task: TaskTemplate[Any, Any, Any], experiment_id: str, tracking_uri: str, **inputs: Any) -> Any:
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id)
    run = flyte.with_runcontext(mode="local", custom_context=cast("dict[str, str]", ctx)).run(task, **inputs)
    return run.outputs()[0]


def _by_attempt(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=lambda r: int(r.data.params["attempt"]))


def test_each_attempt_gets_its_own_run(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Two failed attempts end FAILED and the third, its own run, ends FINISHED; all are tagged."""
    last = _run(flaky, experiment[1], tracking_uri, counter="flaky", failures=2)
    runs = _by_attempt(client.search_runs([experiment[1]]))
    assert [r.data.params["attempt"] for r in runs] == ["1", "2", "3"]
    assert [r.info.status for r in runs] == ["FAILED", "FAILED", "FINISHED"]
    assert runs[-1].info.run_id == last
    assert len({r.info.run_id for r in runs}) == 3
    assert all(r.data.tags[ATTEMPT_TAG] == "0" for r in runs)  # local mode reports attempt 0


def test_exhausted_retries_leave_every_run_failed(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """When all three attempts fail, the task fails and all three runs end FAILED, none RUNNING."""
    with pytest.raises(flyte.errors.RuntimeUserError, match="attempt 3 fails on purpose"):
        _run(flaky, experiment[1], tracking_uri, counter="doomed", failures=5)
    runs = _by_attempt(client.search_runs([experiment[1]]))
    assert [r.data.params["attempt"] for r in runs] == ["1", "2", "3"]
    assert [r.info.status for r in runs] == ["FAILED", "FAILED", "FAILED"]
    assert all(ATTEMPT_TAG in r.data.tags for r in runs)


def test_nested_attempts_stay_under_the_same_parent(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Retried nested children (async and sync) all hang under the parent's run, which FINISHES."""
    parent_id, async_id, sync_id = _run(study, experiment[1], tracking_uri, failures=1)
    runs = client.search_runs([experiment[1]])
    assert len(runs) == 5
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert PARENT_TAG not in parent.data.tags
    children = [r for r in runs if r.info.run_id != parent_id]
    assert all(r.data.tags[PARENT_TAG] == parent_id for r in children)
    assert all(ATTEMPT_TAG in r.data.tags for r in runs)
    statuses = sorted((r.info.run_id in (async_id, sync_id), r.info.status) for r in children)
    assert statuses == [(False, "FAILED"), (False, "FAILED"), (True, "FINISHED"), (True, "FINISHED")]
    assert not [r for r in runs if r.info.status == "RUNNING"]


@mlflow_run(run_mode="nested")
def tracked_helper() -> str:
    return own_run_id()


@mlflow_run
@env.task
async def calls_a_tracked_helper() -> list[str]:
    return [own_run_id(), tracked_helper()]


def test_only_the_task_body_owns_the_tasks_run(
    tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """The decorated task's run carries its action (what a retry looks up); a tracked plain function
    it calls makes a nested run without it, but tagged with the root so the sweep covers it."""
    task_id, helper_id = _run(calls_a_tracked_helper, experiment[1], tracking_uri)
    task_run, helper_run = client.get_run(task_id), client.get_run(helper_id)
    action = task_run.data.tags["flyte.action_id"]
    assert action.endswith("/" + task_run.data.tags["flyte.action_name"])
    assert task_run.data.tags["flyte.attempts"] == "0"
    assert "flyte.action_id" not in helper_run.data.tags
    assert helper_run.data.tags["flyte.root_action"] == action
    assert helper_run.data.tags[PARENT_TAG] == task_id


def test_each_attempt_of_a_pod_is_tagged_with_its_number(
    tmp_path: Path, tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Attempts 0, 1 and 2 of one action, each a process of its own as the backend starts them: the two
    that fail end FAILED, the third FINISHED, each in its own run tagged with its attempt number."""
    context = dict(mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1]))
    action = Action(
        tmp_path, "fails_before_attempt", make_inputs("fails_before_attempt", context, succeeds_at=2)
    )
    failed = []
    for attempt in range(3):
        proc = action.start(attempt)
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out.decode(errors="replace")[
            -3000:
        ]  # a failed body is reported, not fatal
        failed.append(Path(error_path(str(action.outputs))).exists())
    assert failed == [True, True, False]
    runs = _by_attempt(client.search_runs([experiment[1]]))
    assert [r.data.params["attempt"] for r in runs] == ["0", "1", "2"]
    assert [r.data.tags[ATTEMPT_TAG] for r in runs] == ["0", "1", "2"]
    assert [r.data.tags["flyte.attempts"] for r in runs] == ["0", "1", "2"]
    assert [r.info.status for r in runs] == ["FAILED", "FAILED", "FINISHED"]
