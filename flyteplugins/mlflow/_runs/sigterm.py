"""Marking the process's open runs ``KILLED`` when it is stopped with SIGTERM, promptly.

Kubernetes and PyTorch's elastic agent stop a process with SIGTERM, whose default action runs no
``finally``: its runs would stay ``RUNNING`` forever. A wakeup fd and a watcher thread act even while
the main thread is blocked in native code; ``docs/design.md`` says how, and when it is installed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Final

import attrs

from flyteplugins.mlflow._plan.snapshot import env_rank
from flyteplugins.mlflow._transport.policy import RequestPolicy

if TYPE_CHECKING:
    from flyteplugins.mlflow._transport.client import Client

__all__ = ["DRAIN_BUDGET", "KILL_DEADLINE", "KILL_POLICY", "install", "installed", "register", "unregister"]

logger = logging.getLogger("flyteplugins.mlflow")

KILL_POLICY: Final = RequestPolicy(timeout=2.0, retries=1, backoff=0.25, outage=0.0)
"""The limits for each ``KILLED`` request sent while the process is being stopped."""

KILL_DEADLINE: Final = 5.0
"""The longest the handler waits for the ``KILLED`` requests before letting the process end."""

DRAIN_BUDGET: Final = KILL_DEADLINE / 2
"""Of that, the longest it waits for a run's queued logging (``async_logging=True``) to be stored first."""


@attrs.frozen
class _Owned:
    run_id: str
    client: Client
    pid: int
    journal_dir: str | None = None


_open: dict[int, _Owned] = {}
_tokens = itertools.count(1)
_previous: Callable[[int, FrameType | None], object] | int | signal.Handlers | None = None
_installed = False
_pipe: tuple[int, int] | None = None  # the wakeup fd's pipe: (read end, write end)
_previous_wakeup = -1
_killing = threading.Lock()  # held while open runs are being marked KILLED


_hooked = False


def _hooks() -> None:
    """Once per process, with the first run or handler: forget runs in a forked child, and mark the runs
    still open at interpreter exit (a sync task whose caller was cancelled may still be running)."""
    global _hooked
    if not _hooked:
        _hooked = True
        os.register_at_fork(after_in_child=_forget_after_fork)
        atexit.register(_kill_open_runs)


def register(run_id: str, client: Client, journal_dir: str | None = None) -> int:
    """Record a run this process owns, so SIGTERM marks it ``KILLED``; returns the token to unregister it.

    ``journal_dir`` is where a journal goes if the server is away then. Also installs the SIGTERM
    handler if this is the main thread and it is not installed yet.
    """
    _hooks()
    install(0)  # a process that owns a run is the one that logs, whatever its environment says
    token = next(_tokens)
    _open[token] = _Owned(run_id, client, os.getpid(), journal_dir)
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


def install(rank: int | None = None) -> None:
    """Install the SIGTERM handler and its watcher, once, if called from the main thread of a process
    that can own runs; otherwise do nothing.

    Args:
        rank: the tracker's explicit rank; ``None`` reads it from the environment. A process whose rank
            is not 0 never owns a run, so nothing is installed there.

    Never raises: a process where the handler cannot be installed keeps its own SIGTERM behaviour.
    """
    global _previous, _installed, _pipe, _previous_wakeup
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _hooks()
    try:
        effective = rank if rank is not None else env_rank()
    except ValueError:
        return  # a malformed rank is reported, clearly, when the tracked call reads it
    if effective not in (None, 0):
        return
    # Only the main thread gets here, so there is no race between two installs.
    read_end = write_end = -1
    wakeup_set = False
    try:
        current = signal.getsignal(signal.SIGTERM)
        if current == signal.SIG_IGN:
            return  # the process outlives SIGTERM: its runs are not being killed
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        wakeup_set = True
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError, AttributeError):  # not the main interpreter, or no SIGTERM here
        if wakeup_set:
            signal.set_wakeup_fd(previous_wakeup)
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
        return
    _previous, _previous_wakeup, _pipe = current, previous_wakeup, (read_end, write_end)
    _installed = True
    threading.Thread(
        target=_watch,
        args=(read_end, previous_wakeup, os.getpid()),
        name="flyteplugins-mlflow-sigterm",
        daemon=True,
    ).start()


