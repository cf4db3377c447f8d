"""The "MLflow" tab in a Flyte task's report: the run read back once when it ends, drawn as static HTML.

With ``report=True``, a task that owns or shares a run reads the run back after its final status is
set, renders it and writes the tab, on success and on failure alike, then saves the report itself
(Flyte saves it only after a successful task with ``@env.task(report=True)``). The read-back costs:

* one ``runs/get``: status, times, params, and the latest value of every metric;
* one ``runs/search`` for the run's nested children (``mlflow.parentRunId``), best first by
  ``report_metric`` when one is named, ordered by the client;
* one ``metrics/get-history`` per charted metric: at most :data:`MAX_CHARTS`, and none for a metric
  whose highest step is 0 (logged without steps), which is shown by its value alone.

The page is bounded whatever the run holds (see the limits below); what is left out is said on the
page. Rendering is a pure function of plain values (:func:`render`), with every piece of text
escaped: Flyte inserts tab bodies as they are. The charts are inline SVG: no script, no network.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final
from urllib.parse import urlsplit

import attrs

from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._plan.plan import ReportSpec
from flyteplugins.mlflow._runs.open import Opened
from flyteplugins.mlflow._settings.checks import DEFAULT_LINK_TEMPLATE
from flyteplugins.mlflow._settings.enums import OnTrackingError, ReportGoal
from flyteplugins.mlflow._transport.client import Client, client_for
from flyteplugins.mlflow._transport.servers import describe
from mlflow.entities import Metric, Run

__all__ = [
    "MAX_CHARTS",
    "MAX_CHILDREN",
    "MAX_CHILD_METRICS",
    "MAX_METRICS",
    "MAX_PARAMS",
    "MAX_TEXT",
    "POINTS_DRAWN",
    "POINTS_READ",
    "TAB",
    "Chart",
    "Child",
    "RunView",
    "downsample",
    "read_back",
    "render",
    "write",
    "write_async",
]

logger = logging.getLogger("flyteplugins.mlflow")

TAB: Final = "MLflow"
MAX_CHARTS: Final = 12
"""Metrics drawn as charts (by name); the others are listed by their latest value only."""
POINTS_READ: Final = 10_000
"""Points read per charted metric: the first ones logged. A longer history is drawn up to there."""
POINTS_DRAWN: Final = 200
"""Points per chart after downsampling (the lowest and highest value of each of 100 step buckets)."""
MAX_PARAMS: Final = 200
"""Param rows (by name); the page says how many more there are."""
MAX_METRICS: Final = 200
"""Rows of the latest-metrics table (by name); the page says how many more there are."""
MAX_CHILDREN: Final = 25
"""Nested children shown, best first; the page says when there are more."""
MAX_CHILD_METRICS: Final = 6
"""Metric columns of the children table: ``report_metric`` first, then the others by name."""
MAX_TEXT: Final = 300
"""Characters shown of any one name or value; the page says how many were cut."""

_WIDTH: Final = 280
_HEIGHT: Final = 110
_PAD_X: Final = 8
_PAD_TOP: Final = 16
_PAD_BOTTOM: Final = 18


# --- plain values ------------------------------------------------------------------------------


@attrs.frozen
class Chart:
    """One metric's history: ``points`` as ``(step, value)``, already downsampled.

    ``logged`` is how many points were read, ``cut`` whether the history had more than were read.
    """

    key: str
    points: tuple[tuple[int, float], ...]
    logged: int
    cut: bool = False


@attrs.frozen
class Child:
    """A nested child run and its latest metrics."""

    run_id: str
    name: str
    status: str
    metrics: Mapping[str, float]
    link: str | None = None


@attrs.frozen
class RunView:
    """Everything the tab shows, as plain values."""

    run_id: str
    name: str
    status: str
    start_ms: int | None
    end_ms: int | None
    now_ms: int
    link: str | None
    params: Mapping[str, str]
    metrics: Mapping[str, tuple[float, int]]  # key -> (latest value, its step)
    charts: tuple[Chart, ...] = ()
    children: tuple[Child, ...] = ()
    more_children: bool = False
    spec: ReportSpec = attrs.field(factory=ReportSpec)


# --- reading the run back ----------------------------------------------------------------------


def _link(spec: ReportSpec, tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    host = spec.link_host
    if host is None and urlsplit(tracking_uri).scheme.lower() in ("http", "https"):
        host = tracking_uri
    if host is None:
        return None
    template = spec.link_template or DEFAULT_LINK_TEMPLATE
    return template.format(host=host.rstrip("/"), experiment_id=experiment_id, run_id=run_id)


def _order_by(spec: ReportSpec) -> str | None:
    if spec.metric is None:
        return None
    direction = "ASC" if spec.goal is ReportGoal.MINIMIZE else "DESC"
    return f"metrics.`{spec.metric}` {direction}"


def read_back(client: Client, run_id: str, spec: ReportSpec, now_ms: int | None = None) -> RunView:
    """Read a run, its charted metric histories and its nested children: see the module for the cost.

    Raises:
        MlflowTrackingError: a request failed.
    """
    run = client.get_run(run_id)
    info = run.info
    latest = {m.key: (float(m.value), int(m.step)) for m in _latest(run)}
    stepped = sorted(key for key, (_, step) in latest.items() if step != 0)
    charts = []
    for key in stepped[:MAX_CHARTS]:
        points, cut = client.metric_history(run_id, key, POINTS_READ)
        charts.append(Chart(key, downsample(points, POINTS_DRAWN), len(points), cut))
    order = _order_by(spec)
    search = f"tags.`mlflow.parentRunId` = '{run_id}'"
    if order is None:
        found = client.search_runs([info.experiment_id], search, MAX_CHILDREN + 1)
    else:
        found = client.search_runs([info.experiment_id], search, MAX_CHILDREN + 1, order)
    children = tuple(
        Child(
            run_id=c.info.run_id,
            name=c.info.run_name or c.info.run_id,
            status=c.info.status,
            metrics=dict(c.data.metrics),
            link=_link(spec, client.uri, c.info.experiment_id, c.info.run_id),
        )
        for c in found[:MAX_CHILDREN]
    )
    return RunView(
        run_id=info.run_id,
        name=info.run_name or info.run_id,
        status=info.status,
        start_ms=info.start_time,
        end_ms=info.end_time,
        now_ms=int(time.time() * 1000) if now_ms is None else now_ms,
        link=_link(spec, client.uri, info.experiment_id, info.run_id),
        params=dict(run.data.params),
        metrics=latest,
        charts=tuple(charts),
        children=children,
        more_children=len(found) > MAX_CHILDREN,
        spec=spec,
    )


def _latest(run: Run) -> list[Metric]:
    """The latest point of every metric, with its step (``run.data.metrics`` keeps only the values)."""
    return [Metric.from_proto(m) for m in run.to_proto().data.metrics]


def downsample(points: Iterable[Metric], limit: int) -> tuple[tuple[int, float], ...]:
    """A metric's history as ``(step, value)`` in step order, at most ``limit`` points.

    A step logged more than once keeps its last value. Non-finite values are left out. Past
    ``limit``, the steps are cut into ``limit // 2`` buckets and each keeps its lowest and highest
    value, in step order, so spikes stay visible.
    """
    by_step: dict[int, tuple[int, float]] = {}
    for m in points:
        value = float(m.value)
        if not math.isfinite(value):
            continue
        seen = by_step.get(int(m.step))
        if seen is None or m.timestamp >= seen[0]:
            by_step[int(m.step)] = (m.timestamp, value)
    series = sorted((step, value) for step, (_, value) in by_step.items())
    if len(series) <= limit:
        return tuple(series)
    buckets = max(1, limit // 2)
    out: list[tuple[int, float]] = []
    for b in range(buckets):
        chunk = series[b * len(series) // buckets : (b + 1) * len(series) // buckets]
        if not chunk:
            continue
        low = min(chunk, key=lambda p: p[1])
        high = max(chunk, key=lambda p: p[1])
        out.extend(sorted({low, high}))
    return tuple(out)


# --- rendering ---------------------------------------------------------------------------------


def _text(value: object) -> str:
    """Escaped text, cut at :data:`MAX_TEXT` characters with a note of how many were cut."""
    text = str(value)
    if len(text) <= MAX_TEXT:
        return html.escape(text)
    return html.escape(text[:MAX_TEXT]) + f'<span class="cut">… (+{len(text) - MAX_TEXT} characters)</span>'


def _number(value: float) -> str:
    return html.escape(f"{value:.6g}")


def _href(url: str | None, label: str) -> str:
    if url and urlsplit(url).scheme.lower() in ("http", "https"):
        return f'<a href="{html.escape(url, quote=True)}" target="_blank" rel="noopener">{label}</a>'
    return label


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _more(shown: int, total: int, what: str) -> str:
    if total <= shown:
        return ""
    return f'<p class="more">{total - shown} more {what} not shown (the first {shown} by name are).</p>'


def _chart(chart: Chart) -> str:
    title = _text(chart.key)
    note = f"{chart.logged} points"
    if chart.cut:
        note = f"the first {chart.logged} points logged (the history has more)"
    elif len(chart.points) < chart.logged:
        note = f"{chart.logged} points, {len(chart.points)} drawn"
    if not chart.points:
        body = '<text x="8" y="60">no finite values</text>'
    else:
        steps = [s for s, _ in chart.points]
        values = [v for _, v in chart.points]
        s0, s1, v0, v1 = min(steps), max(steps), min(values), max(values)
        inner_w = _WIDTH - 2 * _PAD_X
        inner_h = _HEIGHT - _PAD_TOP - _PAD_BOTTOM

        def x(step: int) -> float:
            return _PAD_X + (inner_w * (step - s0) / (s1 - s0) if s1 > s0 else inner_w / 2)

        def y(value: float) -> float:
            return _PAD_TOP + (inner_h * (v1 - value) / (v1 - v0) if v1 > v0 else inner_h / 2)

        if len(chart.points) == 1:
            shape = f'<circle cx="{x(s0):.1f}" cy="{y(v0):.1f}" r="3" fill="#0b6bcb"/>'
        else:
            coords = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in chart.points)
            shape = f'<polyline fill="none" stroke="#0b6bcb" stroke-width="1.5" points="{coords}"/>'
        body = (
            f'<text x="{_PAD_X}" y="11">max {_number(v1)}</text>'
            f'<text x="{_WIDTH - _PAD_X}" y="11" text-anchor="end">min {_number(v0)}</text>'
            f"{shape}"
            f'<text x="{_PAD_X}" y="{_HEIGHT - 4}">step {s0}</text>'
            f'<text x="{_WIDTH - _PAD_X}" y="{_HEIGHT - 4}" text-anchor="end">step {s1}</text>'
        )
    return (
        f'<figure class="chart"><figcaption>{title}</figcaption>'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" aria-label="{title}">{body}</svg>'
        f'<div class="note">{html.escape(note)}</div></figure>'
    )


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'


def _children(view: RunView) -> str:
    spec = view.spec
    keys = sorted({k for c in view.children for k in c.metrics} - {spec.metric or ""})
    columns = ([spec.metric] if spec.metric else []) + keys
    shown = columns[:MAX_CHILD_METRICS]
    rows = [
        [
            str(i),
            _href(c.link, _text(c.name)),
            html.escape(c.status),
            *(_number(c.metrics[k]) if k in c.metrics else "-" for k in shown),
        ]
        for i, c in enumerate(view.children, 1)
    ]
    if spec.metric:
        better = "lowest" if spec.goal is ReportGoal.MINIMIZE else "highest"
        order = f"best first: {better} <code>{_text(spec.metric)}</code> first, runs without it last"
    else:
        order = "newest first (set <code>report_metric</code> to rank them)"
    more = ""
    if view.more_children:
        more = (
            f'<p class="more">More nested runs exist; the first {MAX_CHILDREN} in this order are shown.</p>'
        )
    if len(columns) > len(shown):
        more += f'<p class="more">{len(columns) - len(shown)} more metric columns not shown.</p>'
    head = ["#", "run", "status", *(_text(k) for k in shown)]
    return f"<h3>Nested runs</h3><p>{order}.</p>{_table(head, rows, 'children')}{more}"


_STYLE: Final = (
    "<style>"
    ".mlflow-report{font-family:system-ui,sans-serif;font-size:14px;color:#222}"
    ".mlflow-report table{border-collapse:collapse;margin:4px 0 12px}"
    ".mlflow-report th,.mlflow-report td{border:1px solid #ddd;padding:3px 8px;text-align:left;"
    "vertical-align:top;max-width:40em;overflow-wrap:anywhere}"
    ".mlflow-report th{background:#f4f4f4}"
    ".mlflow-report .charts{display:flex;flex-wrap:wrap;gap:12px}"
    ".mlflow-report figure{margin:0;border:1px solid #ddd;padding:6px}"
    ".mlflow-report figcaption{font-weight:600}"
    ".mlflow-report svg text{font-size:10px;fill:#555}"
    ".mlflow-report .note,.mlflow-report .more,.mlflow-report .cut{color:#666;font-size:12px}"
    "</style>"
)


def render(view: RunView) -> str:
    """The tab's HTML for ``view``: every piece of text escaped, no script, nothing fetched."""
    if view.start_ms is None:
        duration = "unknown"
    elif view.end_ms is None:
        duration = f"{_duration(max(0, view.now_ms - view.start_ms) / 1000)} so far"
    else:
        duration = _duration(max(0, view.end_ms - view.start_ms) / 1000)
    summary = _table(
        ["run", "run id", "status", "duration"],
        [
            [
                _href(view.link, _text(view.name)),
                _text(view.run_id),
                html.escape(view.status),
                html.escape(duration),
            ]
        ],
        "summary",
    )
    params = sorted(view.params.items())
    param_rows = [[_text(k), _text(v)] for k, v in params[:MAX_PARAMS]]
    metrics = sorted(view.metrics.items())
    metric_rows = [[_text(k), _number(v), str(step)] for k, (v, step) in metrics[:MAX_METRICS]]
    parts = [
        _STYLE,
        '<div class="mlflow-report">',
        f"<h2>MLflow run {_href(view.link, _text(view.name))}</h2>",
        summary,
        "<h3>Params</h3>",
        _table(["param", "value"], param_rows, "params") if params else "<p>No params.</p>",
        _more(MAX_PARAMS, len(params), "params"),
        "<h3>Metrics</h3>",
        _table(["metric", "latest", "step"], metric_rows, "metrics") if metrics else "<p>No metrics.</p>",
        _more(MAX_METRICS, len(metrics), "metrics"),
    ]
    if view.charts:
        stepped = sum(1 for _, step in view.metrics.values() if step != 0)
        parts.append('<div class="charts">' + "".join(_chart(c) for c in view.charts) + "</div>")
        if stepped > len(view.charts):
            parts.append(
                f'<p class="more">{stepped - len(view.charts)} more metrics with steps are not drawn '
                f"(the first {MAX_CHARTS} by name are).</p>"
            )
    if view.children:
        parts.append(_children(view))
    parts.append("</div>")
    return "".join(parts)


