"""Ranks other than 0: finding the run that rank 0 logs to, and telling it when this rank fails.

In distributed training only rank 0 has an MLflow run; every other rank runs the same task body
untracked and sends nothing. Two things may still need rank 0's run there:

* :func:`find`: the body asks for its id (``get_mlflow_run_id()``), to log to it by id. Where the
  id is already known from the Flyte context (rank 0 shares its caller's run, or resumes a run
  given by id), that costs nothing. Otherwise rank 0 creates the run, tagged with the Flyte action
  and this attempt, and this rank looks for it: one search (the run that carries the action in
  ``flyte.action_id`` and this attempt in ``flyte.attempts``, whatever its status), repeated every
  :data:`POLL` seconds while rank 0 has not created it yet, for at most ``wait`` seconds.
* :func:`mark_failed`: the body raised on this rank. Rank 0 is then stopped by the launcher
  (PyTorch's elastic agent sends it SIGTERM), which alone would end its run ``KILLED``; so this rank
  first marks rank 0's run ``FAILED`` and tags it with ``flyte.failed_rank``, and rank 0's SIGTERM
  handling leaves a run that has already ended as it is.

Both are plain functions of a server and the values that identify the run; the lifecycle module
decides when to call them.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from flyteplugins.mlflow._errors import MlflowTrackingError, TrackingRequestError
from flyteplugins.mlflow._retries import ACTION_TAG, ATTEMPTS_TAG, filter_equals
from flyteplugins.mlflow._server import Server
from mlflow.entities import RunStatus

__all__ = ["FAILED_RANK_TAG", "POLL", "find", "mark_failed"]

logger = logging.getLogger("flyteplugins.mlflow")

FAILED_RANK_TAG: Final = "flyte.failed_rank"
POLL: Final = 0.5
"""Seconds between two searches for a run that rank 0 has not created yet."""


def find(server: Server, experiment_id: str, action_id: str, attempt: str, wait: float) -> str:
    """The id of the run rank 0 opened for ``attempt`` of ``action_id``: one search, repeated while
    it is not there yet.

    Raises:
        TrackingRequestError: no such run appeared within ``wait`` seconds.
        MlflowTrackingError: the search failed.
    """
    query = filter_equals(ACTION_TAG, action_id)  # any status: rank 0 may have finished already
    deadline = time.monotonic() + wait
    while True:
        for run in server.search_runs([experiment_id], query, 20):
            if attempt in run.data.tags.get(ATTEMPTS_TAG, "").split(","):
                return str(run.info.run_id)
        if time.monotonic() >= deadline:
            msg = (
                f"rank 0's MLflow run for attempt {attempt} of {action_id} did not appear in experiment "
                f"{experiment_id} within {wait:g}s; is rank 0 running, and tracked with the same settings?"
            )
            raise TrackingRequestError(msg)
        time.sleep(POLL)


def mark_failed(server: Server, run_id: str, rank: int, end_ms: int) -> None:
    """Mark rank 0's run ``FAILED`` because ``rank`` failed; failures are logged, never raised."""
    try:
        server.set_tags(run_id, {FAILED_RANK_TAG: str(rank)})
        server.set_status(run_id, RunStatus.to_string(RunStatus.FAILED), end_ms)
    except MlflowTrackingError as e:
        logger.warning("MLflow run %s could not be marked FAILED for rank %d: %s", run_id, rank, e)
        return
    logger.warning("MLflow run %s marked FAILED: rank %d failed", run_id, rank)
