"""MLflow's active-run stack, per tracked call instead of per thread.

MLflow keeps "the current run" on a thread-local stack. Sibling trials gathered on one event-loop
thread would share it, and a sync task's worker thread would not see its caller's. While tracked
calls run, :class:`ContextLocalRunStack` stands in for it: it reads the tracked call's own list
(:mod:`.current`), and MLflow's thread-local list everywhere else; MLflow's scan across threads
(which links a trace to a run) sees only the tracked call's list inside one.
"""

from __future__ import annotations

import threading
from typing import Any

import mlflow
from flyteplugins.mlflow._patches.current import TrackedCall, current, entered
from flyteplugins.mlflow._patches.patch import Patch, Undo
from mlflow.tracking import fluent
from mlflow.tracking.fluent import ActiveRun
from mlflow.utils.thread_utils import ThreadLocalVariable

__all__ = ["PATCH", "ContextLocalRunStack", "bound"]


def bound() -> list[ActiveRun] | None:
    """The run stack of the running task's tracked call here, if any."""
    call = current()
    return None if call is None else call.runs


class ContextLocalRunStack:
    """Stand-in for MLflow's thread-local active-run stack that reads the tracked call's list first."""

    def __init__(self, fallback: ThreadLocalVariable) -> None:
        self._fallback = fallback

    def get(self) -> list[ActiveRun]:
        """Return the tracked call's list, else MLflow's thread-local list."""
        runs = bound()
        if runs is not None:
            return runs
        result: list[ActiveRun] = self._fallback.get()
        return result

    def set(self, value: list[ActiveRun]) -> None:
        """Replace the current list's contents (the tracked call's, else the thread-local one)."""
        runs = bound()
        if runs is not None:
            runs[:] = value
        else:
            self._fallback.set(value)

    def get_all_thread_values(self) -> dict[int, Any]:
        """For the MLflow internals that scan every thread ("the latest active run", which a trace
        records as its ``mlflow.sourceRun``): inside a tracked call its own list only, so a span
        links to its own task's run and never to a sibling's; elsewhere MLflow's per-thread lists."""
        runs = bound()
        if runs is not None:
            return {threading.get_ident(): runs}
        values: dict[int, Any] = self._fallback.get_all_thread_values()
        return values

    def reset(self) -> None:
        """Reset MLflow's thread-local lists (tracked calls' lists belong to them)."""
        self._fallback.reset()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


def _install(undo: Undo, _: None) -> None:
    current_stack = getattr(fluent, "_active_run_stack", None)
    if not isinstance(current_stack, ThreadLocalVariable) or not callable(
        getattr(current_stack, "get", None)
    ):
        raise PATCH.error("mlflow.tracking.fluent._active_run_stack is no longer a ThreadLocalVariable")
    undo.replace(fluent, "_active_run_stack", ContextLocalRunStack(current_stack))
    probe = object()
    with entered(TrackedCall(owner=None, runs=[probe])):
        seen = mlflow.active_run()
    if seen is not probe:
        raise PATCH.error("mlflow.active_run() no longer reads mlflow.tracking.fluent._active_run_stack")


PATCH: Patch[None] = Patch("route runs per task", _install)
"""The stand-in, in place while tracked calls run."""
