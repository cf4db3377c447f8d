"""A per-context active-run stack for MLflow's fluent API.

Why this exists
---------------
``mlflow.log_param``, ``mlflow.log_metric``, ``mlflow.active_run`` and every other fluent call find
"the current run" on the top of a stack that MLflow keeps in a thread-local variable
(``mlflow.tracking.fluent._active_run_stack``). A thread-local is the wrong scope for Flyte:

* sibling tasks started with ``asyncio.gather`` in local mode run on one event-loop thread, so they
  would all see, and log into, whichever run was pushed last;
* a sync task runs in a fresh worker thread, so it would not see its parent's run at all.

How it works
------------
On import, this module replaces MLflow's stack object, once, with :class:`ContextLocalRunStack`, a
stand-in with the same ``get()`` interface. ``get()`` returns the list bound to the current
``contextvars`` context if there is one, and otherwise falls back to MLflow's own thread-local list,
so code that never binds anything (plain MLflow scripts, untracked tasks) behaves exactly as before.

Each scope that owns or shares a run binds a list of its own with :func:`bind` and restores the
previous binding with :func:`unbind` and the token it got. Contextvars follow Flyte's execution
model: ``asyncio.gather`` gives each arm a copy of the context, and Flyte runs sync tasks in a worker
thread with a copy of the caller's context. So each sibling trial sees only its own list, and runs
that the user starts inside a task with ``mlflow.start_run(nested=True)`` are pushed onto that
task's list. MLflow's exit hook (which ends "the active run" when the process exits) runs outside
every bound context, so it never ends a run that the plugin manages, or one that a task only shares.

The replacement is guarded: on import we check that MLflow still keeps its stack where we expect and
that ``mlflow.active_run()`` reads through the stand-in. If either check fails, import fails with the
MLflow version in the message, rather than letting runs be misrouted silently.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, NamedTuple

import mlflow
from mlflow.tracking import fluent
from mlflow.tracking.fluent import ActiveRun
from mlflow.utils.thread_utils import ThreadLocalVariable

__all__ = ["ContextLocalRunStack", "bind", "bound", "owner", "set_owner_probe", "unbind"]


class _Binding(NamedTuple):
    runs: list[ActiveRun]
    owner: object


_BOUND: contextvars.ContextVar[_Binding | None] = contextvars.ContextVar(
    "flyteplugins_mlflow_runs", default=None
)


def _no_owner() -> object:
    return None


_owner_probe: Callable[[], object] = _no_owner


def set_owner_probe(probe: Callable[[], object]) -> None:
    """Set the function that names the current owner (the running Flyte task) for :func:`bind`."""
    global _owner_probe
    _owner_probe = probe


def owner() -> object:
    """The current owner (the running Flyte task) as the owner probe names it; ``None`` without one."""
    return _owner_probe()


class ContextLocalRunStack:
    """Stand-in for MLflow's thread-local active-run stack that reads a context-local list first."""

    def __init__(self, fallback: ThreadLocalVariable) -> None:
        self._fallback = fallback

    def get(self) -> list[ActiveRun]:
        """Return the list bound to this context, else MLflow's thread-local list."""
        runs = bound()
        if runs is not None:
            return runs
        result: list[ActiveRun] = self._fallback.get()
        return result

    def set(self, value: list[ActiveRun]) -> None:
        """Replace the current list's contents (the bound list, else the thread-local one)."""
        runs = bound()
        if runs is not None:
            runs[:] = value
        else:
            self._fallback.set(value)

    def get_all_thread_values(self) -> dict[int, Any]:
        """MLflow's per-thread lists, for the few MLflow internals that scan every thread."""
        values: dict[int, Any] = self._fallback.get_all_thread_values()
        return values

    def reset(self) -> None:
        """Reset MLflow's thread-local lists (bound lists belong to their scopes)."""
        self._fallback.reset()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


def bind(runs: list[ActiveRun], owner: object = None) -> contextvars.Token[_Binding | None]:
    """Make ``runs`` the active-run stack of the current context; returns the token for :func:`unbind`.

    Args:
        runs: the stack.
        owner: who may see it (the running Flyte task, from the owner probe). Code of the same
            context that runs for another owner, such as an untracked child task that Flyte runs in
            its caller's context in local mode, sees MLflow's own stack instead, as it would remotely.
    """
    return _BOUND.set(_Binding(runs, owner))


def unbind(token: contextvars.Token[_Binding | None]) -> None:
    """Restore the binding that was current before :func:`bind` returned ``token``."""
    _BOUND.reset(token)


def bound() -> list[ActiveRun] | None:
    """The list bound to the current context for the current owner, if any."""
    binding = _BOUND.get()
    if binding is None or (binding.owner is not None and binding.owner != _owner_probe()):
        return None
    return binding.runs


def _unsupported(reason: str) -> RuntimeError:
    return RuntimeError(
        f"flyteplugins-mlflow cannot route runs per task with mlflow {mlflow.__version__}: {reason}. "
        "Install an mlflow version this plugin supports (see its pyproject.toml)."
    )


def _install() -> None:
    current = getattr(fluent, "_active_run_stack", None)
    if isinstance(current, ContextLocalRunStack):
        return
    if not isinstance(current, ThreadLocalVariable) or not callable(getattr(current, "get", None)):
        raise _unsupported("mlflow.tracking.fluent._active_run_stack is no longer a ThreadLocalVariable")
    stand_in = ContextLocalRunStack(current)
    fluent._active_run_stack = stand_in  # type: ignore[assignment]
    probe = object()
    token = bind([probe])  # type: ignore[list-item]
    try:
        seen = mlflow.active_run()
    finally:
        unbind(token)
    if seen is not probe:
        fluent._active_run_stack = current
        raise _unsupported("mlflow.active_run() no longer reads mlflow.tracking.fluent._active_run_stack")


_install()
