"""``MlflowRun``: the frozen tracker that decorates tasks and functions."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import attrs
import flyte
from typing_extensions import ParamSpec

from flyteplugins.mlflow._links.link import DEFAULT_NAME, Mlflow
from flyteplugins.mlflow._links.own_link import LinkTarget
from flyteplugins.mlflow._runs import sigterm
from flyteplugins.mlflow._settings.config import MlflowConfig
from flyteplugins.mlflow._settings.settings import FIELDS, MlflowTrackingSettings
from flyteplugins.mlflow._tracing import observer

if TYPE_CHECKING:
    from flyte.extend import TaskTemplate

__all__ = ["MlflowRun"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T", bound="TaskTemplate[Any, Any, Any]")


def _rank(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"rank must be an int or None, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if value < 0:
        msg = f"rank must be 0 or more, got {value!r}"
        raise ValueError(msg)


@attrs.frozen(kw_only=True, slots=False)
class MlflowRun(MlflowTrackingSettings):
    """An MLflow tracker: create it once, then decorate any number of tasks and functions with it.

    ``@tracker`` goes above ``@env.task`` and returns a decorated copy of the task; the original is
    not changed. It also wraps plain sync and async functions and methods. Each call starts, shares
    or nests an MLflow run as its settings say, makes it the active run of that call only, and ends a
    run it owns with ``FINISHED``, ``FAILED`` or ``KILLED``.

    It takes every setting of [`MlflowConfig`][flyteplugins.mlflow.MlflowConfig] (described there),
    plus ``rank``. A tracker is immutable (assigning to a field raises
    ``attrs.exceptions.FrozenInstanceError``), hashable, compares by value and works with
    ``attrs.evolve``. It keeps no state about what it decorates.

    Args:
        rank: This process's rank in distributed training; only rank 0 logs. ``None`` reads it from
            the environment: the first of ``RANK``, ``SLURM_PROCID``, ``OMPI_COMM_WORLD_RANK`` and
            ``PMI_RANK`` that is set, else 0. A variable that is not a whole number is a
            ``ValueError`` naming it.

    Raises:
        ValueError: conflicting or invalid settings.
        TypeError: a setting of the wrong type.
    """

    rank: int | None = attrs.field(default=None, validator=_rank)

    @overload
    def __call__(self, target: T) -> T: ...

    @overload
    def __call__(self, target: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, target: Any) -> Any:
        """Decorate a Flyte task (returning a decorated copy) or wrap a function.

        Args:
            target: A function task made with ``@env.task``, or a sync or async function or method.

        Returns:
            For a task, a copy of it of the same type, whose function is tracked and whose ``Mlflow``
            links are bound to this tracker's run mode; the task itself is not changed. For a
            function, a wrapper with the same signature (an async function stays a coroutine
            function).

        Raises:
            TypeError: the target is neither a function task nor a callable.
        """
        # SIGTERM marks open runs KILLED. Python takes signal handlers on the main thread only, and a
        # sync task body runs in a worker thread: decorating, usually at import on the main thread,
        # is the one moment that is sure to be there (see docs/design.md).
        sigterm.install(self.rank)
        if isinstance(target, flyte.TaskTemplate):  # flyte.extend costs more to import than all else
            return self._decorate_task(target)
        if callable(target):
            return self._wrap(target)
        msg = f"MlflowRun decorates Flyte tasks and functions, got {type(target).__name__} {target!r}"
        raise TypeError(msg)

    def _decorate_task(self, task: T) -> T:
        func = getattr(task, "func", None)
        if not callable(func):
            msg = (
                "MlflowRun can only decorate function tasks (made with @env.task), got "
                f"{type(task).__name__} {task.name!r}; put the tracker above @env.task"
            )
            raise TypeError(msg)
        if self.tracing:  # the observer opens the task's span before this tracker's call runs
            observer.trace_task(task.name, self)
        links = tuple(self._bind(link) if isinstance(link, Mlflow) else link for link in task.links)
        changes: dict[str, Any] = {"func": self._wrap(func, task_body=True), "links": links}
        return dataclasses.replace(task, **changes)

    def _wrap(self, func: Callable[P, R], *, task_body: bool = False) -> Callable[P, R]:
        if inspect.iscoroutinefunction(func):
            async_func = cast(Callable[P, Awaitable[Any]], func)

            @functools.wraps(func)
            async def tracked_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                from flyteplugins.mlflow._engine.calls import call_async  # the engine loads with a call

                return await call_async(self, self.rank, task_body, async_func, *args, **kwargs)

            return cast(Callable[P, R], tracked_async)

        @functools.wraps(func)
        def tracked(*args: P.args, **kwargs: P.kwargs) -> R:
            from flyteplugins.mlflow._engine.calls import call_sync  # the engine loads with a call

            return call_sync(self, self.rank, task_body, func, *args, **kwargs)

        return tracked

    def config(self) -> MlflowConfig:
        """This tracker's settings, for ``with_runcontext(custom_context=...)`` or a ``with`` block.

        Returns:
            An ``MlflowConfig`` with every setting of this tracker (``rank`` is not a setting).
        """
        return MlflowConfig(**{f.name: getattr(self, f.name) for f in FIELDS})

    def _bind(self, link: Mlflow) -> Mlflow:
        return link.bound_to(self.run_mode, self.experiment_id, self.experiment_name)

    def link(self, name: str = DEFAULT_NAME, *, target: LinkTarget | str = LinkTarget.CALLER) -> Mlflow:
        """A link for ``@env.task(links=(tracker.link(),))`` that already knows this tracker's run mode.

        Args:
            name: The label in the Flyte UI. For a ``nested`` tracker and the caller's run, the
                default becomes "MLflow (parent)", since the link points at the parent's run.
            target: :attr:`LinkTarget.CALLER` (the default) links to the caller's run as the
                documented table says; :attr:`LinkTarget.OWN` to the task's own run in every mode.

        Returns:
            An ``Mlflow`` link bound to this tracker's run mode (and, for ``OWN``, its experiment).

        Raises:
            ValueError: ``target`` is not a link target (the message lists them).
        """
        return self._bind(Mlflow(name=name, target=target))

    def for_rank(self, rank: int) -> MlflowRun:
        """A copy of this tracker bound to process rank ``rank`` (only rank 0 logs).

        Args:
            rank: The process's rank, 0 or more.

        Returns:
            A new tracker; this one is not changed.

        Raises:
            TypeError: ``rank`` is not an int.
            ValueError: ``rank`` is negative.
        """
        return attrs.evolve(self, rank=rank)
