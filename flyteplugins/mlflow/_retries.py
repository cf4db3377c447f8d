"""Retries: what an attempt after the first does with the runs that earlier attempts of its action left.

Every run a task owns as its own (its decorated body creates it) carries the
Flyte action it belongs to in :data:`ACTION_TAG` and the attempts that wrote to it in
:data:`ATTEMPTS_TAG`. Both travel in the request that creates the run, so first attempts pay nothing
for them. An attempt after the first (a Flyte retry, or a restart of PyTorch's elastic workers) finds
the earlier runs with one search by that tag, newest first, and then, as ``on_retry`` says:

* ``new``: creates its own run, tagged :data:`REPLACES_TAG` with the latest earlier run, marks every
  earlier run still ``RUNNING`` as ``KILLED`` (a process that was SIGKILLed or lost its node could not
  do it), and tags the latest earlier run :data:`REPLACED_BY_TAG` with the new one;
* ``resume``: reopens the latest earlier run (``RUNNING`` again, this attempt added to its attempts),
  and marks any older run still ``RUNNING`` as ``KILLED``. With no earlier run it creates one.

The clean-up of earlier runs is housekeeping: if it fails, a warning is logged and the attempt goes
on with its own run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from flyteplugins.mlflow._config import OnRetry
from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._server import Server
from mlflow.entities import Run, RunStatus

__all__ = [
    "ACTION_TAG",
    "ATTEMPTS_TAG",
    "REPLACED_BY_TAG",
    "REPLACES_TAG",
    "filter_equals",
    "kill_all",
    "open_retry",
]

logger = logging.getLogger("flyteplugins.mlflow")

ACTION_TAG: Final = "flyte.action_id"
"""``project/domain/run_name/action_name`` of the Flyte action whose own run this is."""
ATTEMPTS_TAG: Final = "flyte.attempts"
"""The attempts that wrote to the run, comma-separated, oldest first (``"0,1"``; ``"1.2"`` is Flyte
attempt 1 after two elastic restarts)."""
REPLACES_TAG: Final = "flyte.replaces"
REPLACED_BY_TAG: Final = "flyte.replaced_by"
MAX_EARLIER: Final = 100
"""The most earlier runs one look-up reads; more than this many attempts of one action is unheard of."""

_RUNNING: Final = RunStatus.to_string(RunStatus.RUNNING)
_KILLED: Final = RunStatus.to_string(RunStatus.KILLED)


def filter_equals(tag: str, value: str) -> str:
    """An MLflow search filter term matching runs whose ``tag`` is exactly ``value``."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"tags.`{tag}` = '{escaped}'"


def kill_all(server: Server, runs: Iterable[Run], end_ms: int, why: str) -> list[str]:
    """Mark each run that is still ``RUNNING`` as ``KILLED``; failures are logged, never raised.

    Returns:
        The ids of the runs that were marked.
    """
    marked: list[str] = []
    for run in runs:
        if run.info.status != _RUNNING:
            continue
        try:
            server.set_status(run.info.run_id, _KILLED, end_ms)
        except MlflowTrackingError as e:
            logger.warning("MLflow run %s (%s) could not be marked KILLED: %s", run.info.run_id, why, e)
            continue
        marked.append(run.info.run_id)
        logger.info("MLflow run %s marked KILLED: %s", run.info.run_id, why)
    return marked


def _attempts(run: Run, label: str) -> str:
    seen = [a for a in run.data.tags.get(ATTEMPTS_TAG, "").split(",") if a]
    if label not in seen:
        seen.append(label)
    return ",".join(seen)


def open_retry(
    server: Server,
    policy: OnRetry,
    experiment_id: str,
    tags: Mapping[str, str],
    create: Callable[[Mapping[str, str]], Run],
    now_ms: Callable[[], int],
) -> Run:
    """Open the run of a retried attempt: look up the earlier attempts' runs, then resume or replace.

    Args:
        server: the tracking server.
        policy: ``on_retry``.
        experiment_id: the experiment the action's runs are in.
        tags: the tags of this attempt's run, including :data:`ACTION_TAG` and :data:`ATTEMPTS_TAG`.
        create: creates a run with the given tags (one request).
        now_ms: the clock, for end times.

    Raises:
        MlflowTrackingError: the look-up, the creation or the reopening failed.
    """
    action_id, label = tags[ACTION_TAG], tags[ATTEMPTS_TAG]
    earlier = server.search_runs([experiment_id], filter_equals(ACTION_TAG, action_id), MAX_EARLIER)
    if not earlier:
        return create(tags)
    latest, older = earlier[0], earlier[1:]
    if policy is OnRetry.RESUME:
        run_id = latest.info.run_id
        server.set_status(run_id, _RUNNING, None)
        server.set_tags(run_id, {**tags, ATTEMPTS_TAG: _attempts(latest, label)})
        kill_all(server, older, now_ms(), f"an earlier attempt of {action_id}, superseded by {run_id}")
        return server.get_run(run_id)
    run = create({**tags, REPLACES_TAG: latest.info.run_id})
    new_id = run.info.run_id
    kill_all(server, earlier, now_ms(), f"an earlier attempt of {action_id}, replaced by {new_id}")
    try:
        server.set_tags(latest.info.run_id, {REPLACED_BY_TAG: new_id})
    except MlflowTrackingError as e:
        logger.warning(
            "MLflow run %s could not be tagged as replaced by %s: %s", latest.info.run_id, new_id, e
        )
    return run
