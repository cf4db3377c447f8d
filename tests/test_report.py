"""The "MLflow" tab in Flyte's report: rendered from plain values, written by real local Flyte runs
against the session's real ``mlflow server``, its requests counted at the server, and opened in
headless Chromium.
"""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from pathlib import Path
from typing import Any

import flyte
import flyte.errors
import mlflow
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser, Page

from flyteplugins.mlflow import (
    MlflowConfig,
    MlflowRun,
    ReportGoal,
    mlflow_config,
    mlflow_run,
)
from flyteplugins.mlflow._plan.plan import ReportSpec
from flyteplugins.mlflow._report.read import (
    MAX_CHARTS,
    MAX_CHILDREN,
    POINTS_DRAWN,
    POINTS_READ,
    Chart,
    Child,
    RunView,
    _link,
    downsample,
)
from flyteplugins.mlflow._report.render import MAX_CHILD_METRICS, MAX_METRICS, MAX_PARAMS, MAX_TEXT, render
from flyteplugins.mlflow._report.report import TAB
from tests.helpers.support import (
    CREATE,
    GET_RUN,
    LOG_BATCH,
    SEARCH,
    UPDATE,
    MlflowServer,
    Relay,
    own_run_id,
    screenshot,
)

HISTORY = ("GET", "/api/2.0/mlflow/metrics/get-history")
SCRIPT_PARAM = "<script>window.__mlflow_xss = 1</script>"
IMG_PARAM = '<img src="x" onerror="window.__mlflow_xss = 2">'

env = flyte.TaskEnvironment(name="report")


# --- tasks -------------------------------------------------------------------------------------


@mlflow_run(run_mode="nested", report=True)
@env.task(report=True)
async def trial(i: int, rmse: float) -> str:
    mlflow.log_params({"trial": i, "depth": i + 2})
    for step in range(5):
        mlflow.log_metric("loss", rmse * (5 - step), step=step)
    mlflow.log_metric("rmse", rmse)
    return own_run_id()


@mlflow_run(run_mode="nested", report=True)
@env.task(report=True)
async def unscored_trial() -> str:
    mlflow.log_param("trial", "unscored")
    return own_run_id()


@mlflow_run(report=True, report_metric="rmse", report_goal="minimize")
@env.task(report=True)
async def study(rmses: list[float]) -> str:
    mlflow.log_params({"n_trials": len(rmses), "note": SCRIPT_PARAM, "img": IMG_PARAM})
    for step in range(40):
        mlflow.log_metric("best_so_far", 1.0 / (step + 1), step=step)
        mlflow.log_metric("lr", 0.1 * 0.9**step, step=step)
    await asyncio.gather(*(trial(i, r) for i, r in enumerate(rmses)))
    mlflow.log_metric("best_rmse", min(rmses))
    return own_run_id()


@mlflow_run
@env.task
async def sequential_study(rmses: list[float]) -> list[str]:
    """Trials one after another (so newest first is a known order), then one that logs no rmse."""
    ids = [await trial(i, r) for i, r in enumerate(rmses)]
    ids.append(await unscored_trial())
    return [own_run_id(), *ids]


@mlflow_run(report=True)
@env.task(report=True)
async def logs(n_metrics: int, steps: int) -> str:
    for k in range(n_metrics):
        for step in range(steps):
            mlflow.log_metric(f"m{k:02d}", float(step * (k + 1)), step=step)
    mlflow.log_metric("once", 3.0)
    return own_run_id()


class Planned(Exception):
    """Raised on purpose after logging."""


@mlflow_run(report=True)
@env.task(report=True)
async def fails(marker: str) -> None:
    mlflow.log_param("marker", marker)
    for step in range(3):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    raise Planned(marker)


@mlflow_run(report=True)
@env.task(report=True)
def fails_sync(marker: str) -> None:
    mlflow.log_param("marker", marker)
    raise Planned(marker)


@mlflow_run(report=True)
@env.task
def sync_logs(marker: str) -> str:
    mlflow.log_param("marker", marker)
    for step in range(4):
        mlflow.log_metric("acc", step / 4, step=step)
    return own_run_id()


@mlflow_run
@env.task(report=True)
async def shares() -> str:
    mlflow.log_param("who", "child")
    mlflow.log_metric("shared", 2.0, step=1)
    mlflow.log_metric("shared", 3.0, step=2)
    return own_run_id()


