"""Reading a finished run back for its report tab, in a fixed number of requests, as plain values.

One ``runs/get``, one ``runs/search`` for the nested children, and one ``metrics/get-history`` per
charted metric (at most :data:`MAX_CHARTS`; none for a metric logged without steps).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import urlsplit

import attrs

from flyteplugins.mlflow._plan.plan import ReportSpec
from flyteplugins.mlflow._settings.checks import DEFAULT_LINK_TEMPLATE, TRACE_PAGE_TEMPLATE
from flyteplugins.mlflow._settings.enums import ReportGoal
from flyteplugins.mlflow._transport.client import Client
from mlflow.entities import Metric, Run

__all__ = [
    "MAX_CHARTS",
    "MAX_CHILDREN",
    "POINTS_DRAWN",
    "POINTS_READ",
    "Chart",
    "Child",
    "RunView",
    "downsample",
    "read_back",
    "with_trace",
]

MAX_CHARTS: Final = 12
"""Metrics drawn as charts (by name); the others are listed by their latest value only."""
POINTS_READ: Final = 10_000
"""Points read per charted metric: the first ones logged. A longer history is drawn up to there."""
POINTS_DRAWN: Final = 200
"""Points per chart after downsampling (the lowest and highest value of each of 100 step buckets)."""
MAX_CHILDREN: Final = 25
"""Nested children shown, best first; the page says when there are more."""


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
    trace_id: str | None = None
    """The MLflow trace of the Flyte run, for a traced task (``tracing=True``)."""
    trace_link: str | None = None


# --- reading the run back ----------------------------------------------------------------------


def _host(spec: ReportSpec, tracking_uri: str) -> str | None:
    host = spec.link_host
    if host is None and urlsplit(tracking_uri).scheme.lower() in ("http", "https"):
        host = tracking_uri
    return None if host is None else host.rstrip("/")


def _link(spec: ReportSpec, tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    host = _host(spec, tracking_uri)
    if host is None:
        return None
    template = spec.link_template or DEFAULT_LINK_TEMPLATE
    return template.format(host=host, experiment_id=experiment_id, run_id=run_id)


def with_trace(view: RunView, tracking_uri: str, trace: tuple[str, str] | None) -> RunView:
    """``view`` naming ``trace`` (its id and experiment), linked to MLflow's Traces view when a host is
    known (``link_host``, else an http tracking URI); ``view`` itself when there is no trace."""
    if trace is None:
        return view
    trace_id, experiment_id = trace
    host = _host(view.spec, tracking_uri)
    link = None
    if host is not None:
        link = TRACE_PAGE_TEMPLATE.format(host=host, experiment_id=experiment_id, trace_id=trace_id)
    return attrs.evolve(view, trace_id=trace_id, trace_link=link)


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
