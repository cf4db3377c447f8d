"""The way back from a run to its Flyte action: a tag and a link in the run's description.

Both ride on the request that creates the run, so the way back costs no request of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from flyteplugins.mlflow._tags import ACTION_NAME_TAG, FLYTE_URL_TAG, NOTE_TAG, RUN_NAME_TAG

__all__ = ["action_url", "tags_for"]


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
        _markdown_text(v) for v in (action.get(RUN_NAME_TAG), action.get(ACTION_NAME_TAG)) if v
    )
    link = f"Flyte: [{label or 'the Flyte action'}]({url})"
    note = f"{description}\n\n{link}" if description else link
    return {FLYTE_URL_TAG: url, NOTE_TAG: note}
