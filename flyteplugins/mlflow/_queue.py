"""Queued logging for ``async_logging=True``: one request per run and interval, drained per run.

MLflow's fluent ``log_*`` calls, with asynchronous logging on, hand their values to the tracking
store's ``AsyncLoggingQueue``. That queue merges only *consecutive* calls for the same run into one
request, so trials that log side by side (their calls interleave) send one ``runs/log-batch``
request per call, and its only flush stops and restarts the whole queue for everyone. While the
plugin holds asynchronous logging, :class:`RunQueue` stands in for it on the store (see
:func:`install`), with the same surface (``log_batch_async`` returning MLflow's ``RunOperations``,
``flush``, ``end_async_logging``, ``shut_down_async_logging``) and these rules:

* values are kept per run, in the order they were logged; nothing is changed or merged away: every
  ``Metric``, ``Param`` and ``RunTag`` is sent as it was given (same keys, values, steps and
  timestamps), so ``MlflowClient.get_metric_history`` returns exactly what synchronous logging stores.
  Calls that set the same param or tag key go in separate requests, in order, so each is stored or
  refused on its own, as it would be synchronously;
* a run's values go out in one ``log_batch`` call once the oldest of them has waited
  :func:`interval` seconds, or once they fill a request (MLflow's limits: 1,000 entities, 100 params,
  100 tags), or when the run is drained;
* :meth:`RunQueue.drain` sends one run's values now, from the calling thread, and returns the errors
  its queued calls met; other runs keep queueing meanwhile;
* memory is bounded: at most :data:`LIMIT` values are held (queued or being sent). A call that would
  go past it waits until sends have made room, so logging slows to the server's pace instead of
  growing without bound; nothing is dropped.

Sends for one run never overlap, so a later value of a tag or param never overtakes an earlier one.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from mlflow.entities import Metric, Param, RunTag
from mlflow.environment_variables import MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS
from mlflow.utils.async_logging.run_operations import RunOperations

__all__ = ["LIMIT", "RunQueue", "interval"]

logger = logging.getLogger("flyteplugins.mlflow")

LIMIT: Final = 100_000
"""The most values (metrics, params and tags) a queue holds before ``log_*`` calls wait for room."""

DEFAULT_INTERVAL: Final = 1.0
# What one log-batch request may carry (MLflow's MAX_ENTITIES_PER_BATCH and its params/tags limits).
_MAX_ENTITIES: Final = 1000
_MAX_PARAMS: Final = 100
_MAX_TAGS: Final = 100

Send = Callable[..., None]  # the store's log_batch(run_id=, metrics=, params=, tags=)


def interval() -> float:
    """How long a value may wait for company: ``MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS`` if set, else 1 s."""
    seconds = MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS.get()
    return float(seconds) if seconds else DEFAULT_INTERVAL


class _Entry:
    """One ``log_batch_async`` call: its values, when it was queued, and whether it is stored.

    It is also what MLflow's ``RunOperations`` waits on (``result()``), in place of a
    ``concurrent.futures.Future``, which would cost a lock and a condition per call.
    """

    __slots__ = ("cond", "done", "error", "metrics", "params", "queued", "seq", "size", "tags")

    def __init__(
        self, cond: threading.Condition, metrics: list[Metric], params: list[Param], tags: list[RunTag]
    ) -> None:
        self.cond = cond
        self.seq = 0
        self.metrics = metrics
        self.params = params
        self.tags = tags
        self.size = len(metrics) + len(params) + len(tags)
        self.queued = time.monotonic()
        self.done = False
        self.error: BaseException | None = None

    def result(self, timeout: float | None = None) -> None:
        """Wait until the values are stored; raise what storing them raised.

        Raises:
            TimeoutError: not stored within ``timeout`` seconds.
        """
        with self.cond:
            if not self.cond.wait_for(lambda: self.done, timeout):
                raise TimeoutError
        if self.error is not None:
            raise self.error


class _Run:
    """One run's queued calls, the lock that keeps its sends in order, and the errors not yet reported."""

    __slots__ = ("entries", "errors", "sending", "size")

    def __init__(self) -> None:
        self.entries: deque[_Entry] = deque()
        self.size = 0  # the values in ``entries``
        self.sending = threading.Lock()
        self.errors: list[BaseException] = []


