"""How long the plugin waits for a tracking server, and how often it asks again: one policy for all.

Requests, the queue's sends and a rank's search for rank 0's run all back off by
:meth:`RequestPolicy.pause`, and wait through an outage of a server they reached up to ``outage``.
"""

from __future__ import annotations

from typing import Final

import attrs

__all__ = ["DEFAULT_OUTAGE_TIMEOUT", "DEFAULT_POLICY", "FIRST_CONTACT_BUDGET", "RequestPolicy"]

DEFAULT_OUTAGE_TIMEOUT: Final = 300.0
"""How long the plugin waits for a server it has reached before, when it goes away (``outage_timeout``).

MLflow's own client, with its defaults (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=7``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=2``, ``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER=1``), retries a refused
connection or a 502/503/504 7 times through urllib3's ``Retry``: it sleeps 0, 4, 8, 16, 32, 64 and
120 s (``2 * 2**(n-1)``, capped at urllib3's ``DEFAULT_BACKOFF_MAX`` of 120 s, plus up to 1 s of
jitter on each uncapped sleep but the first): 244 to 249 s before it gives up. 300 s is at least that.
"""

FIRST_CONTACT_BUDGET: Final = 12.0
"""The longest one request to a server that has never answered this process may take, all attempts
included: such a server fails fast, whether it refuses connections or takes them and hangs."""


@attrs.frozen
class RequestPolicy:
    """Limits for one of the plugin's requests: timeouts per attempt, retries, the first backoff, and
    how long a server reached before is waited for through an outage.

    ``timeout`` bounds making the connection, and also waiting for the answer unless
    ``read_timeout`` is set. The default policy gives the answer longer (:data:`DEFAULT_POLICY`).
    ``outage`` (``outage_timeout``) applies only to a server that :func:`reached` says was reached:
    its connection errors, 502/503/504 (and, for requests that are safe to repeat, timeouts and
    5xx) are retried with backoff capped at 4 s until that many seconds have passed.
    """

    timeout: float = 4.0
    retries: int = 2
    backoff: float = 0.5
    read_timeout: float | None = None
    outage: float = DEFAULT_OUTAGE_TIMEOUT
    max_backoff: float = 4.0

    @property
    def answer_timeout(self) -> float:
        """How long an attempt waits for the answer once its request is sent."""
        return self.timeout if self.read_timeout is None else self.read_timeout

    def pause(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (1, 2, ...): ``backoff``, doubling to ``max_backoff``."""
        return min(self.backoff * 2.0 ** (attempt - 1), self.max_backoff)

    def for_finalize(self) -> RequestPolicy:
        """Finalizing a finished run gets more retries: losing its status is worse than waiting."""
        return attrs.evolve(self, retries=max(self.retries, 5))

    def budget(self) -> float:
        """The longest one call can take on its own: every attempt timing out, with the backoffs between."""
        backoffs = sum(self.pause(k + 1) for k in range(self.retries))
        return (self.retries + 1) * max(self.timeout, self.answer_timeout) + backoffs

    def describe(self) -> str:
        """The settings as error messages quote them."""
        if self.answer_timeout == self.timeout:
            return f"request_timeout={self.timeout:g}s, request_retries={self.retries}"
        return (
            f"request_timeout unset: {self.timeout:g}s to connect, {self.answer_timeout:g}s to answer; "
            f"request_retries={self.retries}"
        )


# 4 s to connect and 30 s for the answer: a server that cannot be reached shows it within seconds,
# while one that authenticates every request (MLflow's basic-auth app checks a password hash each
# time, about 0.3 s of CPU) queues the requests of parallel trials and answered the plugin's in up
# to 6 s in tests/test_auth.py with sixteen trials; MLflow's own client waits 120 s.
DEFAULT_POLICY: Final = RequestPolicy(read_timeout=30.0)
