"""``MlflowConfig``: settings for a workflow or a ``with`` block, read from and written to Flyte's context."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, NoReturn

import attrs

from flyteplugins.mlflow import _flyte
from flyteplugins.mlflow._settings.checks import without_credentials
from flyteplugins.mlflow._settings.codec import decode_fields, encode
from flyteplugins.mlflow._settings.settings import MlflowTrackingSettings
from flyteplugins.mlflow._tags import CONTEXT_PREFIX

__all__ = ["MlflowConfig", "current", "decode", "scoped_entries"]


@attrs.frozen(kw_only=True, slots=False)
class MlflowConfig(MlflowTrackingSettings, dict[str, str]):
    """MLflow settings for a workflow or a scope within a task.

    A config is also a read-only ``dict[str, str]`` of the settings it sets, in the ``custom_context``
    encoding under the keys ``mlflow_<setting>``, so it can be given to
    ``flyte.with_runcontext(custom_context=...)`` as it is (Flyte types that parameter as a ``dict``;
    every mutating ``dict`` method raises ``TypeError``). A config is truthy even when it sets
    nothing (``len(mlflow_config()) == 0``). It is
    also a context manager: inside a task, ``with mlflow_config(run_mode="new"): await child()``
    applies its settings to the tasks called in the block, and the previous settings come back when
    the block exits. A scoped config's tags are added to the tags already in the context. Outside a
    task the block changes nothing.

    The same settings, in the same order, are taken by [`MlflowRun`][flyteplugins.mlflow.MlflowRun],
    [`mlflow_run`][flyteplugins.mlflow.mlflow_run] and [`mlflow_config`][flyteplugins.mlflow.mlflow_config].
    All are keyword-only. A setting left at its default means "no preference": the next source of
    settings decides (the tracker, then the context, then ``MLFLOW_TRACKING_URI``, then MLflow).
    A config is immutable, hashable, compares by value and works with ``attrs.evolve``.

    Args:
        run_mode: How the task's run relates to its caller's: ``"auto"`` shares the caller's run when
            the caller is tracked, else starts one; ``"new"`` starts a top-level run; ``"nested"``
            starts a run under the caller's. A ``RunMode`` or its string. On a tracker, ``"auto"``
            defers to a run mode set in the context.
        tracking_uri: The tracking server or store. Unset: ``MLFLOW_TRACKING_URI``, then MLflow's
            default. It must not contain a user name or password.
        experiment_name: The experiment for new runs, created if it does not exist. Not together
            with ``experiment_id``.
        experiment_id: The experiment for new runs. Not together with ``experiment_name``.
        run_name: The name of the run the task creates (unset: the task's function name). Not together with
            ``run_id``.
        run_id: Reopen this run instead of creating one; it gets the task's final status. Not
            together with ``run_name``.
        tags: Tags for the run (non-empty ``str`` keys, ``str`` values), added over the Flyte tags and
            the context's tags.
        autolog: Switch MLflow autologging on while the task runs; it is switched off afterwards.
        framework: Use ``mlflow.<framework>.autolog()`` (``"sklearn"``, ``"pytorch"``, ...) instead of
            ``mlflow.autolog()``. It must name an MLflow module.
        log_models: Passed to the autolog call when set; unset keeps autolog's own default.
        log_datasets: Passed to the autolog call when set; unset keeps autolog's own default.
        autolog_kwargs: More keyword arguments for the autolog call, as JSON values (strings, numbers,
            booleans, ``None``, lists, string-keyed mappings).
        link_host: The MLflow UI's base URL, for the links the ``Mlflow`` link generates (unset: no
            generated links). A trailing slash is ignored. It must not contain credentials.
        link_template: The link URL, with only the placeholders ``{host}``, ``{experiment_id}`` and
            ``{run_id}``. Unset: ``{host}/#/experiments/{experiment_id}/runs/{run_id}``.
        own_link_template: The URL of an ``OWN`` link to a task's ``new`` or ``nested`` run, with only
            the placeholders ``{host}``, ``{experiment_id}`` and ``{filter}`` (the percent-encoded
            search for the task's run). Unset: MLflow's run list filtered to the task's action.
        flyte_console_url: The Flyte console's address, for the ``flyte.url`` tag and the link back to
            Flyte in each run's description. Unset: in a remote task, the address Flyte's own client
            knows; locally, no link.
        run_kwargs: The extra ``mlflow.start_run`` arguments: ``description`` (a ``str``, stored as the
            run's note) and ``log_system_metrics`` (a ``bool``). ``mlflow_run`` and ``mlflow_config``
            take them as keywords of their own.
        on_tracking_error: What a task does when the tracking server fails it: ``"raise"`` or
            ``"warn"`` (an ``OnTrackingError`` or its string).
        async_logging: Queue the task's ``mlflow.log_*`` calls (MLflow's asynchronous logging, through
            the plugin's per-run queue); everything queued is stored before the run's final status is
            set, and a call the server refused fails the task at its end.
        on_retry: What a retried attempt, or a restart of elastic workers, does with the runs its
            earlier attempts left: ``"new"`` or ``"resume"`` (an ``OnRetry`` or its string).
        request_timeout: Seconds (more than 0) for each attempt of the plugin's own requests to an
            HTTP(S) server, both to connect and to wait for the answer. Unset: 4 s to connect and 30 s
            for the answer.
        request_retries: Retries (0 to 10) of the plugin's own requests. Unset: 2. Setting a run's
            final status is retried at least 5 times.
        outage_timeout: Seconds (0 or more) the plugin waits for a tracking server this workflow has
            reached when it goes away (refused connections, 502/503/504): for its own requests and
            for the queued values at a task's end. Past it, what could not be sent goes to a journal
            (``python -m flyteplugins.mlflow replay``). Unset: 300 s, at least as long as MLflow's
            own client waits with its default settings.
        report: Write an "MLflow" tab in the task's Flyte report when its run ends, on success and on
            failure.
        report_metric: The metric that ranks nested children in that tab, best first; an MLflow
            metric name. Unset: newest first.
        report_goal: Which way is best for ``report_metric``: ``"minimize"`` (when unset) or
            ``"maximize"`` (a ``ReportGoal`` or its string).
        rank_scope: In distributed training, ``"global"`` (the default): rank 0 alone has a run;
            ``"worker"``: every other rank also gets a run of its own, nested under rank 0's and
            named ``<task>-rank-<rank>`` (a ``RankScope`` or its string).
        log_inputs: Record the inputs a task is called with as its run's params and datasets, when
            the task owns its run (see "Inputs as params and datasets" in the user guide).
        tracing: Make the task, and every task and ``flyte.trace`` step below it in the same Flyte
            run, spans of one MLflow trace (see the Tracing page). Off by default.

    Raises:
        ValueError: conflicting or invalid settings (the message names the field and the value).
        TypeError: a setting of the wrong type.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        dict.update(self, encode(self))

    def _immutable(self, *args: object, **kwargs: object) -> NoReturn:
        msg = "MlflowConfig is immutable: build a new one with mlflow_config(...) or attrs.evolve"
        raise TypeError(msg)

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _immutable

    def __bool__(self) -> bool:
        return True

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (attrs.asdict(self, recurse=False),))

    def __enter__(self) -> MlflowConfig:
        stack = contextlib.ExitStack()
        stack.enter_context(_flyte.children_scope(scoped_entries(self, current())))
        _OPEN_SCOPES.set((*_OPEN_SCOPES.get(), stack))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scopes = _OPEN_SCOPES.get()
        if not scopes:
            return
        _OPEN_SCOPES.set(scopes[:-1])
        scopes[-1].close()


def _rebuild(fields: dict[str, Any]) -> MlflowConfig:
    return MlflowConfig(**fields)


# The ``with config:`` blocks open in this context, innermost last.
_OPEN_SCOPES: contextvars.ContextVar[tuple[contextlib.ExitStack, ...]] = contextvars.ContextVar(
    "flyteplugins_mlflow_config_scopes", default=()
)
_PAIRS: Final = {
    "experiment_name": "experiment_id",
    "experiment_id": "experiment_name",
    "run_name": "run_id",
    "run_id": "run_name",
}


def scoped_entries(config: MlflowConfig, current: MlflowConfig | None) -> dict[str, str]:
    """The ``custom_context`` entries that apply ``config`` on top of ``current``.

    Tags are added to the current tags. Setting one of a mutually exclusive pair (experiment name or
    id, run name or id) clears the other, so the result is always a valid configuration.
    """
    entries = encode(config)
    if current is not None and config.tags:
        merged = attrs.evolve(config, tags={**current.tags, **config.tags})
        entries[CONTEXT_PREFIX + "tags"] = encode(merged)[CONTEXT_PREFIX + "tags"]
    for name, partner in _PAIRS.items():
        if getattr(config, name) is not None:
            entries[CONTEXT_PREFIX + partner] = ""
    return entries


def decode(context: Mapping[str, str]) -> MlflowConfig | None:
    """Read the settings stored in a ``custom_context``; ``None`` when it holds none.

    Raises:
        ValueError: a setting's value is malformed, or the settings conflict. The message names the
            key and the value, never credentials.
    """
    values = decode_fields(context)
    if values is None:
        return None
    try:
        return MlflowConfig(**values)  # type: ignore[arg-type]
    except (ValueError, TypeError) as e:
        shown = {CONTEXT_PREFIX + k: without_credentials(context[CONTEXT_PREFIX + k]) for k in values}
        msg = (
            f"the mlflow settings in custom_context are invalid ({without_credentials(str(e))}); "
            f"the settings were {shown!r}"
        )
        raise ValueError(msg) from None


def current() -> MlflowConfig | None:
    """The settings in the running task's ``custom_context``, or ``None`` outside a task or without any.

    Raises:
        ValueError: a malformed ``mlflow_*`` entry.
    """
    context = _flyte.custom_context()
    return None if context is None else decode(context)
