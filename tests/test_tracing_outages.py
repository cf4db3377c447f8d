"""A traced run through tracking-server outages: a real ``mlflow server`` stopped and started again.

MLflow keeps a trace's spans in memory until its root span ends, then its exporter sends the trace in
the background, each request retried by MLflow (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, 7 by default:
about 4 minutes of backoff). A tracked root's span ends after its run's end, which waits for the server
up to ``outage_timeout``. The plugin's journal holds runs' values and statuses, not spans. Both tests
cut MLflow's retries to none, so what they show is the plugin's part. ``docs/tracing.md`` says what
this means.
"""

from __future__ import annotations

import logging

import flyte
import mlflow
import pytest
from mlflow.tracing.constant import TraceMetadataKey
from mlflow.tracking import MlflowClient
from mlflow.tracking.fluent import flush_trace_async_logging

from flyteplugins.mlflow import mlflow_run
from tests.helpers.support import REPLAY, own_run_id, replay, steps
from tests.test_outages import Outages, _outages, context, outage_server, outages, where
from tests.test_tracing import read_traces

__all__ = ["outage_server", "outages", "where"]  # the fixtures, shared with tests/test_outages.py

env = flyte.TaskEnvironment(name="tracing-outages")


@mlflow_run(tracing=True)
@env.task
def spans_across_a_restart(down: float) -> str:
    """A span ends before the server goes away, one while it is away; the task returns while it is."""
    with mlflow.start_span(name="before"):
        mlflow.log_metric("loss", 1.0, step=0)
    _outages[0].stop_for(down)
    with mlflow.start_span(name="during") as span:
        span.set_inputs({"down": down})
    return own_run_id()


@mlflow_run(tracing=True, async_logging=True, outage_timeout=2.0, on_tracking_error="warn")
@env.task
def traced_and_the_server_stays_away() -> str:
    _outages[0].server.stop()
    with mlflow.start_span(name="lost"):
        mlflow.log_metric("loss", 0.5, step=0)
    return own_run_id()


def test_spans_wait_through_a_restart(
    outages: Outages, where: tuple[MlflowClient, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server is away when the task returns and back within ``outage_timeout``: the run's end waits
    for it, and the trace, sent once the root span ends after it, is whole, with the span that ended
    while the server was away."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client, experiment_id = where
    settings = context(outages.server, experiment_id)
    run_id = flyte.with_runcontext(mode="local", custom_context=settings).run(spans_across_a_restart, 3.0)
    run_id = run_id.outputs()[0]
    flush_trace_async_logging()
    (trace,) = read_traces(client, experiment_id)
    names = sorted(s.name for s in trace.data.spans)
    assert names == ["before", "during", "tracing-outages.spans_across_a_restart"]
    assert trace.info.trace_metadata[TraceMetadataKey.SOURCE_RUN] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"


def test_past_mlflows_retries_the_trace_is_lost_and_the_run_journaled(
    outages: Outages,
    where: tuple[MlflowClient, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With MLflow's retries cut to none and the server away past ``outage_timeout``, the run's point and
    status go to the journal and are replayed; the trace is dropped by MLflow's exporter, with its
    warning, and is not in the journal: after the replay the run is whole and the experiment has no
    trace."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client, experiment_id = where
    caplog.set_level(logging.WARNING)
    settings = context(outages.server, experiment_id)
    run = flyte.with_runcontext(mode="local", custom_context=settings).run(traced_and_the_server_stays_away)
    run_id = run.outputs()[0]
    flush_trace_async_logging()
    found = REPLAY.search(caplog.text)
    assert found, caplog.text
    assert any(r.name.startswith("mlflow.tracing") for r in caplog.records if r.levelno >= logging.WARNING)
    outages.wait_up()
    assert replay(found.group(1)).returncode == 0
    assert steps(client, run_id, "loss") == [0]
    assert steps(client, run_id, "loss") == [0]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert list(client.search_traces(locations=[experiment_id])) == []
