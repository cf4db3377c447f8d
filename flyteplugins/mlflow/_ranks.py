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

The lifecycle module hands this module a :class:`Peer` (what this rank knows of rank 0's plan for
the same call) and binds it for the call with :func:`scope`; :func:`peer_run_id` and
:func:`peer_failed` work from it. While it is bound, MLflow's tracking URI is rank 0's (restored
after), so ``MlflowClient()`` on this rank reaches rank 0's server even when only the decorator
names it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Final

import attrs

from flyteplugins.mlflow import _mlflow_state
from flyteplugins.mlflow._config import OnTrackingError
from flyteplugins.mlflow._errors import MlflowTrackingError, TrackingRequestError
from flyteplugins.mlflow._retries import ACTION_TAG, ATTEMPTS_TAG, filter_equals
from flyteplugins.mlflow._server import RequestPolicy, Server, server_for
from mlflow.entities import RunStatus

if TYPE_CHECKING:
    from flyteplugins.mlflow._plan import Plan

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

FAILED_RANK_TAG: Final = "flyte.failed_rank"
POLL: Final = 0.5
"""Seconds between two searches for a run that rank 0 has not created yet."""
RANK0_WAIT: Final = 60.0
"""How long a rank other than 0 waits for rank 0's run to appear when it asks for its id."""

ResolveExperiment = Callable[[Server, str, Mapping[str, str]], str]
"""Resolves an experiment name to its id (the lifecycle's per-process cache), given known ids."""


@attrs.frozen(kw_only=True)
class Peer:
    """On a rank other than 0: what rank 0 does for the same call, and this rank's number.

    ``run_id`` is set when rank 0 uses a run it did not create (shared, or resumed by id);
    ``action_id`` and ``attempt`` are the tags of the run rank 0 creates otherwise.
    ``system_metrics`` says that rank 0 monitors its run (see ``_system_metrics``); ``worker`` is the
    plan of this rank's own run under ``rank_scope="worker"``, less its parent (see ``_worker_runs``).
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


_PEER: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("flyteplugins_mlflow_peer", default=None)
_found: dict[tuple[str, str, str], str] = {}


@contextlib.contextmanager
def scope(peer: Peer) -> Iterator[None]:
    """Bind ``peer`` for a call on a rank other than 0, with rank 0's tracking URI as MLflow's."""
    try:
        _mlflow_state.hold(peer.tracking_uri, None)
        held = True
    except MlflowTrackingError as e:  # another tracked call in this process holds another URI
        logger.warning("rank %d keeps MLflow's tracking URI as it is: %s", peer.rank, e)
        held = False
    token = _PEER.set(peer)
    try:
        yield
    finally:
        _PEER.reset(token)
        if held:
            _mlflow_state.release(None)


def current_peer() -> Peer | None:
    """The peer bound by :func:`scope` in this context, if any."""
    return _PEER.get()


def peer_run_id(resolve: ResolveExperiment) -> str | None:
    """Rank 0's run id, for the untracked call of this rank that is running (``None`` outside one).

    Free when the id is known from the context; otherwise :func:`find`, once per process.

    Raises:
        MlflowTrackingError: the run could not be found (under ``on_tracking_error="raise"``).
    """
    peer = _PEER.get()
    if peer is None:
        return None
    try:
        return rank0_id(peer, resolve)
    except MlflowTrackingError as e:
        if peer.on_error is OnTrackingError.RAISE:
            raise
        logger.warning("rank 0's MLflow run could not be found: %s", e)
        return None


def rank0_id(peer: Peer, resolve: ResolveExperiment) -> str:
    """Rank 0's run id for ``peer`` (free when known; otherwise :func:`find`, once per process).

    Raises:
        MlflowTrackingError: the run could not be found.
    """
    return _run_id(peer, resolve, RANK0_WAIT)


def peer_failed(peer: Peer, resolve: ResolveExperiment, end_ms: int) -> None:
    """This rank's body raised: mark rank 0's own run ``FAILED`` (never a run it only shares)."""
    if peer.shared:
        return
    try:
        run_id = _run_id(peer, resolve, peer.policy.budget())
    except MlflowTrackingError as e:
        logger.warning(
            "rank %d failed, and rank 0's MLflow run could not be found to say so: %s", peer.rank, e
        )
        return
    mark_failed(server_for(peer.tracking_uri, peer.policy), run_id, peer.rank, end_ms)


def _run_id(peer: Peer, resolve: ResolveExperiment, wait: float) -> str:
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
        server = server_for(peer.tracking_uri, peer.policy)
        experiment_id = peer.experiment_id
        if experiment_id is None:
            name = peer.experiment_name
            experiment_id = resolve(server, name, peer.resolved_experiments) if name else "0"
        _found[key] = find(server, experiment_id, peer.action_id, peer.attempt, wait)
    return _found[key]


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
    """Mark rank 0's run ``FAILED`` because ``rank`` failed, unless it has ended already (another rank
    failed first, and the others then fail on gloo's errors: the tag names the first one); failures
    are logged, never raised."""
    try:
        if server.get_run(run_id).info.status != RunStatus.to_string(RunStatus.RUNNING):
            logger.warning("rank %d failed; MLflow run %s had ended already: left as it is", rank, run_id)
            return
        server.set_tags(run_id, {FAILED_RANK_TAG: str(rank)})
        server.set_status(run_id, RunStatus.to_string(RunStatus.FAILED), end_ms)
    except MlflowTrackingError as e:
        logger.warning("MLflow run %s could not be marked FAILED for rank %d: %s", run_id, rank, e)
        return
    logger.warning("MLflow run %s marked FAILED: rank %d failed", run_id, rank)
