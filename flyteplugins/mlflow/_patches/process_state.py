"""MLflow's process-wide state, held while tracked tasks run and restored exactly after the last.

The tracking URI (and its environment variable), the active experiment, autologging per integration
and asynchronous logging cannot be per task; tracked tasks in one process therefore share them and
must agree on the tracking URI. Each is a :class:`~.patch.Patch`: the first task that needs it puts
it in, the last one takes it out.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Final

import mlflow
from flyteplugins.mlflow._buffer.queue import RunQueue
from flyteplugins.mlflow._buffer.values import Values
from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._patches import run_reads
from flyteplugins.mlflow._patches.patch import Patch, Undo
from flyteplugins.mlflow._plan.plan import Autolog
from flyteplugins.mlflow._settings.frozen import thaw
from flyteplugins.mlflow._transport.client import client_for
from flyteplugins.mlflow._transport.rest import RestClient
from flyteplugins.mlflow._transport.servers import describe
from mlflow.config import enable_async_logging
from mlflow.environment_variables import MLFLOW_ENABLE_ASYNC_LOGGING
from mlflow.tracking import fluent
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS

__all__ = [
    "ASYNC",
    "URI",
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


def _autolog_function(autolog: Autolog) -> Any:
    """``mlflow.autolog`` or the framework's ``mlflow.<framework>.autolog``.

    Raises:
        ValueError: the framework's MLflow module has no ``autolog`` function.
    """
    module = importlib.import_module(f"mlflow.{autolog.framework}") if autolog.framework else mlflow
    function = getattr(module, "autolog", None)
    if not callable(function):
        msg = f"framework {autolog.framework!r}: mlflow.{autolog.framework} has no autolog() function"
        raise ValueError(msg)
    return function


def _install_autolog(undo: Undo, autolog: Autolog) -> None:
    function = _autolog_function(autolog)
    integration = getattr(function, "integration_name", None) if autolog.framework else None
    # The user's own configuration of this framework (a module-level mlflow.<framework>.autolog()),
    # put back after the last task instead of leaving the framework switched off.
    theirs = dict(AUTOLOGGING_INTEGRATIONS.get(integration) or {}) if integration else {}
    function(**thaw(autolog.kwargs))

    def switch_off() -> None:
        function(disable=True)
        if integration is None:
            return
        if theirs and not theirs.get("disable"):
            function(**theirs)
        else:
            # A framework's own autolog() marks its settings as chosen by the user, and from then on
            # the generic mlflow.autolog() skips that framework. Switched off, the framework must look
            # unconfigured again, or a later generic-autolog task would silently log nothing for it.
            AUTOLOGGING_INTEGRATIONS.pop(integration, None)

    undo.then(switch_off)


_SPARK: Final = "pyspark"


def _install_uri(undo: Undo, uri: str) -> None:
    for module, name in ((tracking_utils, "_tracking_uri"), (fluent, "_active_experiment_id")):
        if not hasattr(module, name):
            raise URI.error(f"{module.__name__}.{name} no longer exists")
    saved_uri: str | None = tracking_utils._tracking_uri
    saved_env = os.environ.get(_URI_ENV)
    saved_experiment = fluent._active_experiment_id
    # MLflow imports pyspark on every fluent log_* call; where it is not installed, that failing import
    # searches sys.path each time and is most of what a queued call costs. Make it fail at once.
    marked = _SPARK not in sys.modules and importlib.util.find_spec(_SPARK) is None
    if marked:
        sys.modules[_SPARK] = None  # type: ignore[assignment]

    def restore() -> None:
        still: object = sys.modules.get(_SPARK, _SPARK)
        if marked and still is None:
            del sys.modules[_SPARK]
        if tracking_utils._tracking_uri != saved_uri:
            mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop(_URI_ENV, None)
        else:
            os.environ[_URI_ENV] = saved_env
        fluent._active_experiment_id = saved_experiment

    undo.then(restore)
    if mlflow.get_tracking_uri() != uri or tracking_utils._tracking_uri is None:
        mlflow.set_tracking_uri(uri)


def _admit_uri(shared: str, uri: str) -> None:
    if uri != shared:
        msg = (
            f"a tracked task asked for the tracking server at {describe(uri)} while other tracked "
            f"tasks in this process use {describe(shared)}; tasks that run concurrently in one "
            "process must share one tracking URI"
        )
        raise MlflowTrackingError(msg)


_queued: tuple[Any, Any, RunQueue] | None = None  # (store, MLflow's queue, ours) while installed


def _install_async(undo: Undo, uri: str) -> None:
    global _queued
    saved = os.environ.get(_ASYNC_ENV)
    store, theirs, ours = _queued = _install_queue(uri)

    def put_back() -> None:
        global _queued
        _queued = None
        ours.close()  # sends what is left (runs not ended by a tracked call)
        store._async_logging_queue = theirs

    undo.then(put_back)

    def restore_env() -> None:
        if saved is None:
            os.environ.pop(_ASYNC_ENV, None)
        else:
            os.environ[_ASYNC_ENV] = saved

    undo.then(restore_env)
    run_reads.install(undo)
    enable_async_logging(True)


URI: Patch[str] = Patch("share the tracking URI", _install_uri, _admit_uri)
"""The tracking URI, active experiment and pyspark marker of the open tracked tasks."""
ASYNC: Patch[str] = Patch("queue logging per run", _install_async)
"""Asynchronous logging, with the plugin's per-run queue on the store (and :mod:`.run_reads`)."""
_autolog: dict[str, Patch[Autolog]] = {}
_autolog_lock = threading.Lock()


