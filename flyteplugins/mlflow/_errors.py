"""The plugin's exceptions: every tracking failure it raises is an ``MlflowTrackingError``."""

from __future__ import annotations

__all__ = [
    "AWAY",
    "MlflowTrackingError",
    "TrackingRequestError",
    "TrackingServerUnanswered",
    "TrackingServerUnreachable",
]


class MlflowTrackingError(Exception):
    """The tracking server could not do what the plugin asked of it.

    Messages name the server by host and port only: never a path, a query or credentials.
    """


class TrackingServerUnreachable(MlflowTrackingError):
    """No connection could be made to the tracking server, after the configured retries."""


class TrackingRequestError(MlflowTrackingError):
    """The tracking server answered a request with an error, or did not answer in time."""


class TrackingServerUnanswered(TrackingRequestError):
    """The tracking server took a request but gave no usable answer in time, after the retries.

    A timeout, a connection dropped mid-request or an HTTP 5xx: unlike a refusal, sending the same
    request again later may well succeed, so queued values that meet it are kept and sent again.
    """


AWAY: tuple[type[MlflowTrackingError], ...] = (TrackingServerUnreachable, TrackingServerUnanswered)
"""The errors that mean "the server is away", not "the server refused".

Queued values that meet one are kept and sent again; past ``outage_timeout`` they go to a journal."""
