"""MLflow's process-wide state: set while tracked tasks run, restored exactly when the last one ends.

Some MLflow settings cannot be scoped to one task: the tracking URI that the fluent API talks to
(which ``mlflow.set_tracking_uri`` also mirrors into the ``MLFLOW_TRACKING_URI`` environment
variable), the active experiment used by a bare ``mlflow.start_run()``, and autologging, which patches
library functions for the whole process. This module applies them when the first tracked task of a
process starts, counts the tracked tasks that are open, and restores what it found when the count
drops back to zero. Autologging is switched on per integration by the first task that asks for it
and switched off when the last task that asked for it ends.

Concurrent tracked tasks in one process share these settings, so they must agree on the tracking
URI: a task that asks for another URI while others are running is refused with a clear error.
The active experiment is the one of the most recent task to start; it only matters for runs that
user code starts itself without naming an experiment.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Final

import attrs

import mlflow
from flyteplugins.mlflow._config import thaw
from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._server import describe
from mlflow.tracking import fluent
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS

__all__ = ["Autolog", "applied", "hold", "open_tasks", "release", "use_experiment"]

_URI_ENV: Final = "MLFLOW_TRACKING_URI"


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


_lock = threading.Lock()
_open = 0
_saved: _Saved | None = None
_uri: str | None = None  # the tracking URI the open tasks share
_autolog_users: dict[str, int] = {}


def hold(uri: str, autolog: Autolog | None) -> None:
    """Take the global state for one tracked task (see :func:`applied`)."""
    global _open, _saved, _uri
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
        if not _open:
            _saved = _Saved(
                tracking_utils._tracking_uri, os.environ.get(_URI_ENV), fluent._active_experiment_id
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


def release(autolog: Autolog | None) -> None:
    """Give back what :func:`hold` took; the last task out restores what was there before."""
    global _open, _saved, _uri
    with _lock:
        _open -= 1
        if autolog is not None:
            _autolog_users[autolog.key] -= 1
            if not _autolog_users[autolog.key]:
                del _autolog_users[autolog.key]
                autolog.switch(False)
        if _open or _saved is None:
            return
        saved, _saved, _uri = _saved, None, None
        if tracking_utils._tracking_uri != saved.uri:
            mlflow.set_tracking_uri(saved.uri)
        if saved.uri_env is None:
            os.environ.pop(_URI_ENV, None)
        else:
            os.environ[_URI_ENV] = saved.uri_env
        fluent._active_experiment_id = saved.experiment_id  # type: ignore[assignment]


@contextlib.contextmanager
def applied(uri: str, autolog: Autolog | None) -> Iterator[None]:
    """Hold MLflow's global state for one tracked task: the tracking URI and autologging.

    Raises:
        MlflowTrackingError: another tracked task in this process uses a different tracking URI.
    """
    hold(uri, autolog)
    try:
        yield
    finally:
        release(autolog)


def open_tasks() -> int:
    """How many tracked tasks currently hold the global state (for tests and diagnostics)."""
    return _open