@mlflow_run
@env.task
async def shared_parent() -> list[str]:
    child = await shares()
    return [own_run_id(), child]


@mlflow_run
@env.task(report=True)
async def plain() -> str:
    mlflow.log_metric("x", 1.0, step=1)
    return own_run_id()


# --- helpers -----------------------------------------------------------------------------------


def run_local(where: Path, config: MlflowConfig, task: Any, **inputs: object) -> Any:
    """Run ``task`` locally as the Flyte run named after ``where``; return its first output."""
    run = flyte.with_runcontext(mode="local", custom_context=config, name=where.name).run(task, **inputs)
    assert Path(run.url) == where
    return run.outputs()[0]


def reports(where: Path) -> list[Path]:
    """Every report Flyte saved for the run at ``where``."""
    return sorted(where.rglob("report.html"))


def report_of(tmp: Path, run_id: str) -> str:
    """The saved report whose MLflow tab is about ``run_id``."""
    found = [p.read_text() for p in reports(tmp) if f">{run_id}<" in p.read_text()]
    assert len(found) == 1, f"{len(found)} reports show run {run_id}"
    return found[0]


def tab_body(page_html: str) -> str:
    """The MLflow tab's body, as Flyte inserted it."""
    start = page_html.index('<div class="mlflow-report">')
    return page_html[start : page_html.index("</body>")]


def config_for(server: MlflowServer, experiment_id: str, **extra: Any) -> MlflowConfig:
    return mlflow_config(tracking_uri=server.uri, experiment_id=experiment_id, **extra)


# --- rendering, from plain values --------------------------------------------------------------


def _view(**changes: Any) -> RunView:
    base: dict[str, Any] = {
        "run_id": "abc123",
        "name": "run",
        "status": "FINISHED",
        "start_ms": 1_000,
        "end_ms": 63_500,
        "now_ms": 100_000,
        "link": "http://mlflow.example/#/experiments/1/runs/abc123",
        "params": {},
        "metrics": {},
    }
    base.update(changes)
    return RunView(**base)


def test_every_text_is_escaped() -> None:
    """Names, values, statuses and links that hold markup come out as text, never as markup."""
    evil = "</td><script>alert(1)</script>\"'&"
    out = render(
        _view(
            name=evil,
            status=evil,
            params={evil: evil},
            metrics={evil: (1.0, 3)},
            charts=(Chart(evil, ((1, 1.0), (3, 2.0)), 2),),
            children=(Child("c1", evil, evil, {evil: 0.5}, link='http://x/"><script>'),),
            spec=ReportSpec(metric=evil.replace("<", "").replace(">", "")),
        )
    )
    assert "<script" not in out
    assert html.escape(evil) in out
    assert '"><script>' not in out


def test_only_http_links_become_anchors() -> None:
    """A link that is not http(s) (``javascript:``, say) is shown as plain text."""
    out = render(_view(link="javascript:alert(1)"))
    assert "href" not in out
    assert "javascript:" not in out


def test_duration_of_an_ended_run_and_of_a_running_one() -> None:
    """An ended run shows start to end; a running one shows the time so far."""
    assert "1 min 2 s" in render(_view())
    assert "1 min 39 s so far" in render(_view(end_ms=None))
    assert "2 h 3 min" in render(_view(end_ms=1_000 + (2 * 3600 + 3 * 60) * 1000))


def test_params_metrics_and_long_values_are_bounded() -> None:
    """Past the limits the page keeps the first rows by name, says how many more there are, and cuts
    long values with a note of the characters cut."""
    params = {f"p{i:04d}": "v" * (MAX_TEXT + 50) for i in range(MAX_PARAMS + 7)}
    metrics = {f"m{i:04d}": (float(i), 0) for i in range(MAX_METRICS + 3)}
    out = render(_view(params=params, metrics=metrics))
    assert out.count("<tr><td>p") == MAX_PARAMS
    assert "7 more params not shown" in out
    assert out.count("<tr><td>m") == MAX_METRICS
    assert "3 more metrics not shown" in out
    assert "(+50 characters)" in out
    assert f"p{MAX_PARAMS - 1:04d}" in out and f"p{MAX_PARAMS:04d}" not in out


def _metric(step: int, value: float, ts: int = 0) -> Metric:
    return Metric("k", value, ts, step)


