"""``rank_scope="worker"``: a run for every rank other than 0, nested under rank 0's run.

Each such rank's body gets a run ``<task>-rank-<rank>`` with its rank, local rank, node and world
size as tags; it is that rank's active run, and its ``flyte.action_id`` ends in ``/rank-<rank>`` so a
retry looks up this rank's earlier runs alone. :func:`template` is pure; :func:`opened` finds the
parent (rank 0's run) with the same search as ``get_mlflow_run_id()``.
"""

from __future__ import annotations

import logging
import os
from typing import Final

import attrs

from flyteplugins.mlflow._distributed import ranks
from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._plan.plan import Plan
from flyteplugins.mlflow._plan.snapshot import TaskSnapshot
from flyteplugins.mlflow._settings.config import MlflowConfig
from flyteplugins.mlflow._settings.enums import OnRetry, OnTrackingError, RankScope
from flyteplugins.mlflow._settings.settings import MlflowTrackingSettings
from flyteplugins.mlflow._tags import (
    ACTION_ID_TAG,
    ATTEMPT_LIST_TAG,
    LOCAL_RANK_TAG,
    NODE_TAG,
    PARENT_TAG,
    RANK_TAG,
    WORLD_SIZE_TAG,
)
from flyteplugins.mlflow._transport.client import client_for

__all__ = ["opened", "template"]

logger = logging.getLogger("flyteplugins.mlflow")

_ENV: Final = {LOCAL_RANK_TAG: "LOCAL_RANK", NODE_TAG: "GROUP_RANK", WORLD_SIZE_TAG: "WORLD_SIZE"}
# Rank 0's ``flyte.root_action`` is copied (a tracked caller's sweep covers the rank runs); rank 0
# itself, when it is the root, has none and does not sweep them: it may end before the other ranks.
_NOT_COPIED: Final = (ACTION_ID_TAG, ATTEMPT_LIST_TAG, PARENT_TAG)


def template(
    rank0: Plan,
    rank: int,
    own: MlflowTrackingSettings,
    snap: TaskSnapshot,
    task_name: str | None,
    task_run: bool,
) -> Plan | None:
    """The plan of this rank's own run, less its parent; ``None`` unless ``rank_scope="worker"``.

    Only a task's body (``task_run``) gets a rank run; a tracked function it calls uses it.
    """
    if rank0.rank_scope is not RankScope.WORKER or not task_run:
        return None
    tags = {k: v for k, v in rank0.tags.items() if k not in _NOT_COPIED}
    tags[RANK_TAG] = str(rank)
    tags.update({tag: os.environ[var] for tag, var in _ENV.items() if os.environ.get(var)})
    retry: OnRetry | None = None
    if snap.in_task and snap.action_id is not None:
        tags[ACTION_ID_TAG] = f"{snap.action_id}/rank-{rank}"
        tags[ATTEMPT_LIST_TAG] = snap.attempt_label or "0"
        if snap.retried:
            ctx = snap.config or MlflowConfig()
            retry = own.on_retry if own.on_retry is not OnRetry.NEW else ctx.on_retry
    create = rank0.opening == "create"
    return Plan(
        opening="create",
        tracking_uri=rank0.tracking_uri,
        policy=rank0.policy,
        on_error=rank0.on_error,
        experiment_id=rank0.experiment_id if create else None,
        experiment_name=rank0.experiment_name if create else None,
        run_name=f"{task_name or 'task'}-rank-{rank}",
        tags=tags,
        autolog=rank0.autolog,
        async_logging=rank0.async_logging,
        resolved_experiments=rank0.resolved_experiments,
        retry=retry,
        journal_dir=rank0.journal_dir,
    )


def opened(peer: ranks.Peer) -> Plan | None:
    """``peer.worker`` with its parent, rank 0's run, found; ``None`` without a rank run.

    The experiment is the one rank 0 creates its run in, or, when rank 0 uses a run it did not
    create, that run's (one request more to read it).

    Raises:
        MlflowTrackingError: rank 0's run could not be found (under ``on_tracking_error="raise"``;
            under ``"warn"`` a warning is logged and the rank runs untracked).
    """
    template = peer.worker
    if template is None:
        return None
    try:
        parent = ranks.rank0_id(peer)
        experiment_id = template.experiment_id
        if peer.run_id is not None:
            experiment_id = client_for(peer.tracking_uri, peer.policy).get_run(parent).info.experiment_id
    except MlflowTrackingError as e:
        if template.on_error is OnTrackingError.RAISE:
            raise
        logger.warning("rank %d runs without a run of its own: %s", peer.rank, e)
        return None
    tags = {**template.tags, PARENT_TAG: parent}
    return attrs.evolve(template, tags=tags, parent_run_id=parent, experiment_id=experiment_id)