def render_failure(run_id: str, reason: str) -> str:
    """The tab's HTML when the run could not be read back."""
    return (
        f'{_STYLE}<div class="mlflow-report"><h2>MLflow run {_text(run_id)}</h2>'
        f"<p>The run could not be read back for this report: {_text(reason)}</p></div>"
    )


# --- writing the tab ---------------------------------------------------------------------------


def _collect(opened: Opened, spec: ReportSpec) -> tuple[str, Exception | None]:
    run_id = opened.run.info.run_id
    try:
        view = read_back(client_for(opened.plan.tracking_uri, opened.plan.policy), run_id, spec)
        return render(view), None
    except Exception as e:
        return render_failure(run_id, str(e)), e


def _settle(opened: Opened, error: BaseException | None, failure: Exception | None) -> None:
    if failure is None:
        return
    raising = error is None and opened.plan.on_error is OnTrackingError.RAISE
    if raising and isinstance(failure, MlflowTrackingError):
        msg = f"the MLflow report could not read run {opened.run.info.run_id} back: {failure}"
        raise MlflowTrackingError(msg) from failure
    logger.warning(
        "The MLflow report of run %s shows no data: %s (tracking URI %s)",
        opened.run.info.run_id,
        failure,
        describe(opened.plan.tracking_uri),
    )


def write(opened: Opened, error: BaseException | None) -> None:
    """Write and save the tab of a sync task whose run has ended (or that shared a run), if asked for.

    Raises:
        MlflowTrackingError: the run could not be read back after a successful body, under ``raise``.
    """
    spec = opened.plan.report
    if spec is None:
        return
    import flyte.report

    body, failure = _collect(opened, spec)
    try:
        flyte.report.get_tab(TAB).replace(body)
        flyte.report.flush()
    except Exception as e:
        logger.warning("The MLflow report tab could not be saved: %s", e)
    _settle(opened, error, failure)


async def write_async(opened: Opened, error: BaseException | None) -> None:
    """:func:`write` for async tasks: the read-back runs on a worker thread, the save on the loop.

    Raises:
        MlflowTrackingError: the run could not be read back after a successful body, under ``raise``.
    """
    spec = opened.plan.report
    if spec is None:
        return
    import flyte.report

    body, failure = await asyncio.to_thread(_collect, opened, spec)
    try:
        flyte.report.get_tab(TAB).replace(body)
        await flyte.report.flush.aio()
    except Exception as e:
        logger.warning("The MLflow report tab could not be saved: %s", e)
    _settle(opened, error, failure)