def _autolog_patch(autolog: Autolog) -> Patch[Autolog]:
    with _autolog_lock:
        if autolog.key not in _autolog:
            _autolog[autolog.key] = Patch("switch autologging", _install_autolog)
        return _autolog[autolog.key]


def hold(uri: str, autolog: Autolog | None, async_logging: bool = False) -> None:
    """Take the global state for one tracked task (see :func:`applied`)."""
    URI.acquire(uri)
    try:
        if autolog is not None:
            _autolog_patch(autolog).acquire(autolog)
        try:
            if async_logging:
                ASYNC.acquire(uri)
        except BaseException:
            if autolog is not None:
                _autolog_patch(autolog).release()
            raise
    except BaseException:
        URI.release()
        raise


def use_experiment(experiment_id: str) -> None:
    """Make ``experiment_id`` MLflow's active experiment while tracked tasks hold the global state."""

    def use() -> None:
        fluent._active_experiment_id = experiment_id  # type: ignore[assignment]

    URI.if_installed(use)


def release(autolog: Autolog | None, async_logging: bool = False) -> None:
    """Give back what :func:`hold` took; the last task out restores what was there before."""
    if autolog is not None:
        _autolog_patch(autolog).release()
    if async_logging:
        ASYNC.release()
    URI.release()


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


def _install_queue(uri: str) -> tuple[Any, Any, RunQueue]:
    """Put a :class:`RunQueue` in place of MLflow's queue on ``uri``'s store, after draining MLflow's.

    Raises:
        RuntimeError: the store no longer keeps its queue where expected (nothing is changed).
    """
    store = tracking_utils._get_store(uri)
    theirs = getattr(store, "_async_logging_queue", None)
    if theirs is None or not callable(getattr(store, "log_batch", None)):
        what = f"{type(store).__name__}._async_logging_queue"
        raise ASYNC.error(f"{what} no longer exists (or its store has no log_batch)")
    _drain_mlflow_queue(store)
    server = client_for(uri)  # http(s): the plugin's own request path, bounded like its other requests
    ours = RunQueue(server.log_batch if isinstance(server, RestClient) else store.log_batch)
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

    MLflow's ``flush_async_logging`` can wait forever while other tasks keep logging. So, under the
    queue's lock, its thread hands every queued call to the current senders and the queue restarts
    with new ones; outside the lock (others keep queueing) the old senders are waited for. Returns at
    once when the queue is not running; falls back to ``flush_async_logging`` if its parts moved.
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
    return URI.users
