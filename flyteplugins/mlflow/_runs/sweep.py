"""The sweep: when a workflow's root run ends, no run created under it is left ``RUNNING``.

A child whose pod died without a retry never sets its run's status, and its caller cannot tell. So the
root of the workflow's tracking, when its own task ends, searches its experiment once for runs tagged
with its Flyte action that are still ``RUNNING``, and marks each ``KILLED``. A failing sweep is a
warning; it never fails the task.
"""

from __future__ import annotations

import logging
from typing import Final

from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._runs.attempts import kill_all
from flyteplugins.mlflow._tags import ROOT_TAG, tag_equals
from flyteplugins.mlflow._transport.client import Client

__all__ = ["MAX_SWEPT", "sweep"]

logger = logging.getLogger("flyteplugins.mlflow")

MAX_SWEPT: Final = 1000
"""The most runs one sweep reads."""


def sweep(client: Client, experiment_id: str, root_action: str, own_run_id: str, end_ms: int) -> list[str]:
    """Mark ``KILLED`` every run still ``RUNNING`` that was created under the root ``root_action``.

    Returns:
        The ids of the runs marked ``KILLED``. Failures are logged, never raised.
    """
    query = f"{tag_equals(ROOT_TAG, root_action)} and attributes.status = 'RUNNING'"
    try:
        found = client.search_runs([experiment_id], query, MAX_SWEPT)
    except MlflowTrackingError as e:
        logger.warning("the runs left RUNNING under %s could not be looked up: %s", root_action, e)
        return []
    orphans = [run for run in found if run.info.run_id != own_run_id]
    return kill_all(client, orphans, end_ms, f"left RUNNING under the root {root_action}, which has ended")
