"""The plugin's own requests to an HTTP(S) tracking server: bounded in time, retries and concurrency.

``MlflowClient`` retries for minutes, with limits from process-wide environment variables. The plugin
sends its few calls one attempt at a time (:mod:`.http`), repeats only what is safe to repeat, and
keeps at most :data:`MAX_CONCURRENT_REQUESTS` in flight. The rules, and why not urllib3's ``Retry``
or tenacity, are in ``docs/design.md``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import attrs
import requests
import urllib3
from google.protobuf.message import Message

from flyteplugins.mlflow._errors import (
    MlflowTrackingError,
    TrackingRequestError,
    TrackingServerUnanswered,
    TrackingServerUnreachable,
)
from flyteplugins.mlflow._transport.auth import explain
from flyteplugins.mlflow._transport.http import send
from flyteplugins.mlflow._transport.policy import DEFAULT_POLICY, FIRST_CONTACT_BUDGET, RequestPolicy
from flyteplugins.mlflow._transport.servers import (
    NEWEST,
    describe,
    heard,
    last_heard,
    live_experiment,
    order,
    reached,
)
from flyteplugins.mlflow._transport.tls import (
    client_certificate_hint,
    untrusted_certificate,
    untrusted_message,
)
from mlflow.entities import DatasetInput, Metric, Param, Run, RunTag
from mlflow.protos.service_pb2 import (
    CreateExperiment,
    CreateRun,
    GetExperimentByName,
    GetMetricHistory,
    GetRun,
    LogBatch,
    LogInputs,
    SearchRuns,
    UpdateRun,
)
from mlflow.utils.proto_json_utils import message_to_json, parse_dict
from mlflow.utils.rest_utils import verify_rest_response

__all__ = ["MAX_CONCURRENT_REQUESTS", "RestClient"]

MAX_CONCURRENT_REQUESTS: Final = 8
_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
_NOT_PROCESSED: Final = frozenset({429, 502, 503, 504})


def _number(value: float) -> float | str:
    """A double as protobuf's JSON writes it: ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` as strings."""
    value = float(value)
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _metric_json(m: Metric) -> dict[str, Any]:
    """One metric point as ``Metric.to_proto`` and MLflow's JSON would send it."""
    body: dict[str, Any] = {"key": m.key, "value": _number(m.value), "timestamp": m.timestamp, "step": m.step}
    for field in ("model_id", "dataset_name", "dataset_digest", "run_id"):
        value = getattr(m, field, None)
        if value:
            body[field] = value
    return body


_M = TypeVar("_M", bound=Message)


