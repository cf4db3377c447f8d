"""MLflow's process-wide state: set while tracked tasks run, restored exactly when the last one ends.

Some MLflow settings cannot be scoped to one task: the tracking URI that the fluent API talks to
(which ``mlflow.set_tracking_uri`` also mirrors into the ``MLFLOW_TRACKING_URI`` environment
variable), the active experiment used by a bare ``mlflow.start_run()``, and autologging, which patches
library functions for the whole process. This module applies them when the first tracked task of a
process starts, counts the tracked tasks that are open, and restores what it found when the count
drops back to zero. Autologging is switched on per integration by the first task that asks for it
and switched off when the last task that asked for it ends.

MLflow also looks for an active Spark session on every fluent ``log_*`` call (twice: each
``MlflowClient()`` it makes resolves the model registry's URI), by importing ``pyspark``. Where
pyspark is not installed, that failing import searches ``sys.path`` each time and is most of what a
queued call costs. While tracked tasks run in such a process, ``sys.modules["pyspark"]`` is ``None``,
so the import fails at once, with the same ``ImportError``; the last task out removes it again.

Concurrent tracked tasks in one process share these settings, so they must agree on the tracking
URI: a task that asks for another URI while others are running is refused with a clear error.
The active experiment is the one of the most recent task to start; it only matters for runs that
user code starts itself without naming an experiment.

Asynchronous logging (``async_logging=True``) is process-wide too: MLflow reads the
``MLFLOW_ENABLE_ASYNC_LOGGING`` environment variable on every fluent ``log_*`` call. The first task
that asks for it switches it on and puts the plugin's per-run queue
(:class:`~flyteplugins.mlflow._queue.RunQueue`) in place of MLflow's on the tracking store; the last
one sends what is still queued, puts MLflow's queue back and restores the variable as it found it.
Tasks running alongside in the same process queue their calls too meanwhile, so whenever it is on,
every tracked call drains its runs (:func:`drain_async_logging`) before it sets a run's final status.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import attrs

import mlflow
from flyteplugins.mlflow._config import thaw
from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._journal import Values
from flyteplugins.mlflow._queue import RunQueue
from flyteplugins.mlflow._server import RestServer, describe, server_for
from mlflow.config import enable_async_logging
from mlflow.environment_variables import MLFLOW_ENABLE_ASYNC_LOGGING
from mlflow.tracking import fluent
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS

__all__ = [
    "Autolog",
    "applied",
    "async_logging_on",
    "drain_async_logging",
    "hold",
    "open_tasks",
    "queue",
    "release",
    "take_unsent",
    "use_experiment",
]

_URI_ENV: Final = "MLFLOW_TRACKING_URI"
_ASYNC_ENV: Final = "MLFLOW_ENABLE_ASYNC_LOGGING"


@attrs.frozen
class Autolog:
    """Which autolog integration to switch on (``None``: MLflow's generic ``mlflow.autolog``) and how."""

    framework: str | None
    kwargs: Mapping[str, Any]

    @property
    def key(self) -> str:
        """The integration's name, for counting its users."""
        return self.framework or "mlflow"

    def switch(self, on: bool) -> None:
        """Switch this integration on with its arguments, or off.

        Raises:
            ValueError: the framework's MLflow module has no ``autolog`` function.
        """
        module = importlib.import_module(f"mlflow.{self.framework}") if self.framework else mlflow
        autolog = getattr(module, "autolog", None)
        if not callable(autolog):
            msg = f"framework {self.framework!r}: mlflow.{self.framework} has no autolog() function"
            raise ValueError(msg)
        if on:
            autolog(**thaw(self.kwargs))
            return
        autolog(disable=True)
        integration = getattr(autolog, "integration_name", None)
        if self.framework and integration:
            # A framework's own autolog() marks its settings as chosen by the user, and from then on
            # the generic mlflow.autolog() skips that framework. Switched off, the framework must look
            # unconfigured again, or a later generic-autolog task would silently log nothing for it.
            AUTOLOGGING_INTEGRATIONS.pop(integration, None)


@attrs.frozen
class _Saved:
    uri: str | None
    uri_env: str | None
    experiment_id: str | None
    marked_absent: bool  # sys.modules[_SPARK] was set to None by the first task


_SPARK: Final = "pyspark"


def _mark_absent(module: str) -> bool:
    """Make imports of ``module`` fail at once if it is not installed; return whether it was marked."""
    if module in sys.modules or importlib.util.find_spec(module) is not None:
        return False
    sys.modules[module] = None  # type: ignore[assignment]
    return True


_lock = threading.Lock()
_open = 0
_saved: _Saved | None = None
_uri: str | None = None  # the tracking URI the open tasks share
_autolog_users: dict[str, int] = {}
_async_users = 0
_async_saved: str | None = None  # MLFLOW_ENABLE_ASYNC_LOGGING before the first user
_queued: tuple[Any, Any, RunQueue] | None = None  # (store, MLflow's queue, ours) while installed


def hold(uri: str, autolog: Autolog | None, async_logging: bool = False) -> None:
    """Take the global state for one tracked task (see :func:`applied`)."""
    global _open, _saved, _uri, _async_users, _async_saved, _queued
    with _lock:
        if _open and uri != _uri:
            msg = (
                f"a tracked task asked for the tracking server at {describe(uri)} while other tracked "
                f"tasks in this process use {describe(_uri or '')}; tasks that run concurrently in one "
                "process must share one tracking URI"
            )
            raise MlflowTrackingError(msg)
        if autolog is not None and not _autolog_users.get(autolog.key):
            autolog.switch(True)
        if autolog is not None:
            _autolog_users[autolog.key] = _autolog_users.get(autolog.key, 0) + 1
        if async_logging:
            if not _async_users:
                _async_saved = os.environ.get(_ASYNC_ENV)
                _queued = _install_queue(uri)
                enable_async_logging(True)
            _async_users += 1
        if not _open:
            _saved = _Saved(
                tracking_utils._tracking_uri,
                os.environ.get(_URI_ENV),
                fluent._active_experiment_id,
                _mark_absent(_SPARK),
            )
            _uri = uri
            if mlflow.get_tracking_uri() != uri or tracking_utils._tracking_uri is None:
                mlflow.set_tracking_uri(uri)
        _open += 1


def use_experiment(experiment_id: str) -> None:
    """Make ``experiment_id`` MLflow's active experiment while tracked tasks hold the global state."""
    with _lock:
        if _open:
            fluent._active_experiment_id = experiment_id  # type: ignore[assignment]


def release(autolog: Autolog | None, async_logging: bool = False) -> None:
    """Give back what :func:`hold` took; the last task out restores what was there before."""
    global _open, _saved, _uri, _async_users, _queued
    with _lock:
        _open -= 1
        if autolog is not None:
            _autolog_users[autolog.key] -= 1
            if not _autolog_users[autolog.key]:
                del _autolog_users[autolog.key]
                autolog.switch(False)
        if async_logging:
            _async_users -= 1
            if not _async_users:
                if _async_saved is None:
                    os.environ.pop(_ASYNC_ENV, None)
                else:
                    os.environ[_ASYNC_ENV] = _async_saved
                if _queued is not None:
                    store, theirs, ours = _queued
                    _queued = None
                    ours.close()  # sends what is left (runs not ended by a tracked call)
                    store._async_logging_queue = theirs
        if _open or _saved is None:
            return
        saved, _saved, _uri = _saved, None, None
        if saved.marked_absent and sys.modules.get(_SPARK, _SPARK) is None:
            del sys.modules[_SPARK]
        if tracking_utils._tracking_uri != saved.uri:
            mlflow.set_tracking_uri(saved.uri)
        if saved.uri_env is None:
            os.environ.pop(_URI_ENV, None)
        else:
            os.environ[_URI_ENV] = saved.uri_env
        fluent._active_experiment_id = saved.experiment_id  # type: ignore[assignment]


@contextlib.contextmanager
def applied(uri: str, autolog: Autolog | None, async_logging: bool = False) -> Iterator[None]:
    """Hold MLflow's global state for one tracked task: the tracking URI, autologging, async logging.

    Raises:
        MlflowTrackingError: another tracked task in this process uses a different tracking URI.
    """
    hold(uri, autolog, async_logging)
    try:
        yield
    finally:
        release(autolog, async_logging)


def async_logging_on() -> bool:
    """Whether MLflow's fluent ``log_*`` calls queue by default in this process right now."""
    return bool(MLFLOW_ENABLE_ASYNC_LOGGING.get())


def _install_queue(uri: str) -> tuple[Any, Any, RunQueue] | None:
    """Put a :class:`RunQueue` in place of MLflow's queue on ``uri``'s store, after draining MLflow's.

    Returns ``None`` (MLflow's queue stays) if the store no longer keeps its queue where expected.
    """
    store = tracking_utils._get_store(uri)
    theirs = getattr(store, "_async_logging_queue", None)
    if theirs is None or not callable(getattr(store, "log_batch", None)):
        return None
    _drain_mlflow_queue(store)
    server = server_for(uri)  # http(s): the plugin's own request path, bounded like its other requests
    ours = RunQueue(server.log_batch if isinstance(server, RestServer) else store.log_batch)
    store._async_logging_queue = ours
    return store, theirs, ours


def queue() -> RunQueue | None:
    """The plugin's queue while tracked tasks hold asynchronous logging, else ``None``."""
    installed = _queued
    return installed[2] if installed is not None else None


def drain_async_logging(uri: str, run_ids: Iterable[str], deadline: float | None = None) -> list[str]:
    """Send what is queued for ``run_ids`` and wait until it is stored; report what failed.

    With the plugin's queue installed only these runs are drained, and other tasks keep queueing; a
    server that is away is waited for until ``deadline`` (``time.monotonic()``), and what is left is
    for :func:`take_unsent`. Otherwise (asynchronous logging switched on by the user) MLflow's queue
    for ``uri`` is drained.

    Returns:
        One line per queued call that failed (run id and error); MLflow's own queue reports none.
    """
    ours = queue()
    if ours is not None:
        return [f"run {run_id}: {error}" for run_id, error in ours.drain_all(run_ids, deadline)]
    _drain_mlflow_queue(tracking_utils._get_store(uri))
    return []


def take_unsent(run_id: str) -> list[Values]:
    """What the plugin's queue still holds for ``run_id`` after a drain (its server away), handed over."""
    ours = queue()
    return ours.take(run_id) if ours is not None else []


def _drain_mlflow_queue(store: Any) -> None:
    """Send everything MLflow's own ``AsyncLoggingQueue`` on ``store`` holds, and wait until it is stored.

    MLflow keeps one queue per tracking store and process, with a thread that hands queued calls to a
    pool of senders. Its own ``flush_async_logging`` is not safe while other tasks keep logging: a
    call queued just as the thread stops is left behind, and the flush then waits for it forever.
    So the drain is done here with the queue's own steps:

    1. under the queue's lock (a task that would restart the queue meanwhile waits a moment instead
       of racing), stop the thread, which first hands every queued call to the current senders, and
       start the queue again with new ones, which also pick up anything queued during the switch;
    2. outside the lock, so other tasks keep queueing, wait for the old senders: every call queued
       before the drain began is then stored. The old status-check threads are let go, and the
       queue's exit callback stays registered once, not once per drain.

    Returns at once when the queue is not running. Falls back to MLflow's ``flush_async_logging``
    if the queue no longer has the parts this relies on.
    """
    queue = getattr(store, "_async_logging_queue", None)
    if queue is None or isinstance(queue, RunQueue) or not queue.is_active():
        return
    lock = getattr(queue, "_lock", None)
    if lock is None or not hasattr(queue, "_batch_logging_worker_threadpool"):
        store.flush_async_logging()
        return
    with lock:
        if not queue.is_active():
            return
        queue.end_async_logging()
        senders = queue._batch_logging_worker_threadpool
        waiters = getattr(queue, "_batch_status_check_threadpool", None)
        # activate() registers the queue's exit callback again each time: keep one registration.
        atexit.unregister(queue._at_exit_callback)
        queue.activate()
    senders.shutdown(wait=True)
    if waiters is not None:
        waiters.shutdown(wait=False)  # its threads end once they have seen the old batches complete


def open_tasks() -> int:
    """How many tracked tasks currently hold the global state (for tests and diagnostics)."""
    return _open
