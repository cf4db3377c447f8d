"""Marking the plugin's open runs ``KILLED`` when the process is stopped with SIGTERM.

Kubernetes, and so Flyte, stops a task's container by sending SIGTERM, then SIGKILL after a grace
period. With Python's default disposition SIGTERM ends the process at once: no ``finally`` block runs,
so every run the process had opened would stay ``RUNNING`` in MLflow forever.

How it works
------------
:func:`register` records each run that the process *owns* (it created or resumed it, and will set its
final status) together with the server object that reaches it; :func:`unregister` removes it again
when the run is finalized normally. Runs that a task only shares with its caller are never
registered, so they are never ended here.

A handler for SIGTERM is installed lazily, the first time the plugin is used from the main thread
(``signal.signal`` only works there; elsewhere installation is skipped and tried again later). If the
process ignores SIGTERM, nothing is installed. When the signal arrives, the handler

1. takes every registered run out of the registry (each run is claimed exactly once: either by the
   handler or by the normal finalization, never both);
2. marks them ``KILLED``, all at once, in short-lived daemon threads, with a short request timeout,
   one retry and an overall deadline of :data:`KILL_DEADLINE` seconds, so a dead tracking server
   cannot hold the process hostage during its grace period;
3. lets the process end the way it would have without the plugin: it calls the handler that was
   installed before, or, if that was the default, restores the default and raises the signal again.

The same marking runs at interpreter exit (``atexit``) for runs still open then: for example a sync
task whose caller was cancelled keeps running in its worker thread (threads cannot be cancelled),
and the process may exit before that thread finishes its run.

Python runs signal handlers in the main thread between bytecodes, so a main thread busy in one long
C call handles the signal when that call returns. A forked child starts with an empty registry: it
never ends the runs of its parent.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Final

import attrs

from flyteplugins.mlflow._server import RequestPolicy, Server
from mlflow.entities import RunStatus

__all__ = ["KILL_DEADLINE", "KILL_POLICY", "install", "installed", "register", "unregister"]

logger = logging.getLogger("flyteplugins.mlflow")

KILL_POLICY: Final = RequestPolicy(timeout=2.0, retries=1, backoff=0.25)
"""The limits for each ``KILLED`` request sent while the process is being stopped."""

KILL_DEADLINE: Final = 5.0
"""The longest the handler waits for the ``KILLED`` requests before letting the process end."""


@attrs.frozen
class _Owned:
    run_id: str
    server: Server
    pid: int


_open: dict[int, _Owned] = {}
_tokens = itertools.count(1)
_previous: Callable[[int, FrameType | None], object] | int | signal.Handlers | None = None
_installed = False


def register(run_id: str, server: Server) -> int:
    """Record a run this process owns, so SIGTERM marks it ``KILLED``; returns the token to unregister it.

    Also installs the SIGTERM handler if this is the main thread and it is not installed yet.
    """
    install()
    token = next(_tokens)
    _open[token] = _Owned(run_id, server, os.getpid())
    return token


def unregister(token: int) -> bool:
    """Forget a run before it is finalized.

    Returns:
        ``True`` if the caller should set the run's final status, ``False`` if the SIGTERM handler
        already claimed the run (and marked it ``KILLED``).
    """
    return _open.pop(token, None) is not None


def installed() -> bool:
    """Whether the SIGTERM handler is installed in this process."""
    return _installed


def install() -> None:
    """Install the SIGTERM handler, once, if called from the main thread; otherwise do nothing.

    Never raises: a process where the handler cannot be installed keeps its own SIGTERM behaviour.
    """
    global _previous, _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    # Only the main thread gets here, so there is no race between two installs.
    try:
        current = signal.getsignal(signal.SIGTERM)
        if current == signal.SIG_IGN:
            return  # the process outlives SIGTERM: its runs are not being killed
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError, AttributeError):  # not the main interpreter, or no SIGTERM here
        return
    _previous = current
    _installed = True


def _take_all() -> list[_Owned]:
    pid = os.getpid()
    taken: list[_Owned] = []
    for token in list(_open):
        owned = _open.pop(token, None)  # atomic: a concurrent unregister() gets None, or we do
        if owned is not None and owned.pid == pid:
            taken.append(owned)
    return taken


def _mark_killed(owned: _Owned) -> None:
    try:
        owned.server.set_status(
            owned.run_id, RunStatus.to_string(RunStatus.KILLED), int(time.time() * 1000), KILL_POLICY
        )
        logger.warning("SIGTERM: MLflow run %s marked KILLED", owned.run_id)
    except Exception as e:
        logger.warning("SIGTERM: MLflow run %s could not be marked KILLED: %s", owned.run_id, e)


def _kill_open_runs() -> None:
    runs = _take_all()
    if runs:
        workers = [
            threading.Thread(target=_mark_killed, args=(owned,), name="flyteplugins-mlflow-kill", daemon=True)
            for owned in runs
        ]
        deadline = time.monotonic() + KILL_DEADLINE
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _kill_open_runs()
    _chain(signum, frame)


def _chain(signum: int, frame: FrameType | None) -> None:
    previous = _previous
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    # The default (or a handler set outside Python): end the process as SIGTERM would have.
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _forget_after_fork() -> None:
    _open.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_kill_open_runs)