@attrs.frozen
class RestClient:
    """A tracking server reached over HTTP with bounded requests."""

    uri: str
    policy: RequestPolicy = DEFAULT_POLICY

    def _call(
        self,
        action: str,
        path: str,
        request: Message | Mapping[str, Any],
        response: _M,
        *,
        get: bool = False,
        idempotent: bool = True,
        policy: RequestPolicy | None = None,
        deadline: float | None = None,
    ) -> _M:
        policy = policy or self.policy
        where = describe(self.uri)
        endpoint = "/api/2.0/mlflow/" + path
        body = json.loads(message_to_json(request)) if isinstance(request, Message) else dict(request)
        started = time.monotonic()
        # A server this process has reached is waited for through an outage, up to outage_timeout
        # (and the caller's deadline); one never reached fails within the policy's few retries.
        patient_until = started + policy.outage if reached(self.uri) else None
        if patient_until is not None and deadline is not None:
            patient_until = min(patient_until, deadline)
        # A server that has never answered this process fails within FIRST_CONTACT_BUDGET, even
        # if it takes connections and hangs: each attempt's wait for the answer is cut to fit.
        first_contact = started + FIRST_CONTACT_BUDGET if patient_until is None else None
        slot_budget = (
            policy.budget() if patient_until is None else max(policy.budget(), patient_until - started)
        )
        attempt = 0
        while True:
            attempt += 1
            failure: str
            reached_server = True
            hint = ""
            try:
                if not _take_slot(self.uri, started, slot_budget):
                    waited = time.monotonic() - started
                    msg = (
                        f"the MLflow tracking server at {where} could not be reached to {action}: it "
                        f"answered none of this process's requests while this one waited {waited:.1f}s "
                        f"for one of the {MAX_CONCURRENT_REQUESTS} request slots ({policy.describe()})"
                    )
                    raise TrackingServerUnreachable(msg)
                try:
                    answer = policy.answer_timeout
                    if first_contact is not None:
                        answer = max(0.1, min(answer, first_contact - time.monotonic()))
                    timeouts = (policy.timeout, answer)
                    reply = send(self.uri, endpoint, "GET" if get else "POST", body, timeouts)
                finally:
                    _SLOTS.release()
                heard(self.uri)
                if reply.status_code == 200:
                    verify_rest_response(reply, endpoint)
                    parse_dict(js_dict=json.loads(reply.text or "{}"), message=response)
                    return response
                failure = f"HTTP {reply.status_code}"
                retry = reply.status_code in _NOT_PROCESSED or (idempotent and reply.status_code >= 500)
                if not retry:
                    request_line = f"{'GET' if get else 'POST'} {path}"
                    error = _server_message(reply)
                    msg = (
                        f"the MLflow tracking server at {where} refused to {action} ({request_line}): "
                        f"{failure}: {error}{explain(reply.status_code)}"
                    )
                    raise TrackingRequestError(msg)
            except MlflowTrackingError:
                raise
            except Exception as e:
                if untrusted_certificate(e):  # final: waiting does not change a certificate
                    seconds = time.monotonic() - started
                    raise TrackingRequestError(untrusted_message(where, action, e, attempt, seconds)) from e
                reached_server, failure = _what_failed(e)
                retry = not reached_server or idempotent
                hint = client_certificate_hint(self.uri, e) if patient_until is None else ""
            now = time.monotonic()
            pause = policy.pause(attempt)
            waiting = patient_until is not None and now + pause < patient_until
            too_late = first_contact is not None and now + pause >= first_contact
            if not retry or too_late or (attempt > policy.retries and not waiting):
                error_type = (
                    TrackingServerUnreachable
                    if not reached_server
                    else TrackingServerUnanswered
                    if retry
                    else TrackingRequestError
                )
                verb = "did not" if reached_server else "could not be reached to"
                patience = f"; outage_timeout={policy.outage:g}s" if patient_until is not None else ""
                msg = (
                    f"the MLflow tracking server at {where} {verb} {action}: {failure} "
                    f"after {attempt} attempt{'s' if attempt > 1 else ''} in {now - started:.1f}s "
                    f"({policy.describe()}{patience}){hint}"
                )
                raise error_type(msg)
            time.sleep(pause)

    def create_run(
        self, experiment_id: str, run_name: str | None, tags: Mapping[str, str], start_ms: int
    ) -> Run:
        """Create a ``RUNNING`` run with its tags in one request (not retried once it may have landed)."""
        request: dict[str, Any] = {
            "experiment_id": experiment_id,
            "start_time": start_ms,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        if run_name:
            request["run_name"] = run_name
        reply = self._call("create a run", "runs/create", request, CreateRun.Response(), idempotent=False)
        return Run.from_proto(reply.run)

    def get_run(self, run_id: str, policy: RequestPolicy | None = None) -> Run:
        """Fetch a run."""
        request = GetRun(run_id=run_id, run_uuid=run_id)
        reply = self._call("find the run", "runs/get", request, GetRun.Response(), get=True, policy=policy)
        return Run.from_proto(reply.run)

    def set_status(
        self, run_id: str, status: str, end_ms: int | None, policy: RequestPolicy | None = None
    ) -> None:
        """Set a run's status; retried, since setting it twice is harmless."""
        request: dict[str, Any] = {"run_id": run_id, "run_uuid": run_id, "status": status}
        if end_ms is not None:
            request["end_time"] = end_ms
        self._call(f"mark the run {status}", "runs/update", request, UpdateRun.Response(), policy=policy)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on an existing run."""
        request = {"run_id": run_id, "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        self._call("tag the run", "runs/log-batch", request, LogBatch.Response())

    def log_batch(
        self,
        run_id: str,
        metrics: list[Metric],
        params: list[Param],
        tags: list[RunTag],
        deadline: float | None = None,
    ) -> None:
        """Store values MLflow's fluent calls queued, in one request; the queue's ``send``.

        The body is what MLflow's ``RestStore.log_batch`` sends, written out directly: building
        protobuf messages and MLflow's indented JSON costs more client CPU than the request itself.
        Retried like a status, since the server stores a metric point given twice once. ``deadline``
        (``time.monotonic()``) ends the wait for a server that is away sooner than ``outage_timeout``.
        """
        request = {
            "run_id": run_id,
            "metrics": [_metric_json(m) for m in metrics],
            "params": [{"key": p.key, "value": p.value} for p in params],
            "tags": [{"key": t.key, "value": t.value} for t in tags],
        }
        self._call("store queued values", "runs/log-batch", request, LogBatch.Response(), deadline=deadline)

    def log_inputs(self, run_id: str, datasets: list[DatasetInput]) -> None:
        """Record datasets as the run's inputs in one request; retried, as the server keeps one copy."""
        request = LogInputs(run_id=run_id, datasets=[d.to_proto() for d in datasets])
        self._call("record the run's inputs", "runs/log-inputs", request, LogInputs.Response())

    def search_runs(
        self, experiment_ids: list[str], filter_string: str, max_results: int, order_by: str = NEWEST
    ) -> list[Run]:
        """The live runs of ``experiment_ids`` matching ``filter_string``, by ``order_by``, in one request."""
        request = SearchRuns(
            experiment_ids=experiment_ids,
            filter=filter_string,
            max_results=max_results,
            order_by=order(order_by),
        )
        reply = self._call("search the runs", "runs/search", request, SearchRuns.Response())
        return [Run.from_proto(run) for run in reply.runs]

    def metric_history(self, run_id: str, key: str, max_results: int) -> tuple[list[Metric], bool]:
        """The first ``max_results`` points of a metric's history in one request, and whether it has more."""
        request = GetMetricHistory(run_id=run_id, run_uuid=run_id, metric_key=key, max_results=max_results)
        reply = self._call(
            "read a metric's history", "metrics/get-history", request, GetMetricHistory.Response(), get=True
        )
        return [Metric.from_proto(m) for m in reply.metrics], bool(reply.next_page_token)

    def _find_experiment(self, name: str) -> str | None:
        try:
            found = self._call(
                "find the experiment",
                "experiments/get-by-name",
                GetExperimentByName(experiment_name=name),
                GetExperimentByName.Response(),
                get=True,
            )
        except TrackingRequestError as e:
            if "RESOURCE_DOES_NOT_EXIST" in str(e):
                return None
            raise
        return live_experiment(name, found.experiment.experiment_id, found.experiment.lifecycle_stage)

    def experiment_id(self, name: str) -> str:
        """Return the id of the experiment called ``name``, creating it if it does not exist."""
        existing = self._find_experiment(name)
        if existing is not None:
            return existing
        try:
            created = self._call(
                "create the experiment",
                "experiments/create",
                CreateExperiment(name=name),
                CreateExperiment.Response(),
                idempotent=False,
            )
            return str(created.experiment_id)
        except TrackingRequestError as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e):
                raise
        # Another process created it in the meantime.
        again = self._find_experiment(name)
        if again is None:
            msg = f"experiment {name!r} was reported to exist, but the tracking server cannot find it"
            raise TrackingRequestError(msg)
        return again