def _watch(read_end: int, forward_to: int, pid: int) -> None:
    """Wait for the signal numbers CPython writes to the wakeup fd; act on SIGTERM at once."""
    while True:
        try:
            data = os.read(read_end, 512)
        except InterruptedError:
            continue
        except OSError:
            return
        if not data or os.getpid() != pid:
            return
        if forward_to >= 0:
            with contextlib.suppress(OSError):
                os.write(forward_to, data)
        if signal.SIGTERM in data:
            _kill_open_runs()
            if not callable(_previous):
                _die_of_sigterm()


def _die_of_sigterm() -> None:
    """End the process by SIGTERM with its default action, from any thread.

    ``signal.signal`` works only on the main thread, which may be blocked in native code; the C
    library's ``signal`` does the same from here.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.signal.restype = ctypes.c_void_p
        libc.signal(signal.SIGTERM, None)  # SIG_DFL
        os.kill(os.getpid(), signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    os._exit(128 + signal.SIGTERM)  # only if the default action could not be restored


def _take_all() -> list[_Owned]:
    pid = os.getpid()
    taken: list[_Owned] = []
    for token in list(_open):
        owned = _open.pop(token, None)  # atomic: a concurrent unregister() gets None, or we do
        if owned is not None and owned.pid == pid:
            taken.append(owned)
    return taken


def _mark_killed(owned: _Owned) -> None:
    from flyteplugins.mlflow._runs.finish import KILLED, settle, unsent_within  # loaded with the first run

    unsent = unsent_within(owned.run_id, DRAIN_BUDGET)
    if unsent:
        logger.warning(
            "SIGTERM: MLflow run %s: queued logging not stored within %ss", owned.run_id, DRAIN_BUDGET
        )
    try:
        done = settle(
            owned.client,
            owned.run_id,
            KILLED,
            KILL_POLICY,
            unsent=unsent,
            journal_dir=owned.journal_dir,
            if_running=True,
        )
    except Exception as e:
        logger.warning("SIGTERM: MLflow run %s could not be marked KILLED: %s", owned.run_id, e)
        return
    if done.ended is not None:  # a failed rank marked it FAILED before the launcher stopped this one
        logger.warning("SIGTERM: MLflow run %s has already ended %s; left as it is", owned.run_id, done.ended)
    elif done.journal is None:
        logger.warning("SIGTERM: MLflow run %s marked KILLED", owned.run_id)
    else:
        logger.warning(
            "SIGTERM: MLflow run %s: the tracking server is away (%s); its unsent values and KILLED status "
            "are in a journal. Send it once the server is back: python -m flyteplugins.mlflow replay %s",
            owned.run_id,
            done.reason if done.away else "its queued values could not be sent",
            done.journal,
        )


def _kill_open_runs() -> None:
    """Mark every open run ``KILLED``; a second caller waits until the first one is done."""
    with _killing:
        runs = _take_all()
        if not runs:
            return
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
    """In a forked child: no runs of the parent's, and the signal set-up from before the plugin."""
    global _installed, _pipe, _killing
    _open.clear()
    _killing = threading.Lock()
    if not _installed:
        return
    _installed = False
    with contextlib.suppress(ValueError, OSError, TypeError):
        signal.set_wakeup_fd(_previous_wakeup)
        previous = _previous if _previous is not None else signal.SIG_DFL
        signal.signal(signal.SIGTERM, previous)
    if _pipe is not None:
        for fd in _pipe:
            with contextlib.suppress(OSError):
                os.close(fd)
        _pipe = None