_open: weakref.WeakSet[RunQueue] = weakref.WeakSet()
_exit_lock = threading.Lock()
_exit_registered = False


def _at_exit(queue: RunQueue) -> None:
    """Close ``queue`` at interpreter exit if it is still open; one exit callback per process, however
    many queues come and go."""
    global _exit_registered
    with _exit_lock:
        _open.add(queue)
        if not _exit_registered:
            atexit.register(_close_open)
            _exit_registered = True


def _close_open() -> None:
    for queue in list(_open):
        queue.close()


class RunQueue:
    """Per-run queued logging for one tracking store, in place of MLflow's ``AsyncLoggingQueue``.

    Args:
        send: the store's ``log_batch``, called with ``run_id``, ``metrics``, ``params``, ``tags``.
        limit: the most values held at once (see :data:`LIMIT`).
    """

    def __init__(self, send: Send, limit: int = LIMIT) -> None:
        self._send = send
        self._limit = limit
        self._cond = threading.Condition()
        self._runs: dict[str, _Run] = {}
        self._held = 0  # values queued or being sent
        self._seq = itertools.count(1)
        self._closed = False
        self._pressed = False  # a caller waits for room: send everything now
        self.high_water = 0
        """The most values held at once so far (for the benchmark and tests)."""
        self.waits = 0
        """How many calls had to wait for room."""
        self._thread = threading.Thread(target=self._loop, name="flyteplugins-mlflow-queue", daemon=True)
        self._thread.start()
        _at_exit(self)

    # --- MLflow's AsyncLoggingQueue surface (what AbstractStore and mlflow.flush_async_logging call)

    def is_active(self) -> bool:
        """Always: the queue takes calls from the moment it is installed."""
        return True

    def is_idle(self) -> bool:
        """Never while installed (MLflow then calls :meth:`flush` and :meth:`shut_down_async_logging`)."""
        return False

    def activate(self) -> None:
        """Nothing to do: the queue runs from the start."""

    def log_batch_async(
        self, run_id: str, params: list[Param], tags: list[RunTag], metrics: list[Metric]
    ) -> RunOperations:
        """Queue one call's values for ``run_id``; wait first if the queue is full.

        Returns:
            MLflow's ``RunOperations``, whose ``wait()`` returns once the values are stored and raises
            what storing them raised.
        """
        entry = _Entry(self._cond, list(metrics), list(params), list(tags))
        if self._closed:  # set once, never cleared: no lock needed to read it
            self._send_now(run_id, entry)
            return RunOperations([entry])
        with self._cond:
            if self._held and self._held + entry.size > self._limit:
                self.waits += 1
                while self._held and self._held + entry.size > self._limit and not self._closed:
                    self._pressed = True
                    self._cond.notify_all()
                    self._cond.wait()
            entry.seq = next(self._seq)
            run = self._runs.get(run_id)
            if run is None:
                run = self._runs[run_id] = _Run()
            run.entries.append(entry)
            run.size += entry.size
            self._held += entry.size
            self.high_water = max(self.high_water, self._held)
            if len(run.entries) == 1 or run.size >= _MAX_ENTITIES:
                self._cond.notify_all()
        return RunOperations([entry])

    def flush(self) -> None:
        """Send everything queued, for every run (``mlflow.flush_async_logging``)."""
        with self._cond:
            run_ids = list(self._runs)
        for run_id in run_ids:
            errors = self.drain(run_id)
            for error in errors:
                logger.error("MLflow run %s: queued logging failed: %s", run_id, error)

    end_async_logging = flush
    shut_down_async_logging = flush

    # --- the plugin's own

    def drain(self, run_id: str) -> list[BaseException]:
        """Send everything queued for ``run_id`` so far, and wait until it is stored.

        Returns:
            The errors the run's queued calls met since the last drain (they are reported once).
        """
        with self._cond:
            run = self._runs.get(run_id)
            mark = next(self._seq)
        if run is None:
            return []
        with run.sending:
            while self._send_chunk(run_id, run, mark):
                pass
            with self._cond:
                errors, run.errors = run.errors, []
                if not run.entries:
                    self._runs.pop(run_id, None)
        with self._cond:
            self._cond.notify_all()  # the sending thread skipped this run while it was being drained
        return errors

    def drain_all(self, run_ids: Iterable[str] | None = None) -> list[tuple[str, BaseException]]:
        """Drain the given runs (every run when ``None``); return their errors with their run ids."""
        with self._cond:
            targets = list(self._runs) if run_ids is None else list(run_ids)
        return [(run_id, e) for run_id in targets for e in self.drain(run_id)]

    def close(self) -> None:
        """Send everything queued and stop the sending thread; later calls are sent as they come."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for run_id, error in self.drain_all():
            logger.error("MLflow run %s: queued logging failed: %s", run_id, error)
        if self._thread is not threading.current_thread():
            self._thread.join()
        _open.discard(self)

    def held(self) -> int:
        """How many values are queued or being sent right now."""
        with self._cond:
            return self._held

    # --- sending

    def _send_chunk(self, run_id: str, run: _Run, mark: int | None) -> bool:
        """Send the run's oldest values that fit in one request (up to sequence ``mark``), with
        ``run.sending`` held. Returns whether anything was sent."""
        with self._cond:
            taken: list[_Entry] = []
            size = 0
            params: set[str] = set()
            tags: set[str] = set()
            while run.entries:
                entry = run.entries[0]
                if mark is not None and entry.seq > mark:
                    break
                keys = {p.key for p in entry.params}, {t.key for t in entry.tags}
                if taken and (
                    size + entry.size > _MAX_ENTITIES
                    or len(params) + len(keys[0]) > _MAX_PARAMS
                    or len(tags) + len(keys[1]) > _MAX_TAGS
                    # A key twice in one request is refused (params) or ambiguous (tags): as separate
                    # calls they are stored one after the other, so they go in separate requests.
                    or not params.isdisjoint(keys[0])
                    or not tags.isdisjoint(keys[1])
                ):
                    break
                taken.append(run.entries.popleft())
                run.size -= entry.size
                size += entry.size
                params |= keys[0]
                tags |= keys[1]
        if not taken:
            return False
        error: BaseException | None = None
        try:
            self._send(
                run_id=run_id,
                metrics=[m for e in taken for m in e.metrics],
                params=[p for e in taken for p in e.params],
                tags=[t for e in taken for t in e.tags],
            )
        except Exception as e:
            error = e
        with self._cond:
            self._held -= size
            if error is not None:
                run.errors.append(error)
            for entry in taken:
                entry.done, entry.error = True, error
            self._cond.notify_all()
        return True

    def _send_now(self, run_id: str, entry: _Entry) -> None:
        """After :meth:`close`: store one call's values at once, in the calling thread."""
        try:
            self._send(run_id=run_id, metrics=entry.metrics, params=entry.params, tags=entry.tags)
        except Exception as e:
            entry.error = e
        entry.done = True

    def _due(self, now: float, wait: float) -> tuple[list[tuple[str, _Run]], float | None]:
        """The runs to send now, and how long until the next one is due (``None``: nothing queued)."""
        due: list[tuple[str, _Run]] = []
        soonest: float | None = None
        for run_id, run in self._runs.items():
            if not run.entries or run.sending.locked():  # a drain is sending it: it notifies when done
                continue
            at = run.entries[0].queued + wait
            if self._pressed or at <= now or run.size >= _MAX_ENTITIES:
                due.append((run_id, run))
            else:
                soonest = at - now if soonest is None else min(soonest, at - now)
        return due, soonest

    def _loop(self) -> None:
        """Send each run's values once the oldest has waited the interval, or they fill a request."""
        while True:
            with self._cond:
                while True:
                    due, soonest = self._due(time.monotonic(), interval())
                    if due or self._closed:
                        break
                    self._cond.wait(soonest)
                self._pressed = False
                if self._closed and not due:
                    return
            for run_id, run in due:
                if run.sending.acquire(blocking=False):  # else a drain is sending this run right now
                    try:
                        self._send_chunk(run_id, run, None)
                    finally:
                        run.sending.release()
            if self._closed:
                return