def test_downsample_keeps_step_order_extremes_and_the_bound() -> None:
    """A long history becomes at most POINTS_DRAWN points in step order, keeping its highest spike."""
    history = [_metric(s, float(s % 7)) for s in range(5_000)]
    history[2_345] = _metric(2_345, 1e6)
    drawn = downsample(history, POINTS_DRAWN)
    assert 0 < len(drawn) <= POINTS_DRAWN
    assert [s for s, _ in drawn] == sorted(s for s, _ in drawn)
    assert (2_345, 1e6) in drawn
    assert drawn[0][0] == 0
    assert drawn[-1][0] >= 4_950


def test_downsample_keeps_the_last_value_of_a_step_and_drops_non_finite() -> None:
    """A step logged twice keeps its later value; NaN and infinities are not drawn."""
    drawn = downsample(
        [_metric(1, 5.0, ts=1), _metric(1, 6.0, ts=2), _metric(2, float("nan")), _metric(3, float("inf"))],
        POINTS_DRAWN,
    )
    assert drawn == ((1, 6.0),)


def test_children_table_is_bounded_in_rows_and_columns() -> None:
    """The children table has at most MAX_CHILDREN rows and MAX_CHILD_METRICS metric columns, the
    ranking metric first, and says what it leaves out."""
    metrics = {f"z{i}": float(i) for i in range(MAX_CHILD_METRICS + 2)} | {"rmse": 0.5}
    children = tuple(Child(f"id{i}", f"trial-{i}", "FINISHED", metrics) for i in range(MAX_CHILDREN))
    out = render(_view(children=children, more_children=True, spec=ReportSpec(metric="rmse")))
    table = out[out.index('<table class="children">') :]
    assert table.count("<tr><td>") == MAX_CHILDREN
    head = table[: table.index("</thead>")]
    assert head.count("<th>") == 3 + MAX_CHILD_METRICS
    assert head.index("rmse") < head.index("z0")
    assert "More nested runs exist" in out
    assert "3 more metric columns not shown" in out
    assert "lowest <code>rmse</code> first" in out


def test_charts_past_the_limit_are_counted_not_drawn() -> None:
    """Only the charts given are drawn; the page says how many stepped metrics were not."""
    metrics = {f"m{i:02d}": (1.0, 5) for i in range(MAX_CHARTS + 4)}
    charts = tuple(Chart(f"m{i:02d}", ((0, 0.0), (5, 1.0)), 2) for i in range(MAX_CHARTS))
    out = render(_view(metrics=metrics, charts=charts))
    assert out.count("<polyline") == MAX_CHARTS
    assert "4 more metrics with steps are not drawn" in out
    assert "<script" not in out


def test_links_use_link_host_and_template_else_an_http_tracking_uri() -> None:
    """The run's link is built from ``link_host`` and ``link_template`` when set, else from an HTTP(S)
    tracking URI with the default template; a local store gives no link."""
    spec = ReportSpec(link_host="https://ui.example/", link_template="{host}/ml/{experiment_id}/r/{run_id}")
    assert _link(spec, "http://127.0.0.1:5000", "7", "abc") == "https://ui.example/ml/7/r/abc"
    assert _link(ReportSpec(), "http://127.0.0.1:5000", "7", "abc") == (
        "http://127.0.0.1:5000/#/experiments/7/runs/abc"
    )
    assert _link(ReportSpec(), "sqlite:///mlflow.db", "7", "abc") is None


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build", [MlflowConfig, MlflowRun, mlflow_config, mlflow_run], ids=lambda b: b.__name__
)
def test_bad_report_goal_names_parameter_value_and_choices(build: Any) -> None:
    """A report goal that is not one is refused at construction, naming it and the valid choices."""
    with pytest.raises(ValueError) as info:
        build(report_goal="lowest")
    message = str(info.value)
    assert "report_goal" in message
    assert "'lowest'" in message
    assert "'minimize'" in message and "'maximize'" in message


@pytest.mark.parametrize("bad", ["", "rmse`) OR 1", "a\nb"])
def test_bad_report_metric_names_parameter_and_value(bad: str) -> None:
    """A report metric that MLflow could not name is refused at construction, naming it."""
    with pytest.raises(ValueError) as info:
        mlflow_run(report=True, report_metric=bad)
    assert "report_metric" in str(info.value)
    assert repr(bad) in str(info.value)


