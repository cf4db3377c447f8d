"""MLflow's per-thread and per-process logging state, kept per tracked call while tracked tasks run.

Why this exists
---------------
Besides the active-run stack (see :mod:`flyteplugins.mlflow._runstack`), MLflow remembers more about
"what is happening now" in places shared by a whole thread or a whole process. Parallel trials in one
process (sibling async tasks on one event-loop thread, sync tasks on worker threads, fits sent to
``asyncio.to_thread``) overwrite each other's values there. In particular a fit that starts while
another trial's fit runs is taken for a fit nested inside it, and is not autologged at all.

What is kept per tracked call
-----------------------------
Read from MLflow |version| (``mlflow/tracking/fluent.py``, ``mlflow/models/model.py``,
``mlflow/utils/autologging_utils/`` and ``mlflow/sklearn/__init__.py``):

* ``mlflow.tracking.fluent._last_logged_model_id``, a ``ThreadLocalVariable`` (also imported by name
  into ``mlflow.models.model``, which sets it when a model is logged): ``mlflow.last_logged_model()``.
* ``mlflow.tracking.fluent._ACTIVE_MODEL_CONTEXT``, a ``ThreadLocalVariable``:
  ``mlflow.set_active_model``, ``mlflow.get_active_model_id``, ``mlflow.clear_active_model``, and the
  model that autologged traces and metrics are linked to.
* ``mlflow.tracking.fluent._last_active_run_id``, a ``ThreadLocalVariable``: ``mlflow.last_active_run()``.
* ``_AutologgingSessionManager._session`` (``mlflow/utils/autologging_utils/safety.py``), a class
  attribute for the whole process: the autologging session of the patched call that is running. A
  patched call that finds one joins it instead of starting its own.
* ``_TrainingSession._session_stack`` of every training-session class
  (``mlflow.utils.autologging_utils._training_sessions``: sklearn's ``_SklearnTrainingSession``, and
  pyspark.ml's once imported), a class attribute mutated in place: the fits in progress. A fit that
  finds one below it is taken as nested and, for sklearn, logs nothing.
* ``mlflow.sklearn._AUTOLOGGING_METRICS_MANAGER._log_post_training_metrics_enabled``, an attribute of
  one process-wide object that each sklearn fit and ``score`` switches off and back on around itself.
  Two overlapping fits restore it out of order, which can leave post-training metrics off for good.

The active-run stack itself is :mod:`~flyteplugins.mlflow._runstack`'s. Process-wide settings that
cannot be per task (tracking URI, active experiment, autolog patches) are
:mod:`~flyteplugins.mlflow._mlflow_state`'s. State that needs nothing here: the autologging metrics
queue (keyed by run id), the metrics manager's maps (keyed by run id and object id), statsmodels'
``_SAVE_MODEL_CALLED_FROM_AUTOLOG`` and ``logging_utils.should_suppress_logs_in_thread`` (thread-local,
set and reset inside one synchronous call, so no other trial runs in between), and
``autologging_utils._AUTOLOGGING_GLOBALLY_DISABLED`` (set only by MLflow's own
``disable_autologging()`` during ``mlflow.evaluate``, which is meant to be process-wide).

How it works
------------
Each piece has one stand-in here that reads the tracked call's own cell first and falls back to
MLflow's own object: :class:`ContextLocalVariable` for the ``ThreadLocalVariable`` objects,
:class:`ContextLocalSessionManager` (a subclass of ``_AutologgingSessionManager`` whose metaclass
gives it a per-call ``_session``) in place of the class in ``safety``, :class:`ContextLocalSessionStack`
(a descriptor in each training-session class) and :class:`ContextLocalFlag` (a data descriptor on the
metrics manager's class). :func:`kept` gives one tracked call fresh cells, bound to its contextvars
context exactly like its run stack: Flyte's worker threads and ``asyncio.to_thread`` copy the context,
so a trial's fit on another thread uses the trial's cells, and fits nested inside it stay nested.

The stand-ins are installed when the first tracked call of the process enters :func:`kept` and
MLflow's own objects are put back, the same objects, when the last one leaves. Code that is not
inside a tracked call (untracked tasks, plain MLflow, MLflow's own threads) reads and writes MLflow's
own objects meanwhile, so it behaves exactly as without the plugin. On import, and again on each
install, MLflow's internals are checked; if they no longer look as expected, this fails with the
MLflow version in the message rather than letting trials mix their state silently.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

import mlflow
from flyteplugins.mlflow import _runstack
from mlflow.tracking import fluent
from mlflow.utils import autologging_utils
from mlflow.utils.autologging_utils import safety
from mlflow.utils.thread_utils import ThreadLocalVariable

__all__ = [
    "ContextLocalFlag",
    "ContextLocalSessionManager",
    "ContextLocalSessionStack",
    "ContextLocalVariable",
    "installed",
    "kept",
]

__doc__ = (__doc__ or "").replace("|version|", mlflow.__version__)


class _Cells:
    """One tracked call's values, by stand-in, and the Flyte task they belong to."""

    __slots__ = ("owner", "values")

    def __init__(self, owner: object) -> None:
        self.owner = owner
        self.values: dict[object, Any] = {}


