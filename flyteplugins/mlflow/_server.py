"""The plugin's own requests to the tracking server, bounded in time, retries and concurrency.

``MlflowClient`` retries a failing HTTP request for minutes and takes its limits from process-wide
environment variables, so one call cannot be bounded without changing them for everyone. The plugin
makes only a handful of calls of its own (create a run, finalize it, look a run or an experiment
up, and with ``async_logging=True`` send the queued values), so for ``http(s)`` tracking URIs it
sends them itself, one attempt at a time (see ``_http``), and retries in a loop of its own:

* a request that never reached the server (connection refused, connect timeout) is always retried;
* a request that may have been processed (read timeout, HTTP 500) is retried only if repeating it is
  harmless: finalizing or reading a run, or storing a batch of values (the server keeps one copy of
  a metric point sent twice), yes; creating a run, no, since that could leave a duplicate run
  ``RUNNING`` forever;
* ``429``, ``502``, ``503`` and ``504`` mean "not processed" and are retried for every call.
* a server certificate that does not verify is never retried, reached before or not (see ``_tls``).

At most :data:`MAX_CONCURRENT_REQUESTS` of these requests are in flight per process, so a burst of
parallel trials cannot exhaust the server's connection pool. A call waiting for a free slot gives
up once the server has answered none of the process's requests for as long as one call may take
(:meth:`RequestPolicy.budget`), so a silent server fails every queued trial in
seconds, not after the queue has timed out eight at a time. Other tracking stores (a local SQLite
file, a ``file:`` directory, Databricks) are reached through ``MlflowClient`` as usual.

Errors name the server by ``host:port`` only.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import urlsplit

import attrs
import requests
import urllib3
from google.protobuf.message import Message

from flyteplugins.mlflow._auth import explain
from flyteplugins.mlflow._errors import (
    MlflowTrackingError,
    TrackingRequestError,
    TrackingServerUnanswered,
    TrackingServerUnreachable,
)
from flyteplugins.mlflow._http import send
from flyteplugins.mlflow._tls import client_certificate_hint, untrusted_certificate, untrusted_message
from mlflow.entities import DatasetInput, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
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
from mlflow.tracking.client import MlflowClient
from mlflow.utils.proto_json_utils import message_to_json, parse_dict
from mlflow.utils.rest_utils import verify_rest_response

__all__ = [
    "DEFAULT_OUTAGE_TIMEOUT",
    "DEFAULT_POLICY",
    "MAX_CONCURRENT_REQUESTS",
    "RequestPolicy",
    "Server",
    "describe",
    "reached",
    "server_for",
    "vouch",
]

MAX_CONCURRENT_REQUESTS: Final = 8
_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
_HEARD: dict[str, float] = {}  # tracking URI -> when it last answered one of our requests (monotonic)
_VOUCHED: set[str] = set()  # tracking URIs where a caller of this process's tasks created their run
_NOT_PROCESSED: Final = frozenset({429, 502, 503, 504})
_MAX_BACKOFF: Final = 4.0
_NEWEST: Final = "attributes.start_time DESC"


DEFAULT_OUTAGE_TIMEOUT: Final = 300.0
"""How long the plugin waits for a server it has reached before, when it goes away (``outage_timeout``).

