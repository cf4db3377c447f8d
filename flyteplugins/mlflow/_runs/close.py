"""Closing what one tracked call opened: queued values first, then runs left open, then its own run."""

from __future__ import annotations

import logging
import time

from flyteplugins.mlflow._errors import TrackingRequestError
from flyteplugins.mlflow._patches import process_state
from flyteplugins.mlflow._runs import sigterm, sweep
from flyteplugins.mlflow._runs.finish import FAILED, FINISHED, finish_all, now_ms
from flyteplugins.mlflow._runs.open import Opened
from flyteplugins.mlflow._transport.client import client_for
from mlflow.tracking.fluent import ActiveRun

__all__ = ["end"]

logger = logging.getLogger("flyteplugins.mlflow")


def end(opened: Opened, status: str, runs: list[ActiveRun]) -> None:
    """End what the call opened: runs the user left open inside it, then its own run, then the globals.

    Raises:
        MlflowTrackingError: the final status could not be set, even after the finalize retries.
    """
    # Claimed by exactly one side: here, or by the SIGTERM handler that already marked it KILLED.
    owned = opened.owned and (opened.signal_token is None or sigterm.unregister(opened.signal_token))
    try:
        failed: list[str] = []
        if opened.plan.async_logging or process_state.async_logging_on():
            try:  # what the task queued lands before the status is set; a server away is waited for
                ids = {r.info.run_id for r in runs} | {opened.run.info.run_id}
                until = time.monotonic() + opened.plan.policy.outage
                failed = process_state.drain_async_logging(opened.plan.tracking_uri, ids, until)
            except Exception as e:
                logger.warning("MLflow's queued (async) logging could not be drained: %s", e)
        if failed and status == FINISHED:
            status = FAILED  # as if the failing log call had raised
        if owned or len(runs) > 1:
            client = client_for(opened.plan.tracking_uri, opened.plan.policy)
            leftovers = [r.info.run_id for r in runs[1:] if r.info.run_id != opened.run.info.run_id]
            closing = [*reversed(leftovers), *([opened.run.info.run_id] if owned else [])]
            policy, journal_dir = opened.plan.policy.for_finalize(), opened.plan.journal_dir
            finish_all(client, closing, status, policy, journal_dir)
            if owned and opened.plan.sweep_root is not None:
                # After the root's own status: a server that could not take that one is not swept.
                info = opened.run.info
                sweep.sweep(client, info.experiment_id, opened.plan.sweep_root, info.run_id, now_ms())
        if failed:
            msg = (
                f"{len(failed)} queued MLflow logging call(s) failed (async_logging): {'; '.join(failed[:3])}"
            )
            raise TrackingRequestError(msg)
    finally:
        process_state.release(opened.plan.autolog, opened.plan.async_logging)
