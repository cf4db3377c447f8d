"""An agent-shaped Flyte run, traced: one MLflow trace with a span per task and per model call.

``planner`` asks the "model" for a plan, runs one ``tool`` task per step of it in parallel, and asks
the model to sum up. The model is a plain function behind ``flyte.trace`` (no network, no weights), so
each call is a step span; each tool wraps its work in a user span. With ``tracing=True`` on the
planner's tracker, the run is one trace in the planner's experiment, linked to its run::

    python examples/agent.py http://127.0.0.1:5000

Without an argument it tracks into an SQLite file in ``.demo/``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import flyte
import mlflow

from flyteplugins.mlflow import get_mlflow_run, mlflow_config, mlflow_run

env = flyte.TaskEnvironment(name="agent")


def model(prompt: str) -> str:
    """The stand-in for a language model: a deterministic function of the prompt."""
    if prompt.startswith("plan:"):
        return "search,calculate,summarize"
    return f"answer({prompt})"


@flyte.trace
async def call_model(prompt: str) -> str:
    """One model call, a step of its task (and a span of the trace)."""
    return model(prompt)


@env.task
async def tool(name: str, question: str) -> str:
    """One tool: a user span around its model call."""
    with mlflow.start_span(name=f"use-{name}") as span:
        span.set_inputs({"question": question})
        answer = await call_model(f"{name}: {question}")
        span.set_outputs({"answer": answer})
    return answer


@mlflow_run(tracing=True)
@env.task
async def planner(question: str) -> str:
    """Plan with the model, run the tools in parallel, sum up with the model."""
    steps = (await call_model(f"plan: {question}")).split(",")
    answers = await asyncio.gather(*(tool(step, question) for step in steps))
    run = get_mlflow_run()
    if run is not None:
        mlflow.log_param("tools", len(steps))
    return await call_model("summary: " + "; ".join(answers))


def main(argv: list[str]) -> str:
    """Run the agent once; return the Flyte run's name."""
    if len(argv) > 1:
        uri = argv[1]
    else:
        store = Path(__file__).resolve().parents[1] / ".demo"
        store.mkdir(exist_ok=True)
        uri = f"sqlite:///{store / 'mlflow.db'}"
    flyte.init()
    config = mlflow_config(tracking_uri=uri, experiment_name="flyte-agent")
    run = flyte.with_runcontext(mode="local", custom_context=config).run(planner, "what is 6 x 7?")
    print(f"{run.name}: {run.outputs()[0]}")
    return run.name


if __name__ == "__main__":
    main(sys.argv)
