"""The tracked call running here: one record in one ContextVar, and the one check of whose it is.

Flyte runs a child task in its caller's context in local mode, so a record set by a tracked caller is
visible to the child; :func:`current` hides it from code of another task, as a pod of its own would.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from flyteplugins.mlflow._flyte import current_task

__all__ = ["TrackedCall", "bind", "current", "entered", "innermost", "unbind"]


@attrs.frozen(eq=False)
class TrackedCall:
    """One tracked call: its Flyte action, its run, and MLflow's state as that call sees it.

    ``runs`` is the active-run stack MLflow's fluent API reads (:mod:`.runstack`); ``cells`` MLflow's
    other per-call state (:mod:`.per_call_state`); ``provenance`` the tags for what MLflow creates
    inside it (:mod:`.provenance`); ``peer``, on a rank other than 0, what rank 0 does for the call.
    """

    owner: str | None
    run: Any = None  # mlflow's ActiveRun
    runs: list[Any] | None = None
    cells: dict[object, Any] | None = None
    provenance: Mapping[str, str] = attrs.field(factory=dict)
    peer: Any = None


_CALL: contextvars.ContextVar[TrackedCall | None] = contextvars.ContextVar(
    "flyteplugins_mlflow_call", default=None
)


def innermost() -> TrackedCall | None:
    """The innermost tracked call in this context, whichever task it belongs to."""
    return _CALL.get()


def current() -> TrackedCall | None:
    """The innermost tracked call in this context if it belongs to the running task (or to no task)."""
    call = _CALL.get()
    if call is None or (call.owner is not None and call.owner != current_task()):
        return None
    return call


def bind(call: TrackedCall) -> contextvars.Token[TrackedCall | None]:
    """Make ``call`` the tracked call of this context; :func:`unbind` with the token undoes it."""
    return _CALL.set(call)


def unbind(token: contextvars.Token[TrackedCall | None]) -> None:
    """Bring back the tracked call that :func:`bind` replaced."""
    _CALL.reset(token)


@contextlib.contextmanager
def entered(call: TrackedCall) -> Iterator[TrackedCall]:
    """Make ``call`` the tracked call of this context for the block."""
    token = bind(call)
    try:
        yield call
    finally:
        unbind(token)
