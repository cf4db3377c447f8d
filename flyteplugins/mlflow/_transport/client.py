"""The few tracking calls the plugin makes itself, and the one client per server and policy."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

from flyteplugins.mlflow._transport.policy import DEFAULT_POLICY, RequestPolicy
from flyteplugins.mlflow._transport.rest import RestClient
from flyteplugins.mlflow._transport.servers import NEWEST
from flyteplugins.mlflow._transport.store import StoreClient
from mlflow.entities import DatasetInput, Metric, Param, Run, RunTag
from mlflow.tracking.client import MlflowClient

__all__ = ["Client", "client_for", "experiment_id"]


class Client(Protocol):
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
        self, experiment_ids: list[str], filter_string: str, max_results: int, order_by: str = NEWEST
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


_CLIENTS: dict[tuple[str, RequestPolicy], Client] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(uri: str, policy: RequestPolicy = DEFAULT_POLICY) -> Client:
    """The client for a tracking URI and policy (one per process, made on first use)."""
    key = (uri, policy)
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            scheme = urlsplit(uri).scheme.lower()
            made: Client
            if scheme in ("http", "https"):
                made = RestClient(uri, policy)
            else:
                made = StoreClient(uri, MlflowClient(uri))
            _CLIENTS[key] = made
        return _CLIENTS[key]


_experiments: dict[tuple[str, str], str] = {}
_experiments_lock = threading.Lock()


def experiment_id(client: Client, name: str, known: Mapping[str, str]) -> str:
    """The id of the experiment called ``name``: from ``known`` (ids a caller resolved), else looked up
    or created once per process and server."""
    if name in known:
        return known[name]
    key = (client.uri, name)
    with _experiments_lock:
        if key not in _experiments:
            _experiments[key] = client.experiment_id(name)
        return _experiments[key]