MLflow's own client, with its defaults (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=7``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=2``, ``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER=1``), retries a refused
connection or a 502/503/504 7 times through urllib3's ``Retry``: it sleeps 0, 4, 8, 16, 32, 64 and
120 s (``2 * 2**(n-1)``, capped at urllib3's ``DEFAULT_BACKOFF_MAX`` of 120 s, plus up to 1 s of
jitter on each uncapped sleep but the first): 244 to 249 s before it gives up. 300 s is at least that.
"""


FIRST_CONTACT_BUDGET: Final = 12.0
"""The longest one request to a server that has never answered this process may take, all attempts
included: such a server fails fast, whether it refuses connections or takes them and hangs."""


def reached(uri: str) -> bool:
    """Whether ``uri`` is a server this workflow has reached: it answered this process before, or a
    caller created its run there (:func:`vouch`). Such a server is waited for through an outage."""
    return uri in _HEARD or uri in _VOUCHED


def vouch(uri: str) -> None:
    """Record that a caller created a run at ``uri``, so this process waits for it as for one it reached."""
    _VOUCHED.add(uri)


@attrs.frozen
class RequestPolicy:
    """Limits for one of the plugin's requests: timeouts per attempt, retries, the first backoff, and
    how long a server reached before is waited for through an outage.

    ``timeout`` bounds making the connection, and also waiting for the answer unless
    ``read_timeout`` is set. The default policy gives the answer longer (:data:`DEFAULT_POLICY`).
    ``outage`` (``outage_timeout``) applies only to a server that :func:`reached` says was reached:
    its connection errors, 502/503/504 (and, for requests that are safe to repeat, timeouts and
    5xx) are retried with backoff capped at 4 s until that many seconds have passed.
    """

    timeout: float = 4.0
    retries: int = 2
    backoff: float = 0.5
    read_timeout: float | None = None
    outage: float = DEFAULT_OUTAGE_TIMEOUT

    @property
    def answer_timeout(self) -> float:
        """How long an attempt waits for the answer once its request is sent."""
        return self.timeout if self.read_timeout is None else self.read_timeout

    def for_finalize(self) -> RequestPolicy:
        """Finalizing a finished run gets more retries: losing its status is worse than waiting."""
        return attrs.evolve(self, retries=max(self.retries, 5))

    def budget(self) -> float:
        """The longest one call can take on its own: every attempt timing out, with the backoffs between."""
        backoffs = sum(min(self.backoff * 2.0**k, _MAX_BACKOFF) for k in range(self.retries))
        return (self.retries + 1) * max(self.timeout, self.answer_timeout) + backoffs

    def describe(self) -> str:
        """The settings as error messages quote them."""
        if self.answer_timeout == self.timeout:
            return f"request_timeout={self.timeout:g}s, request_retries={self.retries}"
        return (
            f"request_timeout unset: {self.timeout:g}s to connect, {self.answer_timeout:g}s to answer; "
            f"request_retries={self.retries}"
        )


# 4 s to connect and 30 s for the answer: a server that cannot be reached shows it within seconds,
# while one that authenticates every request (MLflow's basic-auth app checks a password hash each
# time, about 0.3 s of CPU) queues the requests of parallel trials and answered the plugin's in up
# to 6 s in tests/test_auth.py with sixteen trials; MLflow's own client waits 120 s.
DEFAULT_POLICY: Final = RequestPolicy(read_timeout=30.0)


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


def describe(uri: str) -> str:
    """Name a tracking URI without anything secret: ``host:port`` for servers, the scheme otherwise."""
    try:
        parts = urlsplit(uri)
        if parts.hostname:
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
            return f"{parts.hostname}:{port}" if port else parts.hostname
    except ValueError:
        pass
    scheme = uri.split(":", 1)[0] if ":" in uri else "file"
    return f"a local {scheme} store" if scheme in ("file", "sqlite") else f"a {scheme} store"


class Server(Protocol):
    """The few tracking calls the plugin makes itself."""

    @property
    def uri(self) -> str:
        """The tracking URI."""
        ...

    def create_run(
        self, experiment_id: str, run_name: str | None, tags: Mapping[str, str], start_ms: int
    ) -> Run:
        """Create a ``RUNNING`` run with its tags in one request."""
        ...

    def get_run(self, run_id: str, policy: RequestPolicy | None = None) -> Run:
        """Fetch a run."""
        ...

    def set_status(
        self, run_id: str, status: str, end_ms: int | None, policy: RequestPolicy | None = None
    ) -> None:
        """Set a run's status (``RUNNING``, ``FINISHED``, ``FAILED`` or ``KILLED``)."""
        ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on an existing run."""
        ...

    def experiment_id(self, name: str) -> str:
        """Return the id of the experiment called ``name``, creating it if it does not exist."""
        ...

    def search_runs(
        self, experiment_ids: list[str], filter_string: str, max_results: int, order_by: str = _NEWEST
    ) -> list[Run]:
        """The live runs of ``experiment_ids`` that match ``filter_string``, newest first, in one request.

        ``order_by`` (an MLflow ``order_by`` clause) orders them otherwise; the newest first breaks ties.
        """
        ...

    def metric_history(self, run_id: str, key: str, max_results: int) -> tuple[list[Metric], bool]:
        """The first ``max_results`` points of a metric's history in one request, and whether it has more."""
        ...

    def log_batch(
        self,
        run_id: str,
        metrics: list[Metric],
        params: list[Param],
        tags: list[RunTag],
        deadline: float | None = None,
    ) -> None:
        """Store metrics, params and tags in one request."""
        ...

    def log_inputs(self, run_id: str, datasets: list[DatasetInput]) -> None:
        """Record datasets as the run's inputs in one request."""
        ...


_M = TypeVar("_M", bound=Message)


