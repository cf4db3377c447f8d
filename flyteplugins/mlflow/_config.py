"""Settings: ``MlflowConfig``, the tracker's settings and their checks, and the exact context codec.

The settings' enums live in :mod:`flyteplugins.mlflow._enums` and are re-exported here.

Flyte's ``custom_context`` is a flat ``dict[str, str]``. Every setting is stored under the key
``mlflow_<field>``, and each field has one known kind, so decoding never has to guess: a string field
keeps its text exactly (``"2024"``, ``"null"`` and ``"true"`` stay strings), a flag is ``"true"`` or
``"false"``, a mapping is a JSON object, a number is its decimal text. An empty string means "not set":
that is how a scoped override clears a key, since Flyte can only add keys to a context, never remove
them. Empty strings are therefore refused at construction for every text field.
"""

from __future__ import annotations

import enum
import importlib.util
import json
import math
import re
import string
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, NoReturn, Union
from urllib.parse import urlsplit

import attrs

from flyteplugins.mlflow._backlink import check_console_url
from flyteplugins.mlflow._enums import (
    OnRetry,
    OnTrackingError,
    RankScope,
    ReportGoal,
    RunMode,
    to_on_retry,
    to_on_tracking_error,
    to_rank_scope,
    to_report_goal,
    to_run_mode,
)
from flyteplugins.mlflow._frozen import FrozenDict, freeze, thaw

__all__ = [
    "CONTEXT_PREFIX",
    "MlflowConfig",
    "MlflowTrackingSettings",
    "OnRetry",
    "OnTrackingError",
    "RankScope",
    "ReportGoal",
    "RunMode",
    "decode",
    "encode",
    "freeze",
    "set_scope",
    "thaw",
    "to_on_retry",
    "to_on_tracking_error",
    "to_rank_scope",
    "to_report_goal",
    "to_run_mode",
]

CONTEXT_PREFIX: Final = "mlflow_"
DEFAULT_LINK_TEMPLATE: Final = "{host}/#/experiments/{experiment_id}/runs/{run_id}"
LINK_FIELDS: Final = frozenset({"host", "experiment_id", "run_id"})
DEFAULT_OWN_LINK_TEMPLATE: Final = (
    "{host}/#/experiments/{experiment_id}/runs?searchFilter={filter}"
    "&orderByKey=tags.%60mlflow.runName%60&orderByAsc=true&workflowType=machine_learning"
)
OWN_LINK_FIELDS: Final = frozenset({"host", "experiment_id", "filter"})
START_RUN_KWARGS: Final = {"description": str, "log_system_metrics": bool}


# --- converters and validators -----------------------------------------------------------------

Json = Union[
    str, int, float, bool, None, "list[Json]", "dict[str, Json]", "FrozenDict[str, Json]", "tuple[Json, ...]"
]


