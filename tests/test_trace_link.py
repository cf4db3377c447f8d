"""Where a traced run is seen from Flyte: the ``Mlflow`` link to the trace (``LinkTarget.TRACE``) and
the report tab naming it.

The link is rendered from plain contexts, as Flyte renders it when a traced caller submits a task;
the tab is written by a real local run against the session's ``mlflow server`` and compared with the
trace the server stores.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import flyte
import pytest
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import LinkTarget, Mlflow, RunMode, mlflow_config, mlflow_run
from flyteplugins.mlflow._plan.plan import ReportSpec
from flyteplugins.mlflow._report.read import RunView, with_trace
from flyteplugins.mlflow._report.render import render
from flyteplugins.mlflow._tags import TRACE_EXPERIMENT_KEY, TRACEPARENT_KEY, TRACING_KEY
from tests.conftest import Recorded
from tests.helpers.support import MlflowServer, own_run_id

OTEL_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{OTEL_ID}-b7ad6b7169203331-01"
HOST = "http://mlflow.example:5000"
TRACED = {
    "mlflow_link_host": HOST,
    TRACING_KEY: "true",
    TRACEPARENT_KEY: TRACEPARENT,
    TRACE_EXPERIMENT_KEY: "7",
}

env = flyte.TaskEnvironment(name="trace-link")


@flyte.trace
async def think(prompt: str) -> str:
    return prompt.upper()


@mlflow_run(run_mode="nested")
@env.task(report=True, links=(Mlflow("Trace", target=LinkTarget.TRACE),))
async def trial(i: int) -> str:
    await think(f"trial {i}")
    return own_run_id()


@mlflow_run(tracing=True)
@env.task(report=True)
async def study(n: int) -> list[str]:
    trials = await asyncio.gather(*(trial(i) for i in range(n)))
    return [own_run_id(), *trials]


def _render(link: Mlflow, context: dict[str, str]) -> str:
    return link.get_link("r1", "p", "development", context, "a0", "a1", "pod")


# --- the link, from plain contexts -------------------------------------------------------------


def test_trace_link_opens_the_callers_trace_in_the_traces_view() -> None:
    """A traced caller's span names the trace: ``tr-`` and its OpenTelemetry trace id, in its experiment."""
    expected = f"{HOST}/#/experiments/7/traces?selectedEvaluationId=tr-{OTEL_ID}"
    assert _render(Mlflow(target=LinkTarget.TRACE), TRACED) == expected
    assert _render(Mlflow(target="trace"), {**TRACED, "mlflow_link_host": HOST + "/"}) == expected


@pytest.mark.parametrize(
    "context",
    [
        {k: v for k, v in TRACED.items() if k != TRACEPARENT_KEY},  # the caller is not traced
        {k: v for k, v in TRACED.items() if k != "mlflow_link_host"},  # no host to link to
        {**TRACED, TRACEPARENT_KEY: "garbage"},
        {**TRACED, TRACEPARENT_KEY: f"00-{'0' * 32}-b7ad6b7169203331-01"},  # the invalid trace id
        {k: v for k, v in TRACED.items() if k != TRACE_EXPERIMENT_KEY},
        {},
    ],
    ids=["untraced-caller", "no-link-host", "malformed", "zero-trace-id", "no-experiment", "empty"],
)
def test_no_known_trace_means_no_trace_link(context: dict[str, str]) -> None:
    """Without a traced caller, a host and the trace's experiment, the link is not shown."""
    assert _render(Mlflow(target=LinkTarget.TRACE), context) == ""


def test_a_trace_link_on_a_nested_task_keeps_its_name() -> None:
    """Binding to a nested tracker renames only caller links; a trace link keeps its label and target."""
    bound = Mlflow(target=LinkTarget.TRACE).bound_to(RunMode.NESTED)
    assert bound.name == "MLflow"
    assert _render(bound, TRACED) == f"{HOST}/#/experiments/7/traces?selectedEvaluationId=tr-{OTEL_ID}"


# --- the report tab, from plain values ---------------------------------------------------------


def _view(link_host: str | None = None) -> RunView:
    return RunView(
        run_id="abc123",
        name="run",
        status="FINISHED",
        start_ms=1,
        end_ms=2,
        now_ms=3,
        link=None,
        params={},
        metrics={},
        spec=ReportSpec(link_host=link_host),
    )


def test_the_tab_names_the_trace_and_links_it_with_a_host() -> None:
    """A traced task's tab names its trace, linked to the Traces view when a host is known."""
    trace = (f"tr-{OTEL_ID}", "7")
    linked = render(with_trace(_view(HOST), "file:///tmp/mlruns", trace))
    assert f">tr-{OTEL_ID}</a>" in linked
    assert f'href="{HOST}/#/experiments/7/traces?selectedEvaluationId=tr-{OTEL_ID}"' in linked
    unlinked = render(with_trace(_view(), "file:///tmp/mlruns", trace))
    assert f"tr-{OTEL_ID}" in unlinked and "<a " not in unlinked
    assert "Trace" not in render(with_trace(_view(HOST), HOST, None))


# --- a real local run --------------------------------------------------------------------------


def _trace_id(client: MlflowClient, experiment_id: str) -> str:
    """The id of the experiment's one trace, once the server stores it (exported in the background)."""
    deadline = time.monotonic() + 30
    while True:
        found = list(client.search_traces(locations=[experiment_id], max_results=10))
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{len(found)} traces"
            return str(found[0].info.trace_id)
        time.sleep(0.3)


def test_a_traced_runs_tabs_name_the_trace_the_server_stores(
    where: Path, mlflow_server: MlflowServer, experiment: tuple[str, str], client: MlflowClient
) -> None:
    """The study's tab and each trial's tab name the one trace of the Flyte run, linked to it."""
    config = mlflow_config(
        tracking_uri=mlflow_server.uri, experiment_id=experiment[1], link_host=HOST, report=True
    )
    run = flyte.with_runcontext(mode="local", custom_context=config, name=where.name).run(study, n=2)
    run_ids = run.outputs()[0]
    trace_id = _trace_id(client, experiment[1])
    assert trace_id.startswith("tr-")
    link = f"{HOST}/#/experiments/{experiment[1]}/traces?selectedEvaluationId={trace_id}"
    pages = [p.read_text() for p in sorted(where.rglob("report.html"))]
    assert len(pages) == len(run_ids)
    for run_id in run_ids:
        (page,) = [p for p in pages if f">{run_id}<" in p]
        assert f'<a href="{link}" target="_blank" rel="noopener">{trace_id}</a>' in page


def test_recorded_trace_links_open_the_trace_the_server_stores(
    recorded: Recorded, mlflow_server: MlflowServer, experiment: tuple[str, str], client: MlflowClient
) -> None:
    """The links a real run records on its traced children open the run's one trace."""
    uri = mlflow_server.uri
    config = mlflow_config(tracking_uri=uri, experiment_id=experiment[1], link_host=uri)
    _, links = recorded.run(study, config, n=3)
    trace_id = _trace_id(client, experiment[1])
    url = f"{mlflow_server.uri}/#/experiments/{experiment[1]}/traces?selectedEvaluationId={trace_id}"
    assert links["trial"] == [("Trace", url)] * 3
