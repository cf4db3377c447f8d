"""The plugin's exceptions: every tracking failure it raises is an ``MlflowTrackingError``."""

from __future__ import annotations

__all__ = ["MlflowTrackingError", "TrackingRequestError", "TrackingServerUnreachable"]


class MlflowTrackingError(Exception):
    """The tracking server could not do what the plugin asked of it.

    Messages name the server by host and port only: never a path, a query or credentials.
    """


class TrackingServerUnreachable(MlflowTrackingError):
    """No connection could be made to the tracking server, after the configured retries."""


class TrackingRequestError(MlflowTrackingError):
    """The tracking server answered a request with an error, or did not answer in time."""
