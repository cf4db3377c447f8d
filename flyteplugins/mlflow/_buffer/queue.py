"""Queued logging for ``async_logging=True``: one request per run and interval, drained per run.

MLflow's ``AsyncLoggingQueue`` merges only consecutive calls for one run, so interleaved trials send a
request per call, and its one flush stops the queue for everyone. :class:`RunQueue` stands in for it
on the tracking store (``process_state`` installs it); its rules are in ``docs/design.md``.
"""

from __future__ import annotations

import atexit
import inspect
import itertools
import json
import logging
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import IO, Final

from flyteplugins.mlflow._buffer.records import Entry, RunEntries
from flyteplugins.mlflow._buffer.values import MAX_ENTITIES, Batch, Values, values_from_json, values_json
from flyteplugins.mlflow._errors import AWAY
from flyteplugins.mlflow._transport.policy import RequestPolicy
from mlflow.entities import Metric, Param, RunTag
from mlflow.environment_variables import MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS
from mlflow.utils.async_logging.run_operations import RunOperations

__all__ = ["LIMIT", "RunQueue", "interval"]

_BACKOFF: Final = RequestPolicy()  # the plugin's one backoff: 0.5 s doubling to 4 s

logger = logging.getLogger("flyteplugins.mlflow")

LIMIT: Final = 100_000
"""The most values (metrics, params and tags) a queue keeps queued in memory; past it they go to disk.

The request being sent holds up to 1,000 more (read back from disk if they were spilled)."""

DEFAULT_INTERVAL: Final = 1.0

Send = Callable[..., None]  # the store's log_batch(run_id=, metrics=, params=, tags=[, deadline=])


