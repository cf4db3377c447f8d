"""MLflow's other per-thread and per-process logging state, kept per tracked call.

Parallel trials in one process would overwrite each other's last logged model, active model, last
active run, autologging session, stack of fits and sklearn's post-training-metrics flag. Each gets a
stand-in that reads the tracked call's cells first; ``docs/design.md`` lists where each lives in MLflow.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Final

from flyteplugins.mlflow._patches.current import TrackedCall, current, entered
from flyteplugins.mlflow._patches.patch import Patch, Undo
from mlflow.tracking import fluent
from mlflow.utils import autologging_utils
from mlflow.utils.autologging_utils import safety
from mlflow.utils.thread_utils import ThreadLocalVariable

__all__ = [
    "PATCH",
    "ContextLocalFlag",
    "ContextLocalSessionManager",
    "ContextLocalSessionStack",
    "ContextLocalVariable",
]


def _cells() -> dict[object, Any] | None:
    """The running task's tracked call's values here, if any."""
    call = current()
    return None if call is None else call.cells


# --- the stand-ins -----------------------------------------------------------------------------


class ContextLocalVariable:
    """Stand-in for one of MLflow's ``ThreadLocalVariable`` objects: the tracked call's cell first."""

    def __init__(self, fallback: ThreadLocalVariable) -> None:
        self._fallback = fallback

    def get(self) -> Any:
        """The tracked call's value (MLflow's default until set), else MLflow's thread-local value."""
        values = _cells()
        if values is None:
            return self._fallback.get()
        if self not in values:
            values[self] = self._fallback.default_factory()
        return values[self]

    def set(self, value: Any) -> None:
        """Set the tracked call's value, else MLflow's thread-local value."""
        values = _cells()
        if values is None:
            self._fallback.set(value)
        else:
            values[self] = value

    def reset(self) -> None:
        """Forget the tracked call's value, else reset MLflow's thread-local values (as MLflow does)."""
        values = _cells()
        if values is None:
            self._fallback.reset()
        else:
            values.pop(self, None)

    def get_all_thread_values(self) -> dict[int, Any]:
        """For the MLflow internals that scan every thread (a trace's active model): inside a tracked
        call its own value only, elsewhere MLflow's per-thread values."""
        if _cells() is not None:
            return {threading.get_ident(): self.get()}
        found: dict[int, Any] = self._fallback.get_all_thread_values()
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


class _PerCallSession(type):
    """Metaclass of :class:`ContextLocalSessionManager`: a ``_session`` that is per tracked call."""

    _fallback: type

    @property
    def _session(cls) -> Any:
        values = _cells()
        if values is None:
            return cls._fallback._session  # type: ignore[attr-defined]
        return values.get(cls)

    @_session.setter
    def _session(cls, value: Any) -> None:
        values = _cells()
        if values is None:
            cls._fallback._session = value  # type: ignore[attr-defined]
        else:
            values[cls] = value


class ContextLocalSessionManager(safety._AutologgingSessionManager, metaclass=_PerCallSession):
    """Stand-in for ``safety._AutologgingSessionManager``: MLflow's own methods, with a per-call session.

    Outside a tracked call its ``_session`` is MLflow's own class attribute.
    """

    _fallback = safety._AutologgingSessionManager


class ContextLocalSessionStack:
    """Descriptor in place of a training-session class's ``_session_stack``: one list per tracked call."""

    def __init__(self, fallback: list[Any]) -> None:
        self._fallback = fallback

    def __get__(self, instance: object, owner: type | None = None) -> list[Any]:
        values = _cells()
        if values is None:
            return self._fallback
        stack: list[Any] | None = values.get(self)
        if stack is None:
            stack = values[self] = []
        return stack


class ContextLocalFlag:
    """Data descriptor for a ``bool`` attribute of one object: per tracked call, else the object's own."""

    def __init__(self, name: str, default: bool) -> None:
        self._name = name
        self._default = default

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        values = _cells()
        if values is None:
            return instance.__dict__[self._name]
        return values.get(self, self._default)

    def __set__(self, instance: object, value: bool) -> None:
        values = _cells()
        if values is None:
            instance.__dict__[self._name] = value
        else:
            values[self] = value


# --- installing and restoring ------------------------------------------------------------------

_VARIABLES: Final = ("_last_logged_model_id", "_ACTIVE_MODEL_CONTEXT", "_last_active_run_id")
_METRICS_FLAG: Final = "_log_post_training_metrics_enabled"


def _model_module() -> Any:
    import mlflow.models.model

    return mlflow.models.model


def _check() -> None:
    """Fail unless MLflow still keeps each piece of state where and how this module expects."""
    for name in _VARIABLES:
        if type(getattr(fluent, name, None)) is not ThreadLocalVariable:
            raise PATCH.error(f"mlflow.tracking.fluent.{name} is no longer a ThreadLocalVariable")
    if getattr(_model_module(), "_last_logged_model_id", None) is not fluent._last_logged_model_id:
        raise PATCH.error("mlflow.models.model no longer sets fluent._last_logged_model_id")
    manager = getattr(safety, "_AutologgingSessionManager", None)
    if manager is not ContextLocalSessionManager and not (
        manager is ContextLocalSessionManager._fallback
        and "_session" in vars(manager)
        and all(
            callable(getattr(manager, m, None)) for m in ("start_session", "astart_session", "active_session")
        )
    ):
        raise PATCH.error("safety._AutologgingSessionManager no longer keeps the session in _session")
    sessions = getattr(autologging_utils, "_training_sessions", None)
    if not isinstance(sessions, list) or not all(
        isinstance(vars(c).get("_session_stack"), (list, ContextLocalSessionStack)) for c in sessions
    ):
        raise PATCH.error(
            "autologging_utils._training_sessions no longer holds classes with a _session_stack list"
        )


def _install(undo: Undo, _: None) -> None:
    _check()
    for name in _VARIABLES:
        stand_in = ContextLocalVariable(getattr(fluent, name))
        undo.replace(fluent, name, stand_in)
        if name == "_last_logged_model_id":
            undo.replace(_model_module(), name, stand_in)
    undo.replace(safety, "_AutologgingSessionManager", ContextLocalSessionManager)
    for session_class in autologging_utils._training_sessions:
        stack = ContextLocalSessionStack(vars(session_class)["_session_stack"])
        undo.replace(session_class, "_session_stack", stack)
    sklearn = sys.modules.get("mlflow.sklearn")
    manager = getattr(sklearn, "_AUTOLOGGING_METRICS_MANAGER", None)
    if manager is not None and isinstance(vars(manager).get(_METRICS_FLAG), bool):
        cls = type(manager)
        setattr(cls, _METRICS_FLAG, ContextLocalFlag(_METRICS_FLAG, default=True))
        undo.then(lambda: delattr(cls, _METRICS_FLAG))
    _probe()


def _probe() -> None:
    """Check, in a scratch tracked call, that MLflow's fluent API reads through the stand-ins."""
    with entered(TrackedCall(owner=None, cells={})):
        fluent._last_logged_model_id.set("probe")
        seen_model = fluent._last_logged_model_id.get()
        seen_session = safety._AutologgingSessionManager.active_session()
    if seen_model != "probe" or seen_session is not None:
        raise PATCH.error("the fluent API no longer reads the state this module replaces")


PATCH: Patch[None] = Patch("keep MLflow's state per task", _install)
"""The stand-ins, in place while tracked calls run."""
