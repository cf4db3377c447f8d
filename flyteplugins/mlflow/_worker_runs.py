"""``rank_scope="worker"``: a run for every rank other than 0, nested under rank 0's run.

Under the default ``rank_scope="global"`` only rank 0 has a run (see :mod:`flyteplugins.mlflow._ranks`).
Under ``"worker"``, the task body on every other rank gets a run of its own as well:

* its name is ``<task>-rank-<rank>``; it is nested under the run rank 0 logs to (``mlflow.parentRunId``),
  in the same experiment, with the tags :data:`RANK_TAG`, :data:`LOCAL_RANK_TAG`, :data:`NODE_TAG`
  and :data:`WORLD_SIZE_TAG`, and rank 0's Flyte and user tags;
* it is this rank's active run: ``mlflow.log_*`` go to it and ``get_mlflow_run()`` returns it
  (``get_mlflow_run_id()`` still returns rank 0's run);
* it is started, bound and ended like rank 0's own run (:mod:`flyteplugins.mlflow._lifecycle`): one
  request to create it, one to end it ``FINISHED``, ``FAILED`` or ``KILLED`` (SIGTERM);
* retries: its ``flyte.action_id`` is the Flyte action followed by ``/rank-<rank>``, with the attempt
  in ``flyte.attempts``, so a retried attempt (or an elastic restart) looks up this rank's earlier runs
  alone and resumes or replaces them as ``on_retry`` says (:mod:`flyteplugins.mlflow._retries`), and
  rank 0's own search for its run never matches a rank's run.

Finding rank 0's run costs what it costs ``get_mlflow_run_id()``: nothing when the Flyte context holds
its id, else one search (repeated while rank 0 has not created it yet), shared with that function.
:func:`template` is pure; :func:`opened` makes that search.
"""

from __future__ import annotations

import logging
import os
from typing import Final

import attrs

from flyteplugins.mlflow import _ranks
from flyteplugins.mlflow._config import MlflowConfig, MlflowTrackingSettings, OnRetry, OnTrackingError
from flyteplugins.mlflow._context import TaskSnapshot
from flyteplugins.mlflow._enums import RankScope
from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._plan import PARENT_TAG, Plan
from flyteplugins.mlflow._retries import ACTION_TAG, ATTEMPTS_TAG
from flyteplugins.mlflow._server import server_for

__all__ = ["LOCAL_RANK_TAG", "NODE_TAG", "RANK_TAG", "WORLD_SIZE_TAG", "opened", "template"]

logger = logging.getLogger("flyteplugins.mlflow")

RANK_TAG: Final = "flyte.rank"
LOCAL_RANK_TAG: Final = "flyte.local_rank"
NODE_TAG: Final = "flyte.node"
"""The node's group rank (``GROUP_RANK``)."""
WORLD_SIZE_TAG: Final = "flyte.world_size"
_ENV: Final = {LOCAL_RANK_TAG: "LOCAL_RANK", NODE_TAG: "GROUP_RANK", WORLD_SIZE_TAG: "WORLD_SIZE"}
# Rank 0's ``flyte.root_action`` is copied (a tracked caller's sweep covers the rank runs); rank 0
# itself, when it is the root, has none and does not sweep them: it may end before the other ranks.
_NOT_COPIED: Final = (ACTION_TAG, ATTEMPTS_TAG, PARENT_TAG)


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
        tags[ACTION_TAG] = f"{snap.action_id}/rank-{rank}"
        tags[ATTEMPTS_TAG] = snap.attempt_label or "0"
        if snap.retried:
            ctx = snap.config or MlflowConfig()
            retry = own.on_retry if own.on_retry is not OnRetry.NEW else ctx.on_retry
    create = rank0.action == "create"
    return Plan(
        action="create",
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


def opened(peer: _ranks.Peer, resolve: _ranks.ResolveExperiment) -> Plan | None:
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
        parent = _ranks.rank0_id(peer, resolve)
        experiment_id = template.experiment_id
        if peer.run_id is not None:
            experiment_id = server_for(peer.tracking_uri, peer.policy).get_run(parent).info.experiment_id
    except MlflowTrackingError as e:
        if template.on_error is OnTrackingError.RAISE:
            raise
        logger.warning("rank %d runs without a run of its own: %s", peer.rank, e)
        return None
    tags = {**template.tags, PARENT_TAG: parent}
    return attrs.evolve(template, tags=tags, parent_run_id=parent, experiment_id=experiment_id)