@attrs.frozen
class RestServer:
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
                _HEARD[self.uri] = time.monotonic()
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
            pause = min(policy.backoff * 2 ** (attempt - 1), _MAX_BACKOFF)
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
        self, experiment_ids: list[str], filter_string: str, max_results: int, order_by: str = _NEWEST
    ) -> list[Run]:
        """The live runs of ``experiment_ids`` matching ``filter_string``, by ``order_by``, in one request."""
        request = SearchRuns(
            experiment_ids=experiment_ids,
            filter=filter_string,
            max_results=max_results,
            order_by=_order(order_by),
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
        return _live_experiment(name, found.experiment.experiment_id, found.experiment.lifecycle_stage)

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


def _order(order_by: str) -> list[str]:
    return [order_by] if order_by == _NEWEST else [order_by, _NEWEST]


def _take_slot(uri: str, started: float, budget: float) -> bool:
    """Wait for a request slot; give up (``False``) once ``uri`` has been silent for ``budget`` seconds.

    Silence counts from the later of ``started`` and the server's last answer to any of this
    process's requests, so calls queued behind a slow server that still answers keep waiting, and
    calls queued behind a server that answers nothing end within one call's budget, however many
    of them there are.
    """
    while True:
        remaining = budget - (time.monotonic() - max(started, _HEARD.get(uri, started)))
        if remaining <= 0:
            return False
        if _SLOTS.acquire(timeout=min(remaining, 1.0)):
            return True


def _live_experiment(name: str, experiment_id: str, stage: str) -> str:
    if stage == "deleted":
        msg = (
            f"experiment {name!r} (id {experiment_id}) is deleted; restore it in the MLflow UI "
            "or choose another experiment_name"
        )
        raise MlflowTrackingError(msg)
    return experiment_id


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


@attrs.frozen
class StoreServer:
    """Any other tracking store (a SQLite file, a ``file:`` directory, Databricks) via ``MlflowClient``."""

    uri: str
    client: MlflowClient = attrs.field(eq=False, hash=False, repr=False)

    def _guard(self, action: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except MlflowTrackingError:
            raise
        except Exception as e:
            where = describe(self.uri)
            msg = f"the MLflow tracking store ({where}) could not {action}: {type(e).__name__}: {e}"
            raise TrackingRequestError(msg) from e

    def create_run(
        self, experiment_id: str, run_name: str | None, tags: Mapping[str, str], start_ms: int
    ) -> Run:
        """Create a ``RUNNING`` run with its tags."""
        run: Run = self._guard(
            "create a run",
            lambda: self.client.create_run(
                experiment_id, start_time=start_ms, tags=dict(tags), run_name=run_name
            ),
        )
        return run

    def get_run(self, run_id: str, policy: RequestPolicy | None = None) -> Run:
        """Fetch a run."""
        run: Run = self._guard("find the run", lambda: self.client.get_run(run_id))
        return run

    def set_status(
        self, run_id: str, status: str, end_ms: int | None, policy: RequestPolicy | None = None
    ) -> None:
        """Set a run's status."""
        if status == "RUNNING":
            self._guard("mark the run RUNNING", lambda: self.client.update_run(run_id, status=status))
        else:
            self._guard(f"mark the run {status}", lambda: self.client.set_terminated(run_id, status, end_ms))

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on an existing run."""
        self._guard(
            "tag the run", lambda: self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        )

    def log_batch(
        self,
        run_id: str,
        metrics: list[Metric],
        params: list[Param],
        tags: list[RunTag],
        deadline: float | None = None,
    ) -> None:
        """Store metrics, params and tags through ``MlflowClient`` (``deadline`` does not apply)."""
        self._guard(
            "store values", lambda: self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        )

    def log_inputs(self, run_id: str, datasets: list[DatasetInput]) -> None:
        """Record datasets as the run's inputs through ``MlflowClient``."""
        self._guard("record the run's inputs", lambda: self.client.log_inputs(run_id, datasets=datasets))

    def search_runs(
        self, experiment_ids: list[str], filter_string: str, max_results: int, order_by: str = _NEWEST
    ) -> list[Run]:
        """The live runs of ``experiment_ids`` that match ``filter_string``, in ``order_by`` order."""
        runs: list[Run] = self._guard(
            "search the runs",
            lambda: list(
                self.client.search_runs(
                    experiment_ids, filter_string, max_results=max_results, order_by=_order(order_by)
                )
            ),
        )
        return runs

    def metric_history(self, run_id: str, key: str, max_results: int) -> tuple[list[Metric], bool]:
        """A metric's history, cut at ``max_results`` points, and whether it was cut."""
        points: list[Metric] = self._guard(
            "read a metric's history", lambda: list(self.client.get_metric_history(run_id, key))
        )
        return points[:max_results], len(points) > max_results

    def experiment_id(self, name: str) -> str:
        """Return the id of the experiment called ``name``, creating it if it does not exist."""

        def resolve() -> str:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return _live_experiment(name, found.experiment_id, found.lifecycle_stage)
            try:
                return self.client.create_experiment(name)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                again = self.client.get_experiment_by_name(name)
                assert again is not None
                return again.experiment_id

        result: str = self._guard("find or create the experiment", resolve)
        return result


_SERVERS: dict[tuple[str, RequestPolicy], Server] = {}
_SERVERS_LOCK = threading.Lock()


def server_for(uri: str, policy: RequestPolicy = DEFAULT_POLICY) -> Server:
    """The server object for a tracking URI and policy (one per process, made on first use)."""
    key = (uri, policy)
    with _SERVERS_LOCK:
        if key not in _SERVERS:
            scheme = urlsplit(uri).scheme.lower()
            made: Server
            if scheme in ("http", "https"):
                made = RestServer(uri, policy)
            else:
                made = StoreServer(uri, MlflowClient(uri))
            _SERVERS[key] = made
        return _SERVERS[key]
