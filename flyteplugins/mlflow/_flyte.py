"""The one place that reads Flyte's task context (``flyte.ctx()``) and scopes changes to it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import attrs
import flyte

__all__ = ["RunningTask", "children_scope", "current_task", "custom_context", "running_task"]


@attrs.frozen
class RunningTask:
    """What the plugin reads of the Flyte task running here, as plain values."""

    action_name: str | None
    run_name: str | None
    project: str | None
    domain: str | None
    attempt: int
    context: Mapping[str, str]
    remote: bool
    raw_data: str | None  # the task's raw-data prefix (local or in Flyte's store)

    @property
    def action_id(self) -> str:
        """``project/domain/run_name/action_name``: what names this action across attempts."""
        return "/".join(part or "" for part in (self.project, self.domain, self.run_name, self.action_name))

    def console_url(self) -> str | None:
        """The console address of this action, from Flyte's own client; ``None`` without a client.

        A pod that can start tasks has a client (``flyte.init_in_cluster``); its console is where the
        client's endpoint serves it. The ``flyte_console_url`` setting wins over this.
        """
        if not (self.remote and self.project and self.domain and self.run_name and self.action_name):
            return None
        try:  # Flyte keeps its client in a private module: a Flyte that moved it gives no address
            from flyte._initialize import _get_init_config

            config = _get_init_config()
            client = config.client if config is not None else None
            if client is None:
                return None
            url: str = client.console.action_url(
                project=self.project, domain=self.domain, run_name=self.run_name, action_name=self.action_name
            )
        except (ImportError, AttributeError):
            return None
        return url


def running_task() -> RunningTask | None:
    """The Flyte task running here, or ``None`` outside one."""
    tctx = flyte.ctx()
    if not tctx:
        return None
    action = tctx.task_action or tctx.action
    return RunningTask(
        action_name=action.name,
        run_name=action.run_name,
        project=action.project,
        domain=action.domain,
        attempt=tctx.attempt_number,
        context=tctx.custom_context or {},
        remote=tctx.mode == "remote",
        raw_data=str(tctx.raw_data_path.path) if tctx.raw_data_path else None,
    )


def current_task() -> str | None:
    """The name of the Flyte action whose task body is running here, or ``None`` outside a task.

    A ``@flyte.trace`` function runs under a pseudo-action of its own; it counts as its task's.
    """
    tctx = flyte.ctx()
    if not tctx:
        return None
    return (tctx.task_action or tctx.action).name


def custom_context() -> Mapping[str, str] | None:
    """The running task's ``custom_context``, or ``None`` outside a task."""
    tctx = flyte.ctx()
    if not tctx:
        return None
    return tctx.custom_context or {}


@contextlib.contextmanager
def children_scope(entries: Mapping[str, str]) -> Iterator[None]:
    """Add ``entries`` to the context of every task called inside the block (no-op outside a task)."""
    if not entries or not flyte.ctx():
        yield
        return
    with flyte.custom_context(**entries):
        yield
