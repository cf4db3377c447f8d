"""A tracked call's run made the calling context's own: the run stack, MLflow's state, the children."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from flyteplugins.mlflow import _flyte
from flyteplugins.mlflow._distributed import ranks
from flyteplugins.mlflow._patches import per_call_state, provenance, runstack
from flyteplugins.mlflow._patches.current import TrackedCall, current, entered, innermost
from flyteplugins.mlflow._runs.open import Opened
from flyteplugins.mlflow._tracing import observer
from mlflow.tracking.fluent import ActiveRun

__all__ = ["bound", "current_run", "local_run", "rank0_run_id"]


def current_run() -> ActiveRun | None:
    """The run of the innermost tracked call of the running task or function, if any.

    A task that Flyte runs inside its caller's context (local mode) does not see its caller's run
    unless it is tracked itself, just as it would not in a process of its own.
    """
    call = current()
    return None if call is None else call.run


def local_run() -> ActiveRun | None:
    """The innermost tracked run in this context, whichever task owns it (shared without a request)."""
    call = innermost()
    return None if call is None else call.run


def rank0_run_id() -> str | None:
    """The id of the run that rank 0 logs to for the running tracked call, on any rank.

    Raises:
        MlflowTrackingError: on another rank, the run could not be found (under ``"raise"``).
    """
    run = current_run() if ranks.current_peer() is None else None  # a rank's own run is not rank 0's
    if run is not None:
        return str(run.info.run_id)
    return ranks.peer_run_id()


@contextlib.contextmanager
def bound(opened: Opened) -> Iterator[list[ActiveRun]]:
    """Make ``opened.run`` the active run of this context, and announce it to the tasks called inside.

    Raises:
        RuntimeError: MLflow's internals no longer look as the patches expect (on the first call).
    """
    tags = provenance.provenance(opened.plan.tags)
    enclosing = innermost()
    call = TrackedCall(
        owner=_flyte.current_task(),
        run=opened.run,
        runs=[opened.run],
        cells={},
        provenance=tags,
        peer=None if enclosing is None else enclosing.peer,
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(runstack.PATCH.held(None))
        stack.enter_context(per_call_state.PATCH.held(None))
        if tags:
            stack.enter_context(provenance.PATCH.held(None))
        stack.enter_context(entered(call))
        stack.enter_context(_flyte.children_scope(opened.children))
        if observer.open_span() is not None:
            from flyteplugins.mlflow._tracing import spans  # loaded only where a task is traced

            spans.link_run(opened.run.info.run_id)
        assert call.runs is not None
        yield call.runs
