"""Any other tracking store (a SQLite file, a ``file:`` directory, Databricks), through ``MlflowClient``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from flyteplugins.mlflow._errors import MlflowTrackingError, TrackingRequestError
from flyteplugins.mlflow._transport.policy import RequestPolicy
from flyteplugins.mlflow._transport.servers import NEWEST, describe, live_experiment, order
from mlflow.entities import DatasetInput, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking.client import MlflowClient

__all__ = ["StoreClient"]


@attrs.frozen
class StoreClient:
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
        self, experiment_ids: list[str], filter_string: str, max_results: int, order_by: str = NEWEST
    ) -> list[Run]:
        """The live runs of ``experiment_ids`` that match ``filter_string``, in ``order_by`` order."""
        runs: list[Run] = self._guard(
            "search the runs",
            lambda: list(
                self.client.search_runs(
                    experiment_ids, filter_string, max_results=max_results, order_by=order(order_by)
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
                return live_experiment(name, found.experiment_id, found.lifecycle_stage)
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