def _check_json(field: str, value: object, path: str) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = f"{field}{path} must be a finite number, got {value!r}"
            raise ValueError(msg)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(field, item, f"{path}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                msg = f"{field}{path} keys must be strings, got {type(k).__name__} {k!r}"
                raise TypeError(msg)
            _check_json(field, v, f"{path}[{k!r}]")
        return
    kinds = "str, int, float, bool, None, list, dict"
    msg = f"{field}{path} must hold JSON values ({kinds}), got {type(value).__name__}"
    raise TypeError(msg)


def _checked_tags(value: object) -> FrozenDict[str, str]:
    if value is None:
        return FrozenDict()
    if not isinstance(value, Mapping):
        msg = f"tags must be a mapping of str to str, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            msg = f"tags must map str to str, got {k!r}: {v!r}"
            raise TypeError(msg)
        if not k:
            msg = "tags must not have an empty key"
            raise ValueError(msg)
    return FrozenDict(value)


def _tags(value: Mapping[str, str] | None) -> FrozenDict[str, str]:
    return _checked_tags(value)


def _checked_json_mapping(field: str, value: object) -> FrozenDict[str, Any]:
    if value is None:
        return FrozenDict()
    if not isinstance(value, Mapping):
        msg = f"{field} must be a mapping, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    _check_json(field, value, "")
    frozen: FrozenDict[str, Any] = freeze(value)
    return frozen


def _autolog_kwargs(value: Mapping[str, Any] | None) -> FrozenDict[str, Any]:
    return _checked_json_mapping("autolog_kwargs", value)


def _run_kwargs(value: Mapping[str, Any] | None) -> FrozenDict[str, Any]:
    frozen = _checked_json_mapping("run_kwargs", value)
    for key, val in frozen.items():
        expected = START_RUN_KWARGS.get(key)
        if expected is None:
            choices = ", ".join(sorted(START_RUN_KWARGS))
            msg = (
                f"run_kwargs has unsupported mlflow.start_run argument {key!r}; valid choices: {choices} "
                "(run_id, run_name, experiment_id, tags and nesting have settings of their own)"
            )
            raise ValueError(msg)
        if not isinstance(val, expected):
            msg = f"run_kwargs[{key!r}] must be a {expected.__name__}, got {type(val).__name__} {val!r}"
            raise TypeError(msg)
    return frozen


def _optional_text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        msg = f"{attribute.name} must be a str or None, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if not value:
        msg = f"{attribute.name} must be a non-empty string or None, got ''"
        raise ValueError(msg)


def _optional_bool(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, bool):
        msg = f"{attribute.name} must be a bool or None, got {type(value).__name__} {value!r}"
        raise TypeError(msg)


def _bool(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        msg = f"{attribute.name} must be a bool, got {type(value).__name__} {value!r}"
        raise TypeError(msg)


def _tracking_uri(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    _optional_text(instance, attribute, value)
    if value is not None:
        refuse_credentials(attribute.name, value)


def _has_credentials(text: str) -> bool:
    """Whether ``text`` is a URI with a user name or password (``scheme://user:password@host``)."""
    try:
        parts = urlsplit(text)
        return parts.username is not None or parts.password is not None
    except ValueError:  # unparsable (a broken IPv6 host, say): look for userinfo in the authority
        return "://" in text and "@" in text.split("://", 1)[1].split("/", 1)[0]


_USERINFO: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def without_credentials(text: str) -> str:
    """``text`` (a URI, or a message quoting URIs) with every user name and password replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", text)


def refuse_credentials(field: str, uri: str) -> None:
    """Refuse a URI that carries a user name or password.

    Raises:
        ValueError: the URI has credentials in it. The message never repeats them.
    """
    if not _has_credentials(uri):
        return
    try:
        host = urlsplit(uri).hostname or "?"
    except ValueError:
        host = "?"
    msg = (
        f"{field} must not contain credentials (got a URI for host {host!r} with a user name or password "
        "in it). Flyte stores custom_context, and with it the tracking URI, in the run's metadata, where "
        "anyone who can see the run can read it. Pass credentials through MLflow's environment variables "
        "instead: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, "
        "filled from a flyte.Secret on the task environment "
        "(secrets=[flyte.Secret(key=..., as_env_var='MLFLOW_TRACKING_TOKEN')])."
    )
    raise ValueError(msg)


def _framework(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    _optional_text(instance, attribute, value)
    if value is None:
        return
    if not value.isidentifier() or importlib.util.find_spec(f"mlflow.{value}") is None:
        msg = (
            f"framework {value!r} has no MLflow autolog integration: there is no module mlflow.{value}. "
            "Use the name of an MLflow flavor with an autolog() function, such as 'sklearn', "
            "'pytorch', 'tensorflow', 'xgboost' or 'lightgbm'"
        )
        raise ValueError(msg)


def _link_template(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    _optional_text(instance, attribute, value)
    if value is not None:
        check_link_template(value)


def _own_link_template(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    _optional_text(instance, attribute, value)
    if value is not None:
        check_link_template(value, attribute.name, OWN_LINK_FIELDS)


def _console_url(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    _tracking_uri(instance, attribute, value)
    if value is not None:
        check_console_url(attribute.name, value)


def check_link_template(
    template: str, setting: str = "link_template", fields: frozenset[str] = LINK_FIELDS
) -> None:
    """Check that a link template only uses the placeholders ``fields`` (by default ``{host}``,
    ``{experiment_id}`` and ``{run_id}``).

    Args:
        template: the template.
        setting: the setting's name, for the error message.
        fields: the placeholders allowed.

    Raises:
        ValueError: the template uses another name, a positional field, attribute or index access,
            a conversion or format spec, or is not a valid format string.
    """
    allowed = ", ".join("{" + f + "}" for f in sorted(fields))
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        msg = f"{setting} {template!r} is not a valid format string ({e}); use only {allowed}"
        raise ValueError(msg) from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in fields or spec or conversion:
            shown = (
                "{" + field + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
            )
            msg = f"{setting} {template!r} uses {shown}; the only allowed placeholders are {allowed}"
            raise ValueError(msg)


_METRIC_NAME: Final = re.compile(r"[\w./ :-]+")


def _metric_name(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    _optional_text(instance, attribute, value)
    if value is not None and not _METRIC_NAME.fullmatch(value):
        msg = (
            f"{attribute.name} must be an MLflow metric name, got {value!r}; valid characters are "
            "letters, digits, underscores, dashes, periods, slashes, colons and spaces"
        )
        raise ValueError(msg)


def _positive_float(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{attribute.name} must be a number of seconds or None, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if not (math.isfinite(value) and value > 0):
        msg = f"{attribute.name} must be a positive, finite number of seconds, got {value!r}"
        raise ValueError(msg)


def _outage_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _positive_float(instance, attribute, value)  # its TypeError
    elif not (math.isfinite(value) and value >= 0):  # 0 means "never wait"
        msg = f"{attribute.name} must be a finite number of seconds, 0 or more, got {value!r}"
        raise ValueError(msg)


def _retries(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{attribute.name} must be an int or None, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if not 0 <= value <= 10:
        msg = f"{attribute.name} must be between 0 and 10, got {value!r}"
        raise ValueError(msg)


# --- the settings ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True, slots=False)
class MlflowTrackingSettings:
    """The settings shared by :class:`MlflowConfig` and :class:`~flyteplugins.mlflow.MlflowRun`.

    Every field's "unset" value (``None``, ``False``, ``AUTO``, empty mapping) means "no preference":
    the next level of configuration decides. See the user guide for the precedence.
    """

    run_mode: RunMode = attrs.field(default=RunMode.AUTO, converter=to_run_mode)
    tracking_uri: str | None = attrs.field(default=None, validator=_tracking_uri)
    experiment_name: str | None = attrs.field(default=None, validator=_optional_text)
    experiment_id: str | None = attrs.field(default=None, validator=_optional_text)
    run_name: str | None = attrs.field(default=None, validator=_optional_text)
    run_id: str | None = attrs.field(default=None, validator=_optional_text)
    tags: Mapping[str, str] = attrs.field(default=None, converter=_tags)
    autolog: bool = attrs.field(default=False, validator=_bool)
    framework: str | None = attrs.field(default=None, validator=_framework)
    log_models: bool | None = attrs.field(default=None, validator=_optional_bool)
    log_datasets: bool | None = attrs.field(default=None, validator=_optional_bool)
    autolog_kwargs: Mapping[str, Any] = attrs.field(default=None, converter=_autolog_kwargs)
    link_host: str | None = attrs.field(default=None, validator=_tracking_uri)
    link_template: str | None = attrs.field(default=None, validator=_link_template)
    own_link_template: str | None = attrs.field(default=None, validator=_own_link_template)
    flyte_console_url: str | None = attrs.field(default=None, validator=_console_url)
    run_kwargs: Mapping[str, Any] = attrs.field(default=None, converter=_run_kwargs)
    on_tracking_error: OnTrackingError = attrs.field(
        default=OnTrackingError.RAISE, converter=to_on_tracking_error
    )
    async_logging: bool = attrs.field(default=False, validator=_bool)
    on_retry: OnRetry = attrs.field(default=OnRetry.NEW, converter=to_on_retry)
    request_timeout: float | None = attrs.field(default=None, validator=_positive_float)
    request_retries: int | None = attrs.field(default=None, validator=_retries)
    outage_timeout: float | None = attrs.field(default=None, validator=_outage_seconds)
    report: bool = attrs.field(default=False, validator=_bool)
    report_metric: str | None = attrs.field(default=None, validator=_metric_name)
    report_goal: ReportGoal | None = attrs.field(default=None, converter=to_report_goal)
    rank_scope: RankScope = attrs.field(default=RankScope.GLOBAL, converter=to_rank_scope)
    log_inputs: bool = attrs.field(default=False, validator=_bool)

    def __attrs_post_init__(self) -> None:
        if self.experiment_name is not None and self.experiment_id is not None:
            msg = (
                f"experiment_name={self.experiment_name!r} and experiment_id={self.experiment_id!r} "
                "cannot both be set: give one of them"
            )
            raise ValueError(msg)
        if self.run_name is not None and self.run_id is not None:
            msg = (
                f"run_name={self.run_name!r} and run_id={self.run_id!r} cannot both be set: give one of them"
            )
            raise ValueError(msg)


_FIELDS: Final = attrs.fields(MlflowTrackingSettings)


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
        _SCOPE[0](self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _SCOPE[1]()


def _no_scope(*_: object) -> None:
    msg = "import flyteplugins.mlflow to use an MlflowConfig as a context manager"
    raise RuntimeError(msg)


# What ``with config:`` does on entry and exit. ``_context`` puts its scope functions here when it is
# imported (always, with the package), so that this module never imports it.
_SCOPE: list[Callable[..., None]] = [_no_scope, _no_scope]


def set_scope(enter: Callable[[MlflowConfig], None], leave: Callable[[], None]) -> None:
    """Install what ``with config:`` does: ``_context``'s scoped override of ``custom_context``."""
    _SCOPE[:] = [enter, leave]


def _rebuild(fields: dict[str, Any]) -> MlflowConfig:
    return MlflowConfig(**fields)


# --- the codec ---------------------------------------------------------------------------------


class _Kind(enum.Enum):
    TEXT = "a string"
    FLAG = "'true' or 'false'"
    OPTIONAL_FLAG = "'true', 'false' or '' (unset)"
    MODE = "a run mode"
    POLICY = "an error policy"
    RETRY = "a retry policy"
    MAPPING = "a JSON object"
    SECONDS = "a positive number"
    COUNT = "a whole number"
    GOAL = "a report goal or '' (unset)"
    SCOPE = "a rank scope"


_KINDS: Final[dict[str, _Kind]] = {
    "run_mode": _Kind.MODE,
    "tags": _Kind.MAPPING,
    "autolog": _Kind.FLAG,
    "log_models": _Kind.OPTIONAL_FLAG,
    "log_datasets": _Kind.OPTIONAL_FLAG,
    "autolog_kwargs": _Kind.MAPPING,
    "run_kwargs": _Kind.MAPPING,
    "on_tracking_error": _Kind.POLICY,
    "async_logging": _Kind.FLAG,
    "on_retry": _Kind.RETRY,
    "request_timeout": _Kind.SECONDS,
    "request_retries": _Kind.COUNT,
    "outage_timeout": _Kind.SECONDS,
    "report": _Kind.FLAG,
    "report_goal": _Kind.GOAL,
    "rank_scope": _Kind.SCOPE,
    "log_inputs": _Kind.FLAG,
}
_DEFAULTS: Final = {f.name: f.default for f in _FIELDS}


def _is_unset(name: str, value: object) -> bool:
    default = _DEFAULTS[name]
    if default is None:
        return value is None or (isinstance(value, Mapping) and not value)
    return bool(value == default)


def _encode_value(kind: _Kind, value: Any) -> str:
    if kind in (_Kind.FLAG, _Kind.OPTIONAL_FLAG):
        return "true" if value else "false"
    if kind in (_Kind.MODE, _Kind.POLICY, _Kind.RETRY, _Kind.GOAL, _Kind.SCOPE):
        return str(value.value)
    if kind is _Kind.MAPPING:
        return json.dumps(thaw(value), sort_keys=True, separators=(",", ":"))
    if kind in (_Kind.SECONDS, _Kind.COUNT):
        return repr(value)
    return str(value)


def encode(settings: MlflowTrackingSettings) -> dict[str, str]:
    """Encode the settings that are set (not at their defaults) as ``custom_context`` entries."""
    out: dict[str, str] = {}
    for f in _FIELDS:
        value = getattr(settings, f.name)
        if not _is_unset(f.name, value):
            out[CONTEXT_PREFIX + f.name] = _encode_value(_KINDS.get(f.name, _Kind.TEXT), value)
    return out


def _decode_value(key: str, kind: _Kind, text: str) -> object:
    if kind is _Kind.TEXT:
        return text or None
    if kind in (_Kind.FLAG, _Kind.OPTIONAL_FLAG):
        if text in ("true", "false"):
            return text == "true"
        if text == "" and kind is _Kind.OPTIONAL_FLAG:
            return None
    elif kind is _Kind.MODE:
        return to_run_mode(text or RunMode.AUTO)
    elif kind is _Kind.POLICY:
        return to_on_tracking_error(text or OnTrackingError.RAISE)
    elif kind is _Kind.RETRY:
        return to_on_retry(text or OnRetry.NEW)
    elif kind is _Kind.GOAL:
        return to_report_goal(text or None)
    elif kind is _Kind.SCOPE:
        return to_rank_scope(text or RankScope.GLOBAL)
    elif kind is _Kind.MAPPING:
        if text == "":
            return None
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    elif kind is _Kind.SECONDS:
        return float(text) if text else None
    elif kind is _Kind.COUNT:
        return int(text) if text else None
    msg = f"expected {kind.value}"
    raise ValueError(msg)


def decode(context: Mapping[str, str]) -> MlflowConfig | None:
    """Read the settings stored in a ``custom_context``; ``None`` when it holds none.

    Keys that do not name a setting are ignored.

    Raises:
        ValueError: a setting's value is malformed. The message names the key and the value.
    """
    values: dict[str, object] = {}
    found = False
    for f in _FIELDS:
        key = CONTEXT_PREFIX + f.name
        if key not in context:
            continue
        found = True
        text: object = context[key]
        try:
            if not isinstance(text, str):
                msg = f"expected a string, got {type(text).__name__}"
                raise ValueError(msg)
            values[f.name] = _decode_value(key, _KINDS.get(f.name, _Kind.TEXT), text)
        except (ValueError, TypeError) as e:
            # Each part that can quote user input is masked on its own: masking the whole message
            # could take an example URL in the error and an "@" in a later part for one URI's user
            # name, and hide the key between them.
            value, why = without_credentials(repr(text)), without_credentials(str(e))
            msg = f"custom_context[{key!r}] = {value} is not a valid {f.name} setting: {why}"
            raise ValueError(msg) from None
    if not found:
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
