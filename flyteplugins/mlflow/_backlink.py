"""A way back from an MLflow run to the Flyte action that made it.

When the Flyte console's address is known, a run the plugin creates carries the address of its
Flyte action twice: in the ``flyte.url`` tag, and as a Markdown link in the run's description
(``mlflow.note.content``), which the MLflow UI renders, so the link can be clicked there. A
description the user gave is kept, and the link goes after it.

The address is known from the ``flyte_console_url`` setting, or in a remote task from Flyte's own
client (read by :mod:`flyteplugins.mlflow._context`). Local runs are not in the console, have no
project or domain, and get no link. Both tags ride on the request that creates the run: the way back
costs no request of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import quote, urlsplit

__all__ = ["FLYTE_URL_TAG", "NOTE_TAG", "action_url", "check_console_url", "tags_for"]

FLYTE_URL_TAG: Final = "flyte.url"
NOTE_TAG: Final = "mlflow.note.content"


def check_console_url(setting: str, value: str) -> None:
    """Check that ``value`` is the ``http(s)`` address of a Flyte console, such as ``https://flyte.example.com``.

    Raises:
        ValueError: not an ``http`` or ``https`` URL with a host, or it has a query or fragment.
    """
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not host or parts.query or parts.fragment:
        msg = (
            f"{setting} must be the http(s) address of the Flyte console, such as "
            f"'https://flyte.example.com', got {value!r}"
        )
        raise ValueError(msg)


def action_url(console: str, action: Mapping[str, str]) -> str | None:
    """The console address of a Flyte action, or ``None`` when the action is not fully known.

    Args:
        console: the console's address (``flyte_console_url``); a trailing slash is ignored.
        action: the run's Flyte tags (``flyte.project``, ``flyte.domain``, ``flyte.run_name``,
            ``flyte.action_name``); a local run has no project or domain.

    Returns:
        The address in the layout of Flyte's own console links, or ``None``.
    """
    parts = [action.get(f"flyte.{key}") for key in ("project", "domain", "run_name", "action_name")]
    project, domain, run_name, action_name = parts
    if not (project and domain and run_name and action_name):
        return None
    base = console.rstrip("/")
    return (
        f"{base}/v2/domain/{quote(domain, safe='')}/project/{quote(project, safe='')}"
        f"/runs/{quote(run_name, safe='')}?i={quote(action_name, safe='')}"
    )


def _markdown_text(text: str) -> str:
    return "".join("\\" + c if c in "\\`*_[]()<>#!|~" else c for c in text)


def tags_for(url: str, action: Mapping[str, str], description: str | None) -> dict[str, str]:
    """The tags that lead from a run back to its Flyte action at ``url``.

    Args:
        url: the action's address in the Flyte console.
        action: the run's Flyte tags, for the link's text.
        description: the description the user gave, kept before the link.

    Returns:
        ``flyte.url`` and ``mlflow.note.content``.
    """
    label = " / ".join(
        _markdown_text(v) for v in (action.get("flyte.run_name"), action.get("flyte.action_name")) if v
    )
    link = f"Flyte: [{label or 'the Flyte action'}]({url})"
    note = f"{description}\n\n{link}" if description else link
    return {FLYTE_URL_TAG: url, NOTE_TAG: note}