def _take_slot(uri: str, started: float, budget: float) -> bool:
    """Wait for a request slot; give up (``False``) once ``uri`` has been silent for ``budget`` seconds.

    Silence counts from the later of ``started`` and the server's last answer to any of this
    process's requests, so calls queued behind a slow server that still answers keep waiting, and
    calls queued behind a server that answers nothing end within one call's budget, however many
    of them there are.
    """
    while True:
        remaining = budget - (time.monotonic() - max(started, last_heard(uri, started)))
        if remaining <= 0:
            return False
        if _SLOTS.acquire(timeout=min(remaining, 1.0)):
            return True


def _server_message(reply: requests.Response) -> str:
    try:
        body = json.loads(reply.text)
    except ValueError:
        return reply.text[:200]
    if isinstance(body, dict):
        return f"{body.get('error_code', '')} {body.get('message', '')}".strip()[:500]
    return reply.text[:200]


def _requests_cause(error: BaseException) -> BaseException | None:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, requests.exceptions.RequestException):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _what_failed(error: BaseException) -> tuple[bool, str]:
    """Whether a failed request may have reached the server, and a short name for the failure.

    Only a connection that was never made (refused, connect timeout, unknown host) proves that the
    server never saw the request. With retries off, requests reports a read timeout or a connection
    dropped mid-request as a ``ConnectionError`` too, so look for urllib3's own reason in the chain.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, urllib3.exceptions.NewConnectionError):
            return False, "ConnectionError"
        if isinstance(seen, urllib3.exceptions.ConnectTimeoutError):
            return False, "ConnectTimeout"
        if isinstance(seen, urllib3.exceptions.ReadTimeoutError):
            return True, "ReadTimeout"
        if isinstance(seen, urllib3.exceptions.ProtocolError):
            return True, "ConnectionAborted"
        reason = seen.reason if isinstance(seen, urllib3.exceptions.MaxRetryError) else None
        seen = reason or seen.__cause__ or seen.__context__
    cause = _requests_cause(error)
    if isinstance(cause, requests.exceptions.ConnectTimeout):
        return False, "ConnectTimeout"
    return True, type(cause or error).__name__
