"""Retries and resume in a traced run: a retried task's attempts stay in the run's trace, and the steps
a resumed run serves from Flyte's durable log are spans marked ``flyte.replayed``.

Real local runs against the session's ``mlflow server``. Local mode retries a task as a cluster does
(each attempt through Flyte's task runner, so through the observer), but it keeps no durable log
across runs: for the resume, :class:`DurableLog` gives Flyte's local controller the lookup its remote
controller makes on a resume (a step's recorded output, by the step's action), so ``flyte.trace``
takes its own replay path.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import flyte
import pytest
from flyte._internal.controllers._local_controller import LocalController
from flyte._internal.controllers._trace import TraceInfo
from mlflow.entities import Span, SpanStatusCode
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import mlflow_config
from tests.test_tracing import children, read_traces

env = flyte.TaskEnvironment(name="resume")

ATTEMPTS: Counter[str] = Counter()  # run name -> attempts of `flaky` so far
CALLS: list[str] = []  # the prompts `ask` really ran for
CRASHED: set[str] = set()  # run names whose first run has crashed


@flyte.trace
async def ask(prompt: str) -> str:
    CALLS.append(prompt)
    return prompt.upper()


@env.task(retries=1)
async def flaky(i: int) -> int:
    context = flyte.ctx()
    assert context is not None and context.action.run_name is not None
    name = context.action.run_name
    ATTEMPTS[name] += 1
    if ATTEMPTS[name] == 1:
        raise ValueError(f"first attempt of {i}")
    return i + 1


@env.task
async def retrying(i: int) -> int:
    return await flaky(i)


@env.task
async def study(run: str) -> str:
    answers = [await ask(f"{run}-a"), await ask(f"{run}-b")]
    if run not in CRASHED:
        CRASHED.add(run)
        raise RuntimeError("the pod was lost")
    answers.append(await ask(f"{run}-c"))
    return ",".join(answers)


class DurableLog:
    """Flyte's durable log of ``flyte.trace`` steps, in memory: each step's output by its action."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.outputs: dict[tuple[str | None, str], Any] = {}
        lookup, record = LocalController.get_action_outputs, LocalController.record_trace

        async def get_action_outputs(
            controller: LocalController, *args: Any, **kwargs: Any
        ) -> tuple[TraceInfo, bool]:
            info, found = await lookup(controller, *args, **kwargs)
            key = (info.action.run_name, info.action.name)
            if key in self.outputs:
                info.output = self.outputs[key]
            return info, found

        async def record_trace(controller: LocalController, info: TraceInfo) -> None:
            if info.error is None:
                self.outputs[(info.action.run_name, info.action.name)] = info.output
            await record(controller, info)

        monkeypatch.setattr(LocalController, "get_action_outputs", get_action_outputs)
        monkeypatch.setattr(LocalController, "record_trace", record_trace)


def steps(spans: list[Span]) -> dict[str, Span]:
    return {s.inputs["prompt"][-1]: s for s in spans if s.name == "ask"}


def test_a_retried_attempt_stays_in_the_runs_trace(
    client: MlflowClient, experiment: tuple[str, str], tracking_uri: str
) -> None:
    """Both attempts of a retried task are spans under its caller's, in the one trace: ERROR then OK."""
    name, experiment_id = experiment
    config = mlflow_config(tracking_uri=tracking_uri, experiment_name=name, tracing=True)
    run_name = f"retry-{uuid.uuid4().hex[:8]}"
    flyte.with_runcontext(mode="local", name=run_name, custom_context=config).run(retrying, 4)
    assert ATTEMPTS[run_name] == 2
    (trace,) = read_traces(client, experiment_id)
    spans = trace.data.spans
    (root,) = [s for s in spans if s.parent_id is None]
    assert root.name == "resume.retrying" and root.status.status_code == SpanStatusCode.OK
    assert children(spans, root) == ["resume.flaky", "resume.flaky"]
    first, second = sorted((s for s in spans if s.name == "resume.flaky"), key=lambda s: s.start_time_ns)
    assert first.status.status_code == SpanStatusCode.ERROR
    assert second.status.status_code == SpanStatusCode.OK and second.outputs == {"o0": "5"}
    assert first.attributes["flyte.action_name"] == second.attributes["flyte.action_name"]


def test_a_resumed_run_records_its_replayed_steps(
    client: MlflowClient, experiment: tuple[str, str], tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume serves two steps from the log (spans marked ``flyte.replayed``, with the inputs and
    the output the log served, the function not run again) and runs the third."""
    DurableLog(monkeypatch)
    name, experiment_id = experiment
    config = mlflow_config(tracking_uri=tracking_uri, experiment_name=name, tracing=True)
    run_name = f"resume-{uuid.uuid4().hex[:8]}"
    runner = flyte.with_runcontext(mode="local", name=run_name, custom_context=config)
    with pytest.raises(Exception, match="the pod was lost"):
        runner.run(study, run_name)
    assert runner.run(study, run_name).outputs()[0] == f"{run_name}-a,{run_name}-b,{run_name}-c".upper()
    assert [c for c in CALLS if c.startswith(run_name)] == [f"{run_name}-{x}" for x in "abc"]

    lost, resumed = sorted(read_traces(client, experiment_id, count=2), key=lambda t: t.info.request_time)
    assert lost.info.tags["flyte.run_name"] == resumed.info.tags["flyte.run_name"] == run_name
    assert lost.info.state.value == "ERROR" and resumed.info.state.value == "OK"
    first = steps(lost.data.spans)
    assert sorted(first) == ["a", "b"] and not any("flyte.replayed" in s.attributes for s in first.values())
    again = steps(resumed.data.spans)
    assert sorted(again) == ["a", "b", "c"]
    for step in "ab":
        assert again[step].attributes["flyte.replayed"] is True
        assert again[step].inputs == {"prompt": f"{run_name}-{step}"}
        assert again[step].outputs == {"o0": f"{run_name}-{step}".upper()}
        assert again[step].status.status_code == SpanStatusCode.OK
    assert "flyte.replayed" not in again["c"].attributes
    assert again["c"].outputs == {"o0": f"{run_name}-c".upper()}
    (root,) = [s for s in resumed.data.spans if s.parent_id is None]
    assert children(resumed.data.spans, root) == ["ask", "ask", "ask"]
