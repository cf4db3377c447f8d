"""A task in another pod joins its caller's trace through the carrier Flyte copies into its context.

The caller runs locally with tracing on; the child is started as the backend starts a pod (Flyte's
task runner in a process of its own, its inputs holding the caller's context), and the trace is read
back from the real server.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import flyte
from mlflow.entities import SpanStatusCode
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import mlflow_config
from tests.helpers.pods import Action, make_inputs, reaped
from tests.test_tracing import children, read_traces

env = flyte.TaskEnvironment(name="trace-pods")
CHILD = "tests.helpers.trace_child"


@env.task
def pod_parent(workdir: str) -> int:
    context = dict(flyte.ctx().custom_context or {})  # what Flyte copies into the child's inputs
    action = Action(Path(workdir), "pod_tool", make_inputs("pod_tool", context, module=CHILD, i=1), CHILD)
    with reaped(action.start(0)) as proc:
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and not action.failed(), out.decode(errors="replace")[-3000:]
    return proc.returncode


def test_a_child_in_another_pod_nests_under_its_callers_span(
    client: MlflowClient, experiment: tuple[str, str], tracking_uri: str, tmp_path: Path
) -> None:
    """The pod's task span and its user span join the caller's trace, nested as called."""
    name, experiment_id = experiment
    config = mlflow_config(tracking_uri=tracking_uri, experiment_name=name, tracing=True)
    run_name = f"pods-{uuid.uuid4().hex[:8]}"
    flyte.with_runcontext(mode="local", name=run_name, custom_context=config).run(pod_parent, str(tmp_path))
    deadline = time.monotonic() + 30
    while True:
        (trace,) = read_traces(client, experiment_id)
        spans = trace.data.spans
        if len(spans) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    (root,) = [s for s in spans if s.parent_id is None]
    assert root.name == "trace-pods.pod_parent"
    assert children(spans, root) == ["trace-child.pod_tool"]
    (tool,) = [s for s in spans if s.name == "trace-child.pod_tool"]
    assert children(spans, tool) == ["pod-user-1"]
    assert tool.inputs == {"i": "1"} and tool.outputs == {"o0": "101"}
    assert tool.status.status_code == SpanStatusCode.OK
    assert trace.info.tags["flyte.run_name"] == run_name
