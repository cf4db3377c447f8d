"""Retries: what an attempt after the first does with the runs its action's earlier attempts left.

A task's own run carries its Flyte action and the attempts that wrote to it. A retried attempt (a
Flyte retry, or an elastic restart) finds the earlier runs with one search by that tag, then, as
``on_retry`` says, creates its own run that replaces them (``new``) or reopens the latest
(``resume``). Earlier runs still ``RUNNING`` are marked ``KILLED``: their process could not do it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._runs.finish import KILLED, RUNNING
from flyteplugins.mlflow._settings.enums import OnRetry
from flyteplugins.mlflow._tags import (
    ACTION_ID_TAG,
    ATTEMPT_LIST_TAG,
    REPLACED_BY_TAG,
    REPLACES_TAG,
    tag_equals,
)
from flyteplugins.mlflow._transport.client import Client
from mlflow.entities import Run

__all__ = ["MAX_EARLIER", "kill_all", "open_retry"]

logger = logging.getLogger("flyteplugins.mlflow")

MAX_EARLIER: Final = 100
"""The most earlier runs one look-up reads; more than this many attempts of one action is unheard of."""


def kill_all(client: Client, runs: Iterable[Run], end_ms: int, why: str) -> list[str]:
    """Mark each run that is still ``RUNNING`` as ``KILLED``; failures are logged, never raised.

    Returns:
        The ids of the runs that were marked.
    """
    marked: list[str] = []
    for run in runs:
        if run.info.status != RUNNING:
            continue
        try:
            client.set_status(run.info.run_id, KILLED, end_ms)
        except MlflowTrackingError as e:
            logger.warning("MLflow run %s (%s) could not be marked KILLED: %s", run.info.run_id, why, e)
            continue
        marked.append(run.info.run_id)
        logger.info("MLflow run %s marked KILLED: %s", run.info.run_id, why)
    return marked


def _attempts(run: Run, label: str) -> str:
    seen = [a for a in run.data.tags.get(ATTEMPT_LIST_TAG, "").split(",") if a]
    if label not in seen:
        seen.append(label)
    return ",".join(seen)


def open_retry(
    client: Client,
    policy: OnRetry,
    experiment_id: str,
    tags: Mapping[str, str],
    create: Callable[[Mapping[str, str]], Run],
    now_ms: Callable[[], int],
) -> Run:
    """Open the run of a retried attempt: look up the earlier attempts' runs, then resume or replace.

    Args:
        client: the tracking client.
        policy: ``on_retry``.
        experiment_id: the experiment the action's runs are in.
        tags: the tags of this attempt's run, including :data:`ACTION_TAG` and :data:`ATTEMPT_LIST_TAG`.
        create: creates a run with the given tags (one request).
        now_ms: the clock, for end times.

    Raises:
        MlflowTrackingError: the look-up, the creation or the reopening failed.
    """
    action_id, label = tags[ACTION_ID_TAG], tags[ATTEMPT_LIST_TAG]
    earlier = client.search_runs([experiment_id], tag_equals(ACTION_ID_TAG, action_id), MAX_EARLIER)
    if not earlier:
        return create(tags)
    latest, older = earlier[0], earlier[1:]
    if policy is OnRetry.RESUME:
        run_id = latest.info.run_id
        client.set_status(run_id, RUNNING, None)
        client.set_tags(run_id, {**tags, ATTEMPT_LIST_TAG: _attempts(latest, label)})
        kill_all(client, older, now_ms(), f"an earlier attempt of {action_id}, superseded by {run_id}")
        return client.get_run(run_id)
    run = create({**tags, REPLACES_TAG: latest.info.run_id})
    new_id = run.info.run_id
    kill_all(client, earlier, now_ms(), f"an earlier attempt of {action_id}, replaced by {new_id}")
    try:
        client.set_tags(latest.info.run_id, {REPLACED_BY_TAG: new_id})
    except MlflowTrackingError as e:
        logger.warning(
            "MLflow run %s could not be tagged as replaced by %s: %s", latest.info.run_id, new_id, e
        )
    return run