_CELLS: contextvars.ContextVar[_Cells | None] = contextvars.ContextVar(
    "flyteplugins_mlflow_state", default=None
)


def _cells() -> dict[object, Any] | None:
    """The current tracked call's values, if any (for its own task only, as with the run stack)."""
    cells = _CELLS.get()
    if cells is None or (cells.owner is not None and cells.owner != _runstack.owner()):
        return None
    return cells.values


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
        """MLflow's per-thread values, for the MLflow internals that scan every thread."""
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


def _unsupported(reason: str) -> RuntimeError:
    return RuntimeError(
        f"flyteplugins-mlflow cannot keep MLflow's state per task with mlflow {mlflow.__version__}: "
        f"{reason}. Install an mlflow version this plugin supports (see its pyproject.toml)."
    )


def _model_module() -> Any:
    import mlflow.models.model

    return mlflow.models.model


def _check() -> None:
    """Fail unless MLflow still keeps each piece of state where and how this module expects."""
    for name in _VARIABLES:
        if type(getattr(fluent, name, None)) is not ThreadLocalVariable:
            raise _unsupported(f"mlflow.tracking.fluent.{name} is no longer a ThreadLocalVariable")
    if getattr(_model_module(), "_last_logged_model_id", None) is not fluent._last_logged_model_id:
        raise _unsupported("mlflow.models.model no longer sets fluent._last_logged_model_id")
    manager = getattr(safety, "_AutologgingSessionManager", None)
    if manager is not ContextLocalSessionManager and not (
        manager is ContextLocalSessionManager._fallback
        and "_session" in vars(manager)
        and all(
            callable(getattr(manager, m, None)) for m in ("start_session", "astart_session", "active_session")
        )
    ):
        raise _unsupported("safety._AutologgingSessionManager no longer keeps the session in _session")
    sessions = getattr(autologging_utils, "_training_sessions", None)
    if not isinstance(sessions, list) or not all(
        isinstance(vars(c).get("_session_stack"), (list, ContextLocalSessionStack)) for c in sessions
    ):
        raise _unsupported(
            "autologging_utils._training_sessions no longer holds classes with a _session_stack list"
        )


_lock = threading.Lock()
_users = 0
_undo: list[Callable[[], None]] = []  # puts back, in reverse order, what _install replaced


def _replace(target: Any, name: str, stand_in: object) -> None:
    original = vars(target)[name] if isinstance(target, type) else getattr(target, name)
    setattr(target, name, stand_in)
    _undo.append(lambda: setattr(target, name, original))


def _install() -> None:
    try:
        _replace_all()
    except BaseException:
        _restore()
        raise


def _replace_all() -> None:
    _check()
    for name in _VARIABLES:
        stand_in = ContextLocalVariable(getattr(fluent, name))
        _replace(fluent, name, stand_in)
        if name == "_last_logged_model_id":
            _replace(_model_module(), name, stand_in)
    _replace(safety, "_AutologgingSessionManager", ContextLocalSessionManager)
    for session_class in autologging_utils._training_sessions:
        _replace(
            session_class, "_session_stack", ContextLocalSessionStack(vars(session_class)["_session_stack"])
        )
    sklearn = sys.modules.get("mlflow.sklearn")
    manager = getattr(sklearn, "_AUTOLOGGING_METRICS_MANAGER", None)
    if manager is not None and isinstance(vars(manager).get(_METRICS_FLAG), bool):
        cls = type(manager)
        setattr(cls, _METRICS_FLAG, ContextLocalFlag(_METRICS_FLAG, default=True))
        _undo.append(lambda: delattr(cls, _METRICS_FLAG))
    _probe()


def _probe() -> None:
    """Check, in a scratch tracked call, that MLflow's fluent API reads through the stand-ins."""
    token = _CELLS.set(_Cells(None))
    try:
        fluent._last_logged_model_id.set("probe")
        seen_model = fluent._last_logged_model_id.get()
        seen_session = safety._AutologgingSessionManager.active_session()
    finally:
        _CELLS.reset(token)
    if seen_model != "probe" or seen_session is not None:
        raise _unsupported("the fluent API no longer reads the state this module replaces")


def _restore() -> None:
    while _undo:
        _undo.pop()()


def installed() -> bool:
    """Whether the stand-ins are in place (while tracked calls run; for tests and diagnostics)."""
    return _users > 0


@contextlib.contextmanager
def kept(owner: object) -> Iterator[None]:
    """Keep MLflow's per-thread and per-process logging state per call for the body of one tracked call.

    Args:
        owner: the running Flyte task (as for :func:`flyteplugins.mlflow._runstack.bind`); code of
            the same context that runs for another task uses MLflow's own state.

    Raises:
        RuntimeError: MLflow's internals no longer look as expected (on the first tracked call).
    """
    global _users
    with _lock:
        if not _users:
            _install()
        _users += 1
    token = _CELLS.set(_Cells(owner))
    try:
        yield
    finally:
        _CELLS.reset(token)
        with _lock:
            _users -= 1
            if not _users:
                _restore()


_check()
