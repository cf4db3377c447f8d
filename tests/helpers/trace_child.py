"""A task that a traced run starts in a pod of its own (``tests/test_tracing_pods.py``): untracked, with a
user span. The module imports the plugin, as a pod's code would. (The emulated pod has no controller,
which ``flyte.trace`` needs, so steps in a pod are not exercised here.)"""

from __future__ import annotations

import flyte
import mlflow

import flyteplugins.mlflow  # noqa: F401  (the observer is registered by the import)

env = flyte.TaskEnvironment(name="trace-child")


@env.task
async def pod_tool(i: int) -> int:
    with mlflow.start_span(name=f"pod-user-{i}") as span:
        span.set_inputs({"i": i})
    return i + 100
