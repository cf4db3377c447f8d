"""The ``Mlflow`` link: a pure function of the context Flyte gives it when a task is submitted.

Flyte renders a task's links in the calling task's process, when it submits the task, from the
caller's ``custom_context``; the task's own run does not exist yet. So by default a link points at
the caller's run (``auto``: the run the task will share; ``nested``: its parent; ``new``: nothing).
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import flyte

from flyteplugins.mlflow._links.own_link import (
    LinkTarget,
    own_run_url,
    run_page_url,
    to_link_target,
    trace_url,
)
from flyteplugins.mlflow._plan.snapshot import Inherited
from flyteplugins.mlflow._settings.config import decode
from flyteplugins.mlflow._settings.enums import RunMode, to_run_mode
from flyteplugins.mlflow._tags import TRACE_EXPERIMENT_KEY, TRACEPARENT_KEY

__all__ = ["DEFAULT_NAME", "PARENT_NAME", "LinkTarget", "Mlflow"]

DEFAULT_NAME: Final = "MLflow"
PARENT_NAME: Final = "MLflow (parent)"


def _optional_mode(value: RunMode | str | None) -> RunMode | None:
    return None if value is None else to_run_mode(value)


def _str(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        msg = f"Mlflow.{attribute.name} must be a str, got {type(value).__name__} {value!r}"
        raise TypeError(msg)


def _optional_str(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _str(instance, attribute, value)


@attrs.frozen
class Mlflow(flyte.Link):
    """A link from a task in the Flyte UI to its MLflow run.

    Args:
        name: the label shown in the Flyte UI.
        link: an explicit URL; when given, it is shown as it is and nothing is generated.
        target: which run the link shows: :attr:`LinkTarget.CALLER` (the default) the caller's run,
            as in the table of the user guide; :attr:`LinkTarget.OWN` the task's own run in every
            run mode; :attr:`LinkTarget.TRACE` the Flyte run's trace in MLflow's Traces view, when
            the caller is traced (``tracing=True``). Also given as ``"caller"``, ``"own"`` or
            ``"trace"``.
        run_mode: the run mode of the task the link is on. Leave it unset: ``MlflowRun.link()`` and
            decorating a task set it on the decorated copy. When it is ``nested``, ``name`` is the
            default and the target is the caller, the link is named "MLflow (parent)". Unset, the
            run mode in the context is used.
        icon_uri: the icon the Flyte UI shows next to the link.
        experiment_id: for ``OWN`` links, the experiment of the tracker of the task. Leave it unset:
            binding to a tracker sets it, as ``experiment_name``.
        experiment_name: see ``experiment_id``.

    A ``CALLER`` link (the default) points at the calling task's run: for ``auto`` the run the task
    shares, for ``nested`` the parent's, for ``new`` nothing. An ``OWN`` link points at the task's own
    run in every mode. A ``TRACE`` link points at the trace the caller's span belongs to, so the
    outermost traced task (whose caller is not traced) gets none. Each needs a ``link_host`` in the
    caller's context. Links are never changed, so one instance can be shared by tasks of any mode.

    Raises:
        ValueError: ``target`` or ``run_mode`` is not one of the valid values (the message lists them).
        TypeError: a field of the wrong type.
    """

    name: str = attrs.field(default=DEFAULT_NAME, validator=_str)
    link: str = attrs.field(default="", validator=_str)
    target: LinkTarget = attrs.field(default=LinkTarget.CALLER, converter=to_link_target, kw_only=True)
    run_mode: RunMode | None = attrs.field(default=None, converter=_optional_mode, kw_only=True)
    icon_uri: str = attrs.field(default="", validator=_str, kw_only=True)
    experiment_id: str | None = attrs.field(default=None, validator=_optional_str, kw_only=True)
    experiment_name: str | None = attrs.field(default=None, validator=_optional_str, kw_only=True)

    def bound_to(
        self, mode: RunMode, experiment_id: str | None = None, experiment_name: str | None = None
    ) -> Mlflow:
        """A copy of this link for a task with run mode ``mode`` (renamed for ``nested``).

        Args:
            mode: the task's run mode.
            experiment_id: the experiment of the task's tracker (kept by ``OWN`` links only).
            experiment_name: the same, by name.

        Returns:
            The bound copy, or this link when there is nothing to bind or it is bound already.
        """
        if self.run_mode is not None or self.experiment_id is not None or self.experiment_name is not None:
            return self
        changes: dict[str, Any] = {}
        if mode is not RunMode.AUTO:
            changes["run_mode"] = mode
            if mode is RunMode.NESTED and self.name == DEFAULT_NAME and self.target is LinkTarget.CALLER:
                changes["name"] = PARENT_NAME
        if self.target is LinkTarget.OWN and (experiment_id or experiment_name):
            changes.update(experiment_id=experiment_id, experiment_name=experiment_name)
        return attrs.evolve(self, **changes) if changes else self

    def get_link(
        self,
        run_name: str,
        project: str,
        domain: str,
        context: dict[str, str],
        parent_action_name: str,
        action_name: str,
        pod_name: str,
        **kwargs: str,
    ) -> str:
        """Render the URL; Flyte calls this when the calling task submits the task the link is on.

        Args:
            run_name: The Flyte run; ``OWN`` links filter the run list on it.
            project: The Flyte project (not used).
            domain: The Flyte domain (not used).
            context: The calling task's ``custom_context``, where a tracked caller announces its run.
            parent_action_name: The calling action (not used).
            action_name: The submitted action; ``OWN`` links filter the run list on it.
            pod_name: The submitted action's pod (not used).
            **kwargs: Anything else Flyte passes (not used).

        Returns:
            The explicit ``link`` when set; else the generated URL (the caller's run, for ``OWN``
            the task's own, for ``TRACE`` the run's trace); else ``""`` (no link shown), also for
            a malformed context.
        """
        if self.link:
            return self.link
        try:
            config = decode(context)
            caller = Inherited.from_context(context)
        except ValueError:
            return ""
        if config is None or not config.link_host:
            return ""
        mode = self.run_mode or config.run_mode
        host = config.link_host.rstrip("/")
        if self.target is LinkTarget.TRACE:
            return trace_url(host, context.get(TRACE_EXPERIMENT_KEY, ""), context.get(TRACEPARENT_KEY, ""))
        if self.target is LinkTarget.OWN:
            experiment = (self.experiment_id, self.experiment_name)
            return own_run_url(config, caller, mode, host, run_name, action_name, experiment)
        if mode is RunMode.NEW or not (caller.run_id and caller.experiment_id):
            return ""
        return run_page_url(config, host, caller.experiment_id, caller.run_id)
