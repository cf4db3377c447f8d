"""What a refused request tells the user about their credentials, without ever showing them.

MLflow reads credentials from the environment for every request: ``MLFLOW_TRACKING_TOKEN``, or
``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` (in a Flyte task, typically set by a
``flyte.Secret`` with ``as_env_var=``). When a server answers 401 or 403, :func:`explain` says which
of these variables were set and what the status means, naming the variables and never their values.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["explain"]

_BASIC: Final = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
_TOKEN: Final = "MLFLOW_TRACKING_TOKEN"
_HOW: Final = "in a Flyte task, from a flyte.Secret with as_env_var=..."


def _source() -> str | None:
    """The environment variables the request's credentials came from, as MLflow chooses them."""
    if all(os.environ.get(var) for var in _BASIC):
        return " and ".join(_BASIC)
    if os.environ.get(_TOKEN):
        return _TOKEN
    return None


def explain(status: int) -> str:
    """A sentence on the credentials for an HTTP 401 or 403 answer; empty for any other status.

    Args:
        status: the HTTP status the tracking server answered.

    Returns:
        The sentence, starting with a space, or ``""``.
    """
    source = _source()
    if status == 401:
        if source is None:
            return f" No credentials were sent: set {_BASIC[0]} and {_BASIC[1]}, or {_TOKEN} ({_HOW})."
        return f" The server did not accept the credentials from {source}: check them ({_HOW})."
    if status == 403:
        who = f"the credentials from {source}" if source else "the anonymous user"
        return (
            f" The server knows {who}, but they lack the permission this request needs: ask the "
            "server's admin for it (EDIT on the experiment to create and update runs in it)."
        )
    return ""