def test_report_goal_accepts_members_and_strings() -> None:
    """``report_goal`` is a ReportGoal or its string; unset is None."""
    assert mlflow_config(report_goal="maximize").report_goal is ReportGoal.MAXIMIZE
    assert MlflowRun(report_goal=ReportGoal.MINIMIZE).report_goal is ReportGoal.MINIMIZE
    assert MlflowRun().report_goal is None


# --- end to end: local Flyte runs against the real server --------------------------------------


def test_parent_report_ranks_nested_children_best_first(
    where: Path, mlflow_server: MlflowServer, experiment: tuple[str, str], client: MlflowClient
) -> None:
    """A study's tab shows its params (markup as text), a chart per stepped metric, and its nested
    trials best first by ``rmse``; each trial's own tab shows its run."""
    rmses = [0.7, 0.2, 0.9, 0.4]
    parent = run_local(where, config_for(mlflow_server, experiment[1]), study, rmses=rmses)
    page = report_of(where, parent)
    body = tab_body(page)
    assert html.escape(SCRIPT_PARAM) in body and "<script>window" not in body
    assert body.count("<polyline") == 2  # best_so_far and lr; best_rmse has no steps
    children = body[body.index('<table class="children">') :]
    head = re.findall(r"<th>(.*?)</th>", children[: children.index("</thead>")])
    assert head[:4] == ["#", "run", "status", "rmse"]
    rows = re.findall(r"<tr>(.*?)</tr>", children[children.index("<tbody>") : children.index("</tbody>")])
    order = [float(re.findall(r"<td>(.*?)</td>", row)[3]) for row in rows]
    assert order == sorted(rmses)
    trial_ids = {r.info.run_id for r in client.search_runs([experiment[1]]) if r.info.run_id != parent}
    assert len(trial_ids) == len(rmses)
    for run_id in trial_ids:
        trial_body = tab_body(report_of(where, run_id))
        assert "FINISHED" in trial_body
        assert trial_body.count("<polyline") == 1  # loss; rmse has no steps
        assert "Nested runs" not in trial_body


def _children_rows(body: str) -> list[list[str]]:
    table = body[body.index('<table class="children">') :]
    rows = re.findall(r"<tr>(.*?)</tr>", table[table.index("<tbody>") : table.index("</tbody>")])
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", row)] for row in rows]


