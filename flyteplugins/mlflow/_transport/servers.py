"""What this process knows of the tracking servers it talks to: which answered, and how to name them.

A server that answered this process, or where a calling task created its run, is waited for through
an outage; one never reached fails fast. Messages name a server by ``host:port`` only, never a path,
a query or credentials.
"""

from __future__ import annotations

import time
from typing import Final
from urllib.parse import urlsplit

from flyteplugins.mlflow._errors import MlflowTrackingError

__all__ = ["NEWEST", "describe", "heard", "last_heard", "live_experiment", "order", "reached", "vouch"]

_HEARD: dict[str, float] = {}  # tracking URI -> when it last answered one of our requests (monotonic)
_VOUCHED: set[str] = set()  # tracking URIs where a caller of this process's tasks created their run
NEWEST: Final = "attributes.start_time DESC"


def reached(uri: str) -> bool:
    """Whether ``uri`` is a server this workflow has reached: it answered this process before, or a
    caller created its run there (:func:`vouch`). Such a server is waited for through an outage."""
    return uri in _HEARD or uri in _VOUCHED


def vouch(uri: str) -> None:
    """Record that a caller created a run at ``uri``, so this process waits for it as for one it reached."""
    _VOUCHED.add(uri)


def heard(uri: str) -> None:
    """Record that ``uri`` answered one of this process's requests just now."""
    _HEARD[uri] = time.monotonic()


def last_heard(uri: str, default: float) -> float:
    """When ``uri`` last answered this process (``time.monotonic()``), else ``default``."""
    return _HEARD.get(uri, default)


def describe(uri: str) -> str:
    """Name a tracking URI without anything secret: ``host:port`` for servers, the scheme otherwise."""
    try:
        parts = urlsplit(uri)
        if parts.hostname:
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
            return f"{parts.hostname}:{port}" if port else parts.hostname
    except ValueError:
        pass
    scheme = uri.split(":", 1)[0] if ":" in uri else "file"
    return f"a local {scheme} store" if scheme in ("file", "sqlite") else f"a {scheme} store"


def order(order_by: str) -> list[str]:
    return [order_by] if order_by == NEWEST else [order_by, NEWEST]


def live_experiment(name: str, experiment_id: str, stage: str) -> str:
    if stage == "deleted":
        msg = (
            f"experiment {name!r} (id {experiment_id}) is deleted; restore it in the MLflow UI "
            "or choose another experiment_name"
        )
        raise MlflowTrackingError(msg)
    return experiment_id
