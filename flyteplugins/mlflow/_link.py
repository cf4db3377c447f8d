"""The ``Mlflow`` link: a pure function of the context Flyte gives it when a task is submitted.

Flyte renders a task's links in the *calling* task's process, at the moment the task is submitted,
from the caller's ``custom_context``. The run a task will create does not exist yet, so a link can
only point at the caller's run, which a tracked caller announces in its children's context:

===========  =======================================================================
run mode     link
===========  =======================================================================
``auto``     the caller's run (the run the task will share), named as given
``new``      nothing: the task's own run is not known yet
``nested``   the caller's run, the parent, named "MLflow (parent)" by default
===========  =======================================================================

An explicit ``link`` is shown as it is. The run mode is the one the link is bound to (a tracker
binds the links of the tasks it decorates, on its decorated copy), else the one in the context.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import flyte

from flyteplugins.mlflow._config import (
    DEFAULT_LINK_TEMPLATE,
    RunMode,
    check_link_template,
    decode,
    to_run_mode,
)
from flyteplugins.mlflow._context import Inherited

__all__ = ["DEFAULT_NAME", "PARENT_NAME", "Mlflow"]

DEFAULT_NAME: Final = "MLflow"
PARENT_NAME: Final = "MLflow (parent)"


def _optional_mode(value: RunMode | str | None) -> RunMode | None:
    return None if value is None else to_run_mode(value)


def _str(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        msg = f"Mlflow.{attribute.name} must be a str, got {type(value).__name__} {value!r}"
        raise TypeError(msg)


@attrs.frozen
class Mlflow(flyte.Link):
    """A link from a task in the Flyte UI to its MLflow run.

    Args:
        name: the label shown in the Flyte UI.
        link: an explicit URL; when given, it is shown as it is and nothing is generated.
        run_mode: the run mode of the task the link is on. Leave it unset: ``MlflowRun.link()`` and
            decorating a task set it on the decorated copy. When it is ``nested`` and ``name`` is the
            default, the link is named "MLflow (parent)". Unset, the run mode in the context is used.
        icon_uri: the icon the Flyte UI shows next to the link.

    A generated link points at the calling task's run: for ``auto`` the run the task shares, for
    ``nested`` the parent's, for ``new`` nothing. It needs a ``link_host`` in the caller's context and
    a tracked caller. Links are never changed, so one instance can be shared by tasks of any mode.

    Raises:
        TypeError: a field that is not a string.
        ValueError: a ``run_mode`` that is not a run mode.
    """

    name: str = attrs.field(default=DEFAULT_NAME, validator=_str)
    link: str = attrs.field(default="", validator=_str)
    run_mode: RunMode | None = attrs.field(default=None, converter=_optional_mode, kw_only=True)
    icon_uri: str = attrs.field(default="", validator=_str, kw_only=True)

    def bound_to(self, mode: RunMode) -> Mlflow:
        """A copy of this link for a task with run mode ``mode`` (renamed for ``nested``).

        Args:
            mode: The run mode of the task the link goes on.

        Returns:
            This link when it is already bound or ``mode`` is ``auto``; otherwise a bound copy. The
            link itself is never changed.
        """
        if self.run_mode is not None or mode is RunMode.AUTO:
            return self
        name = PARENT_NAME if mode is RunMode.NESTED and self.name == DEFAULT_NAME else self.name
        return attrs.evolve(self, name=name, run_mode=mode)

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
            run_name: The Flyte run (not used).
            project: The Flyte project (not used).
            domain: The Flyte domain (not used).
            context: The calling task's ``custom_context``, where a tracked caller announces its run.
            parent_action_name: The calling action (not used).
            action_name: The submitted action (not used).
            pod_name: The submitted action's pod (not used).
            **kwargs: Anything else Flyte passes (not used).

        Returns:
            The explicit ``link`` when set; else the generated URL of the caller's run; else ``""``
            (no link shown), also for a malformed context.
        """
        if self.link:
            return self.link
        try:
            config = decode(context)
            caller = Inherited.from_context(context)
        except ValueError:
            return ""
        mode = self.run_mode or (config.run_mode if config else RunMode.AUTO)
        host = config.link_host if config else None
        if mode is RunMode.NEW or not (host and caller.run_id and caller.experiment_id):
            return ""
        template = (config.link_template if config else None) or DEFAULT_LINK_TEMPLATE
        check_link_template(template)
        return template.format(
            host=host.rstrip("/"), experiment_id=caller.experiment_id, run_id=caller.run_id
        )