def test_context_ranks_children_by_maximize_and_runs_without_the_metric_last(
    where: Path, mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """``report_metric`` and ``report_goal="maximize"`` from mlflow_config put the highest value first,
    and a child that never logged the metric last."""
    rmses = [0.3, 0.8, 0.5]
    config = config_for(
        mlflow_server, experiment[1], report=True, report_metric="rmse", report_goal="maximize"
    )
    parent, *_ = run_local(where, config, sequential_study, rmses=rmses)
    rows = _children_rows(tab_body(report_of(where, parent)))
    assert [r[3] for r in rows] == ["0.8", "0.5", "0.3", "-"]


def test_without_a_report_metric_children_are_newest_first(
    where: Path, mlflow_server: MlflowServer, experiment: tuple[str, str], client: MlflowClient
) -> None:
    """With no ``report_metric`` the children are listed newest first."""
    config = config_for(mlflow_server, experiment[1], report=True)
    parent, *children = run_local(where, config, sequential_study, rmses=[0.3, 0.8])
    body = tab_body(report_of(where, parent))
    assert "newest first" in body
    names = [client.get_run(c).info.run_name for c in reversed(children)]
    assert [r[1] for r in _children_rows(body)] == names


def test_report_requests_are_counted_at_the_server(
    where: Path, mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """After its status and the sweep, a task's report costs one runs/get, one history per stepped
    metric (none for a metric without steps) and one search for nested children."""
    mark = mlflow_server.mark()
    run_local(where, config_for(mlflow_server, experiment[1]), logs, n_metrics=3, steps=4)
    seen = mlflow_server.requests(mark)
    plugin = [r for r in seen if r not in (LOG_BATCH, ("POST", "/api/2.0/mlflow/runs/log-metric"))]
    assert plugin == [CREATE, UPDATE, SEARCH, GET_RUN, HISTORY, HISTORY, HISTORY, SEARCH]


def test_a_trial_report_costs_three_requests(
    where: Path, mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """A trial that logs a stepped loss and a final rmse (no step) reads one history, not two."""
    mark = mlflow_server.mark()
    run_local(where, config_for(mlflow_server, experiment[1]), trial, i=0, rmse=0.5)
    seen = mlflow_server.requests(mark)
    report = seen[seen.index(GET_RUN) :]
    assert report == [GET_RUN, HISTORY, SEARCH]


def test_many_metrics_cost_at_most_max_charts_histories(
    where: Path, mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """A run with more stepped metrics than MAX_CHARTS reads MAX_CHARTS histories and draws as many."""
    mark = mlflow_server.mark()
    run_id = run_local(
        where, config_for(mlflow_server, experiment[1]), logs, n_metrics=MAX_CHARTS + 3, steps=3
    )
    seen = mlflow_server.requests(mark)
    assert seen.count(HISTORY) == MAX_CHARTS
    body = tab_body(report_of(where, run_id))
    assert body.count("<polyline") == MAX_CHARTS
    assert "3 more metrics with steps are not drawn" in body


def test_long_history_is_read_up_to_the_limit_and_downsampled(
    where: Path, mlflow_server: MlflowServer, experiment: tuple[str, str], client: MlflowClient
) -> None:
    """A metric with more than POINTS_READ points is read up to POINTS_READ, drawn with at most
    POINTS_DRAWN, and the chart says that the history has more."""

    @mlflow_run(report=True)
    @env.task(report=True)
    async def long_history() -> str:
        run_id = own_run_id()
        batch = 1000
        for start in range(0, POINTS_READ + 500, batch):
            MlflowClient(mlflow.get_tracking_uri()).log_batch(
                run_id, metrics=[Metric("loss", 1.0 / (s + 1), s, s) for s in range(start, start + batch)]
            )
        return run_id

    run_id = run_local(where, config_for(mlflow_server, experiment[1]), long_history)
    body = tab_body(report_of(where, run_id))
    points = re.search(r'<polyline[^>]* points="([^"]*)"', body)
    assert points is not None
    assert 2 < len(points.group(1).split()) <= POINTS_DRAWN
    assert f"the first {POINTS_READ} points logged (the history has more)" in body


@pytest.mark.parametrize(("task", "charts"), [(fails, 1), (fails_sync, 0)], ids=["async", "sync"])
def test_failed_task_writes_its_tab_with_the_final_status(
    where: Path,
    mlflow_server: MlflowServer,
    experiment: tuple[str, str],
    client: MlflowClient,
    task: Any,
    charts: int,
) -> None:
    """A task that raises, async or sync, still saves its report, and the tab shows the run FAILED."""
    marker = uuid.uuid4().hex
    with pytest.raises(flyte.errors.RuntimeUserError, match=marker):
        run_local(where, config_for(mlflow_server, experiment[1]), task, marker=marker)
    [run] = client.search_runs([experiment[1]])
    assert run.info.status == "FAILED"
    body = tab_body(report_of(where, run.info.run_id))
    assert "<td>FAILED</td>" in body
    assert marker in body
    assert body.count("<polyline") == charts


def test_sync_task_without_report_on_the_task_still_saves_the_tab(
    where: Path, mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """The plugin saves the report itself, so a sync task without ``@env.task(report=True)`` has it."""
    marker = uuid.uuid4().hex
    run_id = run_local(where, config_for(mlflow_server, experiment[1]), sync_logs, marker=marker)
    body = tab_body(report_of(where, run_id))
    assert marker in body and "<td>FINISHED</td>" in body
    assert body.count("<polyline") == 1


def test_report_from_the_context_and_a_shared_run(
    where: Path, mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """``report=True`` in mlflow_config reaches every tracked task: a child that shares its parent's
    run writes a tab about that run (still RUNNING then), and the parent writes one when it ends."""
    config = config_for(mlflow_server, experiment[1], report=True)
    parent, child = run_local(where, config, shared_parent)
    assert parent == child
    bodies = [tab_body(p.read_text()) for p in reports(where)]
    assert len(bodies) == 2
    statuses = sorted(re.findall(r"<td>(RUNNING|FINISHED)</td>", b)[0] for b in bodies)
    assert statuses == ["FINISHED", "RUNNING"]
    assert all("<td>child</td>" in b for b in bodies)


def test_no_report_without_the_option(
    where: Path, mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """Without ``report=True`` there is no MLflow tab and no read-back request."""
    mark = mlflow_server.mark()
    run_local(where, config_for(mlflow_server, experiment[1]), plain)
    seen = mlflow_server.requests(mark)
    assert GET_RUN not in seen and HISTORY not in seen
    assert not any(TAB in p.read_text() for p in reports(where))


@pytest.mark.parametrize("policy", ["warn", "raise"])
def test_failing_read_back(
    where: Path,
    mlflow_server: MlflowServer,
    experiment: tuple[str, str],
    client: MlflowClient,
    policy: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the run cannot be read back, its final status is set first either way; under ``warn`` the
    task returns its result and the tab says why it is empty; under ``raise`` the task fails."""

    def refuse_reads(method: str, path: str) -> bool:
        return not path.endswith("/runs/get")

    relay = Relay(mlflow_server.uri, before=refuse_reads)
    try:
        config = mlflow_config(
            tracking_uri=relay.uri,
            experiment_id=experiment[1],
            on_tracking_error=policy,  # type: ignore[arg-type]
            request_retries=0,
            request_timeout=2,
            outage_timeout=0,  # a server that hangs up on reads is otherwise waited for, as an outage
            report=True,
        )
        if policy == "warn":
            run_id = run_local(where, config, plain)
            assert client.get_run(run_id).info.status == "FINISHED"
            [page] = reports(where)
            assert "could not be read back" in page.read_text()
            assert run_id in page.read_text()
            assert any("shows no data" in r.getMessage() for r in caplog.records)
        else:
            with pytest.raises(flyte.errors.RuntimeUserError, match="could not read run"):
                run_local(where, config, plain)
            [run] = client.search_runs([experiment[1]])
            assert run.info.status == "FINISHED"
            [page] = reports(where)
            assert "could not be read back" in page.read_text()
    finally:
        relay.close()


# --- in the browser ----------------------------------------------------------------------------


def _open(browser: Browser, page_html: Path) -> tuple[Page, list[str], list[str]]:
    """Open a saved report with the network cut off; return the page, the requests it tried and the
    console messages."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    tried: list[str] = []
    console: list[str] = []

    def block(route: Any) -> None:
        tried.append(route.request.url)
        route.abort()

    page.route(re.compile(r"^(?!file:).*"), block)
    page.on("console", lambda m: console.append(m.text))
    page.goto(page_html.as_uri())
    return page, tried, console


def test_report_in_chromium(
    where: Path, mlflow_server: MlflowServer, experiment: tuple[str, str], browser: Browser
) -> None:
    """In headless Chromium the MLflow tab shows the run, its params as text (no script runs), charts
    with real geometry and the ranked children; the tab itself fetches nothing. The screenshot is the
    one in docs/what-you-see.md."""
    rmses = [0.31, 0.12, 0.27, 0.45, 0.18]
    parent = run_local(where, config_for(mlflow_server, experiment[1]), study, rmses=rmses)
    [path] = [p for p in reports(where) if f">{parent}<" in p.read_text()]
    page, tried, _ = _open(browser, path)
    try:
        page.get_by_text(TAB, exact=True).click()
        tab = page.locator(".mlflow-report")
        assert tab.is_visible()
        text = tab.inner_text()
        assert SCRIPT_PARAM in text and IMG_PARAM in text
        assert page.evaluate("window.__mlflow_xss") is None
        assert "FINISHED" in text and parent in text
        params = tab.locator("table.params tbody tr")
        assert params.count() == 3
        assert sorted(params.nth(i).locator("td").first.inner_text() for i in range(3)) == [
            "img",
            "n_trials",
            "note",
        ]
        lines = tab.locator("svg polyline")
        assert lines.count() == 2
        for i in range(lines.count()):
            box = lines.nth(i).bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 20
        rows = tab.locator("table.children tbody tr")
        assert rows.count() == len(rmses)
        shown = [float(rows.nth(i).locator("td").nth(3).inner_text()) for i in range(rows.count())]
        assert shown == sorted(rmses)
        first_link = rows.first.locator("a").get_attribute("href")
        assert first_link is not None and first_link.startswith(mlflow_server.uri + "/#/experiments/")
        # The tab asks for nothing: the only request is the font link of Flyte's own page template.
        assert all("fonts.googleapis.com" in url for url in tried), tried
        screenshot(tab, "report-tab")
    finally:
        page.close()
