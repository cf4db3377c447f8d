"""Ranks other than 0: finding the run rank 0 logs to, and marking it ``FAILED`` when this rank fails.

Only rank 0 has a run (unless ``rank_scope="worker"``). When this rank's body raises, the launcher
stops rank 0 with SIGTERM, which alone would end the run ``KILLED``; so this rank marks it first.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final

import attrs

from flyteplugins.mlflow._errors import MlflowTrackingError, TrackingRequestError
from flyteplugins.mlflow._flyte import current_task
from flyteplugins.mlflow._patches import process_state
from flyteplugins.mlflow._patches.current import TrackedCall, entered, innermost
from flyteplugins.mlflow._runs.finish import FAILED, settle
from flyteplugins.mlflow._settings.enums import OnTrackingError
from flyteplugins.mlflow._tags import ACTION_ID_TAG, ATTEMPT_LIST_TAG, FAILED_RANK_TAG, tag_equals
from flyteplugins.mlflow._transport.client import Client, client_for, experiment_id
from flyteplugins.mlflow._transport.policy import RequestPolicy

if TYPE_CHECKING:
    from flyteplugins.mlflow._plan.plan import Plan

__all__ = [
    "FAILED_RANK_TAG",
    "POLL",
    "RANK0_WAIT",
    "Peer",
    "current_peer",
    "find",
    "mark_failed",
    "peer_failed",
    "peer_run_id",
    "rank0_id",
    "scope",
]

logger = logging.getLogger("flyteplugins.mlflow")

POLL: Final = 0.5
"""Seconds between two searches for a run that rank 0 has not created yet."""
_LOOKUP: Final = RequestPolicy(backoff=POLL, max_backoff=POLL)  # the one backoff, kept at POLL
RANK0_WAIT: Final = 60.0
"""How long a rank other than 0 waits for rank 0's run to appear when it asks for its id."""


@attrs.frozen(kw_only=True)
class Peer:
    """On a rank other than 0: what rank 0 does for the same call, and this rank's number.

    ``run_id`` is set when rank 0 uses a run it did not create (shared, or resumed by id);
    ``action_id`` and ``attempt`` are the tags of the run rank 0 creates otherwise.
    ``system_metrics`` says that rank 0 monitors its run (see :mod:`.system_metrics`); ``worker`` is the
    plan of this rank's own run under ``rank_scope="worker"``, less its parent (see :mod:`.worker_runs`).
    """

    rank: int
    tracking_uri: str
    policy: RequestPolicy
    on_error: OnTrackingError
    shared: bool
    run_id: str | None
    action_id: str | None
    attempt: str | None
    experiment_id: str | None
    experiment_name: str | None
    resolved_experiments: Mapping[str, str]
    system_metrics: bool = False
    worker: Plan | None = None


_found: dict[tuple[str, str, str], str] = {}


@contextlib.contextmanager
def scope(peer: Peer) -> Iterator[None]:
    """Bind ``peer`` for a call on a rank other than 0, with rank 0's tracking URI as MLflow's."""
    try:
        process_state.hold(peer.tracking_uri, None)
        held = True
    except MlflowTrackingError as e:  # another tracked call in this process holds another URI
        logger.warning("rank %d keeps MLflow's tracking URI as it is: %s", peer.rank, e)
        held = False
    enclosing = innermost() or TrackedCall(owner=current_task())
    try:
        with entered(attrs.evolve(enclosing, peer=peer)):
            yield
    finally:
        if held:
            process_state.release(None)


def current_peer() -> Peer | None:
    """The peer bound by :func:`scope` in this context, if any."""
    call = innermost()
    return None if call is None else call.peer


