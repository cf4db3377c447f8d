"""The queue's records: one logging call's values waiting to be sent, and one run's calls in order."""

from __future__ import annotations

import threading
import time
from collections import deque

from mlflow.entities import Metric, Param, RunTag

__all__ = ["Entry", "RunEntries"]


class Entry:
    """One ``log_batch_async`` call: its values, when it was queued, and whether it is stored.

    It is also what MLflow's ``RunOperations`` waits on (``result()``), in place of a
    ``concurrent.futures.Future``, which would cost a lock and a condition per call.
    """

    __slots__ = (
        "cond",
        "done",
        "error",
        "held",
        "metrics",
        "params",
        "queued",
        "seq",
        "size",
        "spilled",
        "tags",
    )

    def __init__(
        self, cond: threading.Condition, metrics: list[Metric], params: list[Param], tags: list[RunTag]
    ) -> None:
        self.cond = cond
        self.seq = 0
        self.metrics = metrics
        self.params = params
        self.tags = tags
        self.size = len(metrics) + len(params) + len(tags)
        self.held = self.size  # of them, in memory (0 once spilled to disk)
        self.spilled: tuple[int, int] | None = None  # (offset, length) in the queue's spool file
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


class RunEntries:
    """One run's queued calls, the lock that keeps its sends in order, the errors not yet reported, and
    while its server is away, when to try again."""

    __slots__ = ("away", "entries", "errors", "inflight", "pause", "retry_at", "sending", "size", "taken")

    def __init__(self) -> None:
        self.entries: deque[Entry] = deque()
        self.size = 0  # the values in ``entries``
        self.sending = threading.Lock()
        self.errors: list[BaseException] = []
        self.inflight: list[Entry] = []  # the batch being sent right now
        self.away = 0  # sends in a row the server did not take
        self.pause = 0.0  # the backoff while the server is away (0: it is not)
        self.retry_at = 0.0  # monotonic time before which the sending thread leaves the run alone
        self.taken = False  # handed over by take(): what is in flight is no longer counted as held
