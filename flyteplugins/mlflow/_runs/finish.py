"""A run's final status, or the journal: the one path every ending takes.

A task's end, SIGTERM and a failing rank all set a run's final status through :func:`settle`. When
the server is away past ``outage_timeout``, or the run still has queued values that must land first,
the status goes to a journal with those values (see :mod:`flyteplugins.mlflow._buffer.journal`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Final

import attrs

from flyteplugins.mlflow._buffer import journal
from flyteplugins.mlflow._buffer.values import Values
from flyteplugins.mlflow._errors import AWAY, MlflowTrackingError
from flyteplugins.mlflow._patches import process_state
from flyteplugins.mlflow._transport.client import Client
from flyteplugins.mlflow._transport.policy import RequestPolicy
from flyteplugins.mlflow._transport.servers import describe
from mlflow.entities import RunStatus

__all__ = [
    "FAILED",
    "FINISHED",
    "KILLED",
    "RUNNING",
    "Settled",
    "finish_all",
    "now_ms",
    "settle",
    "status_for",
    "unsent_within",
]

logger = logging.getLogger("flyteplugins.mlflow")

RUNNING: Final = RunStatus.to_string(RunStatus.RUNNING)
FINISHED: Final = RunStatus.to_string(RunStatus.FINISHED)
FAILED: Final = RunStatus.to_string(RunStatus.FAILED)
KILLED: Final = RunStatus.to_string(RunStatus.KILLED)


def now_ms() -> int:
    """The time as MLflow stores it: milliseconds since the epoch."""
    return int(time.time() * 1000)


def status_for(error: BaseException | None) -> str:
    """``FINISHED`` for success, ``KILLED`` for cancellation and interrupts, ``FAILED`` otherwise."""
    if error is None:
        return FINISHED
    if isinstance(error, (asyncio.CancelledError, KeyboardInterrupt)):
        return KILLED
    return FAILED


@attrs.frozen
class Settled:
    """What became of a run's final status: set, left alone (the run had ``ended``), or journaled."""

    ended: str | None = None  # the status the run already had, left as it is
    journal: str | None = None  # where the journal is
    reason: str = ""  # why it was journaled
    away: bool = False  # the server was away (rather than values still queued)


def settle(
    client: Client,
    run_id: str,
    status: str,
    policy: RequestPolicy,
    *,
    unsent: Sequence[Values] = (),
    journal_dir: str | None = None,
    if_running: bool = False,
    tags: Mapping[str, str] | None = None,
    journaled: bool = True,
) -> Settled:
    """Set ``run_id``'s final ``status``, or journal it (with ``unsent`` values, which must land first).

    Args:
        if_running: read the run first and leave it as it is if it has ended (one request more).
        tags: set just before the status.
        journaled: whether a server that is away gets a journal; if not, its error is raised.

    Raises:
        MlflowTrackingError: the server refused; or it was away and ``journaled`` is false.
    """
    end_ms = now_ms()
    if unsent:
        reason = f"{sum(len(m) + len(p) + len(t) for m, p, t in unsent)} value(s) still queued"
        return Settled(
            journal=journal.write(client.uri, run_id, unsent, status, end_ms, journal_dir), reason=reason
        )
    if if_running:
        try:
            current = client.get_run(run_id, policy).info.status
        except MlflowTrackingError as e:  # the status request below will tell
            logger.debug("the status of MLflow run %s could not be read: %s", run_id, e)
        else:
            if current != RUNNING:
                return Settled(ended=current)
    try:
        if tags:
            client.set_tags(run_id, tags)
        client.set_status(run_id, status, end_ms, policy)
    except AWAY as e:
        if not journaled:
            raise
        where = journal.write(client.uri, run_id, [], status, end_ms, journal_dir)
        return Settled(journal=where, reason=str(e), away=True)
    return Settled()


def finish_all(
    client: Client, run_ids: Sequence[str], status: str, policy: RequestPolicy, journal_dir: str | None
) -> None:
    """Set the final ``status`` of ``run_ids`` (innermost first) at a tracked call's end.

    Raises:
        MlflowTrackingError: runs were journaled; the message names each journal and the command that
            sends it. Any other error of the status requests, as it was raised.
    """
    journals: list[str] = []
    reason = ""
    for run_id in run_ids:
        done = settle(
            client, run_id, status, policy, unsent=process_state.take_unsent(run_id), journal_dir=journal_dir
        )
        if done.journal is None:
            continue
        reason = done.reason if done.away else reason or done.reason
        journals.append(done.journal)
    if journals:
        commands = "; ".join(f"python -m flyteplugins.mlflow replay {j}" for j in journals)
        msg = (
            f"the MLflow tracking server at {describe(client.uri)} stayed away past "
            f"outage_timeout={policy.outage:g}s ({reason}): what could not be sent, with the run's {status} "
            f"status, is in a journal. Send it once the server is back: {commands}"
        )
        raise MlflowTrackingError(msg)


def unsent_within(run_id: str, budget: float) -> list[Values]:
    """Send what the plugin's queue holds for ``run_id`` within ``budget`` seconds (from a thread of its
    own, so a hung request cannot hold the caller); return what is still unsent, taken for a journal."""
    queued = process_state.queue()
    if queued is None:
        return []
    sender = threading.Thread(
        target=queued.drain,
        args=(run_id, time.monotonic() + budget),
        name="flyteplugins-mlflow-kill",
        daemon=True,
    )
    sender.start()
    sender.join(budget + 0.2)
    return queued.take(run_id)