def interval() -> float:
    """How long a value may wait for company: ``MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS`` if set, else 1 s."""
    seconds = MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS.get()
    return float(seconds) if seconds else DEFAULT_INTERVAL


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
        limit: the most values held in memory at once (see :data:`LIMIT`).
    """

    def __init__(self, send: Send, limit: int = LIMIT) -> None:
        self._send = send
        self._deadlines = "deadline" in inspect.signature(send).parameters
        self._limit = limit
        self._spool: IO[bytes] | None = None
        self._cond = threading.Condition()
        self._runs: dict[str, RunEntries] = {}
        self._held = 0  # values queued or being sent
        self._seq = itertools.count(1)
        self._closed = False
        self._pressed = False  # memory holds LIMIT values (calls spill to disk): send everything now
        self.high_water = 0
        """The most values held in memory at once so far (for the benchmark and tests)."""
        self.spilled = 0
        """How many values went to the spool file on disk, past the memory bound."""
        self.spilled_bytes = 0
        """How many bytes the spool file has taken."""
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
        """Queue one call's values for ``run_id``, at once: on disk if memory holds :data:`LIMIT` values.

        Returns:
            MLflow's ``RunOperations``, whose ``wait()`` returns once the values are stored and raises
            what storing them raised.
        """
        entry = Entry(self._cond, list(metrics), list(params), list(tags))
        if self._closed:  # set once, never cleared: no lock needed to read it
            self._send_now(run_id, entry)
            return RunOperations([entry])
        with self._cond:
            if self._held and self._held + entry.size > self._limit:
                self._spill(entry)
                self._pressed = True
                self._cond.notify_all()
            entry.seq = next(self._seq)
            run = self._runs.get(run_id)
            if run is None:
                run = self._runs[run_id] = RunEntries()
            run.entries.append(entry)
            run.size += entry.size
            self._held += entry.held
            self.high_water = max(self.high_water, self._held)
            if len(run.entries) == 1 or run.size >= MAX_ENTITIES:
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

    def drain(self, run_id: str, deadline: float | None = None) -> list[BaseException]:
        """Send everything queued for ``run_id`` so far, and wait until it is stored.

        While the server is away, a drain with no ``deadline`` returns at once, its values still
        queued; with a ``deadline`` (``time.monotonic()``) it waits for the server until then. What is
        left afterwards is kept: :meth:`take` hands it over.

        Returns:
            The errors the run's queued calls met since the last drain (they are reported once); a
            server being away is not one of them.
        """
        with self._cond:
            run = self._runs.get(run_id)
            mark = next(self._seq)
        if run is None:
            return []
        wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not run.sending.acquire(timeout=wait):
            return self._errors_of(run)
        try:
            while True:
                outcome = self._send_chunk(run_id, run, mark, deadline)
                if outcome == "sent":
                    continue
                if outcome == "empty" or deadline is None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(run.pause, left))
            with self._cond:
                if not run.entries and self._runs.get(run_id) is run:
                    self._runs.pop(run_id, None)
        finally:
            run.sending.release()
        with self._cond:
            self._cond.notify_all()  # the sending thread skipped this run while it was being drained
        return self._errors_of(run)

    def _errors_of(self, run: RunEntries) -> list[BaseException]:
        with self._cond:
            errors, run.errors = run.errors, []
        return errors

    def take(self, run_id: str) -> list[Values]:
        """Hand over what is still unsent for ``run_id`` (a batch in flight included), oldest first, and
        forget the run. The values are no longer sent from here: the caller journals them."""
        with self._cond:
            run = self._runs.pop(run_id, None)
            if run is None:
                return []
            run.taken = True
            entries = [*run.inflight, *run.entries]
            for entry in run.entries:
                self._held -= entry.held
                entry.done = True
            run.entries.clear()
            run.size = 0
            taken = [self._values(entry) for entry in entries]
            self._cond.notify_all()
        return [values for values in taken if any(values)]

    def drain_all(
        self, run_ids: Iterable[str] | None = None, deadline: float | None = None
    ) -> list[tuple[str, BaseException]]:
        """Drain the given runs (every run when ``None``); return their errors with their run ids."""
        with self._cond:
            targets = list(self._runs) if run_ids is None else list(run_ids)
        return [(run_id, e) for run_id in targets for e in self.drain(run_id, deadline)]

    def close(self) -> None:
        """Send everything queued and stop the sending thread; later calls are sent as they come.

        Values whose server is away are logged as lost here: a task's end journals its own before.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for run_id, error in self.drain_all():
            logger.error("MLflow run %s: queued logging failed: %s", run_id, error)
        if self._thread is not threading.current_thread():
            self._thread.join()
        with self._cond:
            left = {run_id: run.size for run_id, run in self._runs.items() if run.size}
        for run_id, size in left.items():
            logger.error(
                "MLflow run %s: %d queued value(s) not stored: the tracking server is away", run_id, size
            )
        if self._spool is not None:
            self._spool.close()
        _open.discard(self)

    def held(self) -> int:
        """How many values are queued or being sent right now."""
        with self._cond:
            return self._held

    # --- sending

    def _spill(self, entry: Entry) -> None:
        """Move one call's values to the spool file (with the queue's lock held)."""
        if self._spool is None:
            self._spool = tempfile.TemporaryFile(prefix="flyteplugins-mlflow-queue-")  # noqa: SIM115 (closed by close())
        line = json.dumps(values_json((entry.metrics, entry.params, entry.tags))).encode()
        self._spool.seek(0, 2)
        entry.spilled = (self._spool.tell(), len(line))
        self._spool.write(line)
        self.spilled += entry.size
        self.spilled_bytes += len(line)
        entry.metrics, entry.params, entry.tags = [], [], []
        entry.held = 0

    def _values(self, entry: Entry) -> Values:
        """One call's values, read back from the spool if they were spilled (with the lock held)."""
        if entry.spilled is None or self._spool is None:
            return entry.metrics, entry.params, entry.tags
        offset, length = entry.spilled
        self._spool.seek(offset)
        return values_from_json(json.loads(self._spool.read(length)))

    def _send_chunk(self, run_id: str, run: RunEntries, mark: int | None, deadline: float | None) -> str:
        """Send the run's oldest values that fit in one request (up to sequence ``mark``), with
        ``run.sending`` held: ``"sent"``, ``"empty"`` (nothing to send), or ``"away"`` (the server
        did not take them; they are back at the front of the run's queue)."""
        with self._cond:
            taken: list[Entry] = []
            batch: list[Values] = []
            packer = Batch()
            while run.entries:
                entry = run.entries[0]
                if mark is not None and entry.seq > mark:
                    break
                values = self._values(entry)
                if not packer.takes(values):
                    break
                packer.add(values)
                taken.append(run.entries.popleft())
                batch.append(values)
                run.size -= entry.size
            size = sum(entry.size for entry in taken)
            run.inflight = taken
        if not taken:
            return "empty"
        error: BaseException | None = None
        away = False
        try:
            extra = (
                {"deadline": time.monotonic() if deadline is None else deadline} if self._deadlines else {}
            )
            self._send(
                run_id=run_id,
                metrics=[m for values in batch for m in values[0]],
                params=[p for values in batch for p in values[1]],
                tags=[t for values in batch for t in values[2]],
                **extra,
            )
        except AWAY as e:
            away, error = True, e
        except Exception as e:
            error = e
        with self._cond:
            run.inflight = []
            if away and not run.taken:
                run.entries.extendleft(reversed(taken))
                run.size += size
                run.away += 1
                run.pause = _BACKOFF.pause(run.away)
                run.retry_at = time.monotonic() + run.pause
                logger.debug("MLflow run %s: the tracking server is away, values kept: %s", run_id, error)
                return "away"
            run.away = 0
            run.pause = run.retry_at = 0.0
            self._held -= sum(entry.held for entry in taken)
            if error is not None and not away:
                run.errors.append(error)
            for entry in taken:
                entry.done, entry.error = True, error
            self._cond.notify_all()
        return "sent"

    def _send_now(self, run_id: str, entry: Entry) -> None:
        """After :meth:`close`: store one call's values at once, in the calling thread."""
        try:
            self._send(run_id=run_id, metrics=entry.metrics, params=entry.params, tags=entry.tags)
        except Exception as e:
            entry.error = e
        entry.done = True

    def _due(self, now: float, wait: float) -> tuple[list[tuple[str, RunEntries]], float | None]:
        """The runs to send now, and how long until the next one is due (``None``: nothing queued)."""
        due: list[tuple[str, RunEntries]] = []
        soonest: float | None = None
        for run_id, run in self._runs.items():
            if not run.entries or run.sending.locked():  # a drain is sending it: it notifies when done
                continue
            at = max(run.entries[0].queued + wait, run.retry_at)
            if run.retry_at > now:  # its server is away: try again after the backoff
                soonest = at - now if soonest is None else min(soonest, at - now)
            elif self._pressed or at <= now or run.size >= MAX_ENTITIES:
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
                        self._send_chunk(run_id, run, None, None)
                    finally:
                        run.sending.release()
            if self._closed:
                return
