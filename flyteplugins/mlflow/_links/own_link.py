"""Links to a task's own run (``Mlflow(target=LinkTarget.OWN)``), rendered before the run exists.

The link cannot name the run's id, so it names what the run will be tagged with: MLflow's run list of
its experiment, filtered on ``flyte.run_name`` and ``flyte.action_name``, sorted by name (else the UI
folds nested runs) and in the machine-learning view (else MLflow 3 opens its GenAI view). A task that
will share its caller's run links to that run's page. Without a known experiment id, no link.
"""

from __future__ import annotations

import enum
import re
from typing import Final
from urllib.parse import quote

from flyteplugins.mlflow._plan.plan import planned_experiment
from flyteplugins.mlflow._plan.snapshot import Inherited
from flyteplugins.mlflow._settings.checks import (
    DEFAULT_LINK_TEMPLATE,
    DEFAULT_OWN_LINK_TEMPLATE,
    OWN_LINK_FIELDS,
    TRACE_PAGE_TEMPLATE,
    check_link_template,
)
from flyteplugins.mlflow._settings.config import MlflowConfig
from flyteplugins.mlflow._settings.enums import RunMode, to_enum
from flyteplugins.mlflow._tags import ACTION_NAME_TAG, RUN_NAME_TAG, tag_equals

__all__ = ["LinkTarget", "own_run_url", "run_filter", "run_page_url", "to_link_target", "trace_url"]

_PLACEHOLDER: Final = re.compile(r"(\{\{[^{}]*\}\})")
_TRACEPARENT: Final = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


class LinkTarget(str, enum.Enum):
    """Which run an :class:`~flyteplugins.mlflow.Mlflow` link points at.

    ``CALLER`` (the default) is the documented behaviour: the run the caller announces, which is the
    run an ``auto`` task shares and a ``nested`` task's parent; a ``new`` task gets no link. ``OWN``
    is the task's own run in every mode: the shared run for ``auto``, the task's new run otherwise.
    ``TRACE`` is the trace of the Flyte run (``tracing=True``) in MLflow's Traces view, known when the
    caller is traced; no link otherwise.
    """

    CALLER = "caller"
    """The default: the run the caller announces, as the documented table of links says."""
    OWN = "own"
    """The task's own run: its run page when it shares one, else the run list filtered to its action."""
    TRACE = "trace"
    """The Flyte run's trace in MLflow's Traces view, when the caller is traced (its span carries it)."""

    def __str__(self) -> str:
        return self.value


def to_link_target(value: LinkTarget | str) -> LinkTarget:
    """Convert a link target given as a :class:`LinkTarget` or its string value.

    Raises:
        ValueError: the string is not a link target; the message lists the valid ones.
        TypeError: the value is neither a string nor a ``LinkTarget``.
    """
    return to_enum(LinkTarget, "target", value)


def _encoded(text: str) -> str:
    """Percent-encode ``text`` for a URL, keeping Flyte's ``{{.actionName}}`` placeholders as they are.

    Remote links are rendered with placeholders that the Flyte backend fills in later.
    """
    return "".join(p if _PLACEHOLDER.fullmatch(p) else quote(p, safe="") for p in _PLACEHOLDER.split(text))


def run_filter(run_name: str, action_name: str) -> str:
    """The MLflow search filter that matches the run of one Flyte action (not encoded)."""
    return f"{tag_equals(RUN_NAME_TAG, run_name)} and {tag_equals(ACTION_NAME_TAG, action_name)}"


def run_page_url(config: MlflowConfig, host: str, experiment_id: str, run_id: str) -> str:
    """A run's page, from ``link_template`` or the default run-page template."""
    template = config.link_template or DEFAULT_LINK_TEMPLATE
    check_link_template(template)
    return template.format(host=host, experiment_id=experiment_id, run_id=run_id)


def own_run_url(
    config: MlflowConfig,
    caller: Inherited,
    mode: RunMode,
    host: str,
    run_name: str,
    action_name: str,
    experiment: tuple[str | None, str | None] = (None, None),
) -> str:
    """The URL of the run that the Flyte action ``action_name`` of ``run_name`` will log into.

    Args:
        config: the settings in the caller's context.
        caller: what the caller's run passes down.
        mode: the task's run mode.
        host: the MLflow UI's address, without a trailing slash.
        run_name: the Flyte run's name.
        action_name: the action's name (remotely a placeholder that Flyte fills in).
        experiment: the experiment id or name of the task's tracker, bound to the link.

    Returns:
        The URL, or ``""`` when the run's experiment id is not known.
    """
    if mode is RunMode.AUTO and caller.run_id:
        return run_page_url(config, host, caller.experiment_id, caller.run_id) if caller.experiment_id else ""
    if not (run_name and action_name):
        return ""
    experiment_id, experiment_name = planned_experiment(*experiment, config, mode, caller)
    if experiment_id is None and experiment_name is not None:
        experiment_id = caller.experiment_ids.get(experiment_name)
    if experiment_id is None:
        return ""
    template = config.own_link_template or DEFAULT_OWN_LINK_TEMPLATE
    check_link_template(template, "own_link_template", OWN_LINK_FIELDS)
    return template.format(
        host=host, experiment_id=experiment_id, filter=_encoded(run_filter(run_name, action_name))
    )


def trace_url(host: str, experiment_id: str, traceparent: str) -> str:
    """The Traces view of the trace that a W3C ``traceparent`` belongs to, or ``""`` when malformed.

    MLflow names a trace ``tr-`` and the 32 hex digits of its OpenTelemetry trace id.
    """
    found = _TRACEPARENT.fullmatch(traceparent)
    if found is None or not experiment_id or set(found[1]) == {"0"}:
        return ""
    return TRACE_PAGE_TEMPLATE.format(
        host=host, experiment_id=quote(experiment_id, safe=""), trace_id=f"tr-{found[1]}"
    )
