"""MLflow's Traces view on a traced study, in headless Chromium: the span tree of the Flyte run and a
span's inputs and outputs.

A real local run of the study sends its trace to the session's ``mlflow server``; the page is opened
at the address the plugin's trace link uses, and what it shows is compared with the trace the server
stores.
"""

from __future__ import annotations

import asyncio
import time

import flyte
import mlflow
from mlflow.entities import Span, Trace
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser, Locator, Page

from flyteplugins.mlflow import mlflow_config, mlflow_run
from tests.helpers.support import screenshot

env = flyte.TaskEnvironment(name="hpo")

LRS = [0.01, 0.03, 0.1]
SPANS = 1 + 3 * len(LRS)  # the study, and each trial with its step and its user span


@flyte.trace
async def train(lr: float) -> float:
    return round(0.5 - lr, 4)


@mlflow_run(run_mode="nested")
@env.task
async def trial(lr: float) -> float:
    loss = await train(lr)
    with mlflow.start_span(name="evaluate") as span:
        span.set_inputs({"lr": lr, "loss": loss})
        score = round(1 - loss, 4)
        span.set_outputs({"score": score})
    return score


@mlflow_run(tracing=True)
@env.task
async def study(lrs: list[float]) -> float:
    scores = await asyncio.gather(*(trial(lr) for lr in lrs))
    return max(scores)


def _stored_trace(client: MlflowClient, experiment_id: str) -> Trace:
    """The experiment's one trace, once the server holds all its spans (they are sent in the background)."""
    deadline = time.monotonic() + 30
    while True:
        found = list(client.search_traces(locations=[experiment_id], max_results=10))
        if len(found) == 1:
            trace = client.get_trace(found[0].info.trace_id)
            assert isinstance(trace, Trace)
            if len(trace.data.spans) == SPANS or time.monotonic() > deadline:
                return trace
        assert time.monotonic() < deadline, f"{len(found)} traces"
        time.sleep(0.2)


def _depth_first(spans: list[Span]) -> list[tuple[Span, int]]:
    """The spans as a tree shows them, with their depths: each after its parent, siblings by start time."""
    order: list[tuple[Span, int]] = []

    def visit(parent_id: str | None, depth: int) -> None:
        for span in sorted((s for s in spans if s.parent_id == parent_id), key=lambda s: s.start_time_ns):
            order.append((span, depth))
            visit(span.span_id, depth + 1)

    visit(None, 0)
    return order


def _shows(pane: Locator, lines: list[str]) -> list[str]:
    """The lines of the selected span's Inputs / Outputs pane, once they are ``lines`` (or after 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        shown = [line.strip() for line in pane.inner_text().splitlines() if line.strip()]
        if shown == lines or time.monotonic() > deadline:
            return shown
        time.sleep(0.2)


# A fresh browser gets MLflow's first-visit guidance: its assistant opens beside the trace, and a modal
# "Detect issues" tip hides the rest of the page from role queries. Both are marked as seen before load.
_SEEN = "".join(
    f"localStorage.setItem('{key}_v1', 'true');"
    for key in ("mlflow.assistant.fab.autoOpenedOnFirstLoad", "mlflow.detectIssues.guidanceShown")
)


def _open(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 640})
    page.add_init_script(_SEEN)
    page.goto(url)
    return page


def test_the_traces_view_shows_the_study_its_trials_their_steps_and_spans(
    tracking_uri: str, experiment: tuple[str, str], client: MlflowClient, browser: Browser
) -> None:
    """The trace opened at the plugin's link shows every span of the run in its tree, nested as called;
    the study's span is selected, with its inputs and outputs, and a trial's user span shows its own
    once selected."""
    experiment_id = experiment[1]
    config = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id)
    run = flyte.with_runcontext(mode="local", custom_context=config).run(study, lrs=LRS)
    assert run.outputs()[0] == 0.6
    trace = _stored_trace(client, experiment_id)
    tree = _depth_first(trace.data.spans)
    assert [(s.name, d) for s, d in tree] == [("hpo.study", 0)] + [
        ("hpo.trial", 1),
        ("train", 2),
        ("evaluate", 2),
    ] * len(LRS)

    # The address of the plugin's trace link (see links.md), on the tracking server itself.
    url = f"{tracking_uri}/#/experiments/{experiment_id}/traces?selectedEvaluationId={trace.info.trace_id}"
    page = _open(browser, url)
    rows = page.locator("[data-testid^='span-title-row-']")
    rows.nth(SPANS - 1).wait_for(timeout=30_000)
    shown = rows.evaluate_all(
        "rows => rows.map(r => [r.dataset.testid, r.innerText.trim(), r.getBoundingClientRect().left])"
    )
    assert [(testid, name) for testid, name, _ in shown] == [
        (f"span-title-row-{s.span_id}", s.name) for s, _ in tree
    ], "the tree lists every span once, each after its parent"
    lefts = [
        {left for (_, _, left), (_, depth) in zip(shown, tree, strict=True) if depth == d} for d in range(3)
    ]
    assert all(len(at) == 1 for at in lefts), lefts
    (study_x,), (trial_x,), (step_x,) = lefts
    assert study_x < trial_x < step_x, "each level is indented under the one above"

    pane = page.get_by_role("tabpanel")  # the shown one: Inputs / Outputs, not Attributes
    expected = ["Inputs", "Pretty", "lrs", str(LRS), "Outputs", "Pretty", "o0", "0.6"]
    assert _shows(pane, expected) == expected, "the study's span is selected first"

    (user,) = [s for s in trace.data.spans if s.name == "evaluate" and s.inputs["lr"] == LRS[0]]
    page.get_by_test_id(f"span-title-row-{user.span_id}").click()
    expected = ["Inputs", "Pretty", "lr", "0.01", "loss", "0.49", "Outputs", "Pretty", "score", "0.51"]
    assert _shows(pane, expected) == expected
    screenshot(page, "trace-view")
    page.close()
