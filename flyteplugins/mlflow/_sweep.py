"""The sweep: when a workflow's root run ends, no run created under it is left ``RUNNING``.

A child task whose process dies without a retry (its pod OOM-killed, its node lost) never sets its
run's final status. Its caller cannot tell: Flyte reports the failure, not the run. So the root of
the workflow's tracking looks once, when its own task ends, and marks what it finds ``KILLED``.

Which runs are covered:

* The *root* is the decorated body of a Flyte task that has no tracked caller (no run in its
  context). It tells every task called inside it its Flyte action (``mlflow_root_action`` in the
  context), and every run created by those tasks and their descendants, in any run mode (``nested``,
  ``new``, or ``auto`` where a child creates a run of its own) and in any attempt, carries that action
  in :data:`ROOT_TAG`.
* The sweep searches the root run's experiment for runs with the root's action in :data:`ROOT_TAG`
  that are still ``RUNNING``: one request. Each run found is marked ``KILLED`` with one request more.
  Runs that descendants create in another experiment are not searched.

Because the tag names the root's Flyte action rather than its MLflow run, a retried root also sweeps
what its earlier attempts' children left. Two tracked tasks that are siblings under an untracked
caller are two roots with different actions, so neither sweeps the other's runs.

A failing sweep is logged as a warning; it never fails the task.
"""

from __future__ import annotations

import logging
from typing import Final

from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._retries import filter_equals, kill_all
from flyteplugins.mlflow._server import Server

__all__ = ["MAX_SWEPT", "ROOT_TAG", "sweep"]

logger = logging.getLogger("flyteplugins.mlflow")

ROOT_TAG: Final = "flyte.root_action"
"""The Flyte action (``project/domain/run_name/action_name``) of the root whose sweep covers the run."""
MAX_SWEPT: Final = 1000
"""The most runs one sweep reads."""


def sweep(server: Server, experiment_id: str, root_action: str, own_run_id: str, end_ms: int) -> list[str]:
    """Mark ``KILLED`` every run still ``RUNNING`` that was created under the root ``root_action``.

    Returns:
        The ids of the runs marked ``KILLED``. Failures are logged, never raised.
    """
    query = f"{filter_equals(ROOT_TAG, root_action)} and attributes.status = 'RUNNING'"
    try:
        found = server.search_runs([experiment_id], query, MAX_SWEPT)
    except MlflowTrackingError as e:
        logger.warning("the runs left RUNNING under %s could not be looked up: %s", root_action, e)
        return []
    orphans = [run for run in found if run.info.run_id != own_run_id]
    return kill_all(server, orphans, end_ms, f"left RUNNING under the root {root_action}, which has ended")