def peer_run_id() -> str | None:
    """Rank 0's run id, for the untracked call of this rank that is running (``None`` outside one).

    Free when the id is known from the context; otherwise :func:`find`, once per process.

    Raises:
        MlflowTrackingError: the run could not be found (under ``on_tracking_error="raise"``).
    """
    peer = current_peer()
    if peer is None:
        return None
    try:
        return rank0_id(peer)
    except MlflowTrackingError as e:
        if peer.on_error is OnTrackingError.RAISE:
            raise
        logger.warning("rank 0's MLflow run could not be found: %s", e)
        return None


def rank0_id(peer: Peer) -> str:
    """Rank 0's run id for ``peer`` (free when known; otherwise :func:`find`, once per process).

    Raises:
        MlflowTrackingError: the run could not be found.
    """
    return _run_id(peer, RANK0_WAIT)


def peer_failed(peer: Peer) -> None:
    """This rank's body raised: mark rank 0's own run ``FAILED`` (never a run it only shares)."""
    if peer.shared:
        return
    try:
        run_id = _run_id(peer, peer.policy.budget())
    except MlflowTrackingError as e:
        logger.warning(
            "rank %d failed, and rank 0's MLflow run could not be found to say so: %s", peer.rank, e
        )
        return
    mark_failed(client_for(peer.tracking_uri, peer.policy), run_id, peer.rank, peer.policy)


def _run_id(peer: Peer, wait: float) -> str:
    if peer.run_id is not None:
        return peer.run_id
    if peer.action_id is None or peer.attempt is None:
        msg = (
            "a rank other than 0 can find rank 0's MLflow run only inside a Flyte task (the run is found by "
            "its Flyte action); outside one, send the id from rank 0 yourself"
        )
        raise MlflowTrackingError(msg)
    key = (peer.tracking_uri, peer.action_id, peer.attempt)
    if key not in _found:
        client = client_for(peer.tracking_uri, peer.policy)
        experiment = peer.experiment_id
        if experiment is None:
            name = peer.experiment_name
            experiment = experiment_id(client, name, peer.resolved_experiments) if name else "0"
        _found[key] = find(client, experiment, peer.action_id, peer.attempt, wait)
    return _found[key]


def find(client: Client, experiment_id: str, action_id: str, attempt: str, wait: float) -> str:
    """The id of the run rank 0 opened for ``attempt`` of ``action_id``: one search, repeated every
    :data:`POLL` seconds while it is not there yet.

    Raises:
        TrackingRequestError: no such run appeared within ``wait`` seconds.
        MlflowTrackingError: the search failed.
    """
    query = tag_equals(ACTION_ID_TAG, action_id)  # any status: rank 0 may have finished already
    deadline = time.monotonic() + wait
    tries = 0
    while True:
        for run in client.search_runs([experiment_id], query, 20):
            if attempt in run.data.tags.get(ATTEMPT_LIST_TAG, "").split(","):
                return str(run.info.run_id)
        if time.monotonic() >= deadline:
            msg = (
                f"rank 0's MLflow run for attempt {attempt} of {action_id} did not appear in experiment "
                f"{experiment_id} within {wait:g}s; is rank 0 running, and tracked with the same settings?"
            )
            raise TrackingRequestError(msg)
        tries += 1
        time.sleep(_LOOKUP.pause(tries))


def mark_failed(client: Client, run_id: str, rank: int, policy: RequestPolicy) -> None:
    """Mark rank 0's run ``FAILED`` because ``rank`` failed, unless it has ended already (another rank
    failed first, and the others then fail on gloo's errors: the tag names the first one); failures
    are logged, never raised."""
    try:
        done = settle(
            client,
            run_id,
            FAILED,
            policy,
            if_running=True,
            tags={FAILED_RANK_TAG: str(rank)},
            journaled=False,
        )
    except MlflowTrackingError as e:
        logger.warning("MLflow run %s could not be marked FAILED for rank %d: %s", run_id, rank, e)
        return
    if done.ended is not None:
        logger.warning("rank %d failed; MLflow run %s had ended already: left as it is", rank, run_id)
        return
    logger.warning("MLflow run %s marked FAILED: rank %d failed", run_id, rank)
