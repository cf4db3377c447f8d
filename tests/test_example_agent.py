"""``examples/agent.py`` as MLflow stores it: one trace, the planner at its root, tools in parallel."""

from __future__ import annotations

import flyte
from mlflow.entities import Span
from mlflow.tracking import MlflowClient

from examples.agent import planner
from flyteplugins.mlflow import mlflow_config
from tests.test_tracing import read_traces


def tree(spans: list[Span], parent: str | None = None, depth: int = 0) -> list[str]:
    """The span tree as indented names, siblings in the order of their subtrees' text."""
    subtrees = [
        ["  " * depth + span.name, *tree(spans, span.span_id, depth + 1)]
        for span in spans
        if span.parent_id == parent
    ]
    return [line for subtree in sorted(subtrees) for line in subtree]


def test_the_agent_is_one_trace_of_its_tasks_and_model_calls(
    client: MlflowClient, experiment: tuple[str, str], tracking_uri: str
) -> None:
    """The planner's span holds its two model calls and three parallel tools, each with its user span."""
    name, experiment_id = experiment
    config = mlflow_config(tracking_uri=tracking_uri, experiment_name=name)
    flyte.with_runcontext(mode="local", custom_context=config).run(planner, "q")
    (trace,) = read_traces(client, experiment_id)
    assert tree(trace.data.spans) == [
        "agent.planner",
        "  agent.tool",
        "    use-calculate",
        "      call_model",
        "  agent.tool",
        "    use-search",
        "      call_model",
        "  agent.tool",
        "    use-summarize",
        "      call_model",
        "  call_model",
        "  call_model",
    ]
