"""The report tab's HTML: a pure function of the plain values read back, bounded whatever the run holds.

Every piece of text is escaped (Flyte inserts tab bodies as they are); charts are inline SVG: no
script, no network. What is left out is said on the page.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import urlsplit

from flyteplugins.mlflow._report.read import MAX_CHARTS, MAX_CHILDREN, Chart, RunView
from flyteplugins.mlflow._settings.enums import ReportGoal

__all__ = ["MAX_CHILD_METRICS", "MAX_METRICS", "MAX_PARAMS", "MAX_TEXT", "render", "render_failure"]

MAX_PARAMS: Final = 200
"""Param rows (by name); the page says how many more there are."""
MAX_METRICS: Final = 200
"""Rows of the latest-metrics table (by name); the page says how many more there are."""
MAX_CHILD_METRICS: Final = 6
"""Metric columns of the children table: ``report_metric`` first, then the others by name."""
MAX_TEXT: Final = 300
"""Characters shown of any one name or value; the page says how many were cut."""

_WIDTH: Final = 280
_HEIGHT: Final = 110
_PAD_X: Final = 8
_PAD_TOP: Final = 16
_PAD_BOTTOM: Final = 18


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
    if view.trace_id:
        parts.append(
            f'<h3>Trace</h3><p class="trace">This Flyte run is the MLflow trace '
            f"{_href(view.trace_link, _text(view.trace_id))}.</p>"
        )
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
