"""The checks every setting passes when it is set: errors name the setting, the value and the choices."""

from __future__ import annotations

import importlib.util
import math
import re
import string
from collections.abc import Mapping
from typing import Any, Final, Union
from urllib.parse import urlsplit

import attrs

from flyteplugins.mlflow._settings.frozen import FrozenDict, freeze

DEFAULT_LINK_TEMPLATE: Final = "{host}/#/experiments/{experiment_id}/runs/{run_id}"
LINK_FIELDS: Final = frozenset({"host", "experiment_id", "run_id"})
DEFAULT_OWN_LINK_TEMPLATE: Final = (
    "{host}/#/experiments/{experiment_id}/runs?searchFilter={filter}"
    "&orderByKey=tags.%60mlflow.runName%60&orderByAsc=true&workflowType=machine_learning"
)
OWN_LINK_FIELDS: Final = frozenset({"host", "experiment_id", "filter"})
TRACE_PAGE_TEMPLATE: Final = "{host}/#/experiments/{experiment_id}/traces?selectedEvaluationId={trace_id}"
"""A trace in MLflow's Traces view (the address MLflow's own UI opens a trace at, MLflow 3)."""
START_RUN_KWARGS: Final = {"description": str, "log_system_metrics": bool}

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
            msg = f"tags must not have an empty key, got {k!r}: {v!r}"
            raise ValueError(msg)
    return FrozenDict(value)


def to_tags(value: Mapping[str, str] | None) -> FrozenDict[str, str]:
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


def to_autolog_kwargs(value: Mapping[str, Any] | None) -> FrozenDict[str, Any]:
    return _checked_json_mapping("autolog_kwargs", value)


def to_run_kwargs(value: Mapping[str, Any] | None) -> FrozenDict[str, Any]:
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


def valid_optional_text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        msg = f"{attribute.name} must be a str or None, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if not value:
        msg = f"{attribute.name} must be a non-empty string or None, got ''"
        raise ValueError(msg)


def valid_optional_bool(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, bool):
        msg = f"{attribute.name} must be a bool or None, got {type(value).__name__} {value!r}"
        raise TypeError(msg)


def valid_bool(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        msg = f"{attribute.name} must be a bool, got {type(value).__name__} {value!r}"
        raise TypeError(msg)


def valid_tracking_uri(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    valid_optional_text(instance, attribute, value)
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


def valid_framework(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    valid_optional_text(instance, attribute, value)
    if value is None:
        return
    if not value.isidentifier() or importlib.util.find_spec(f"mlflow.{value}") is None:
        msg = (
            f"framework {value!r} has no MLflow autolog integration: there is no module mlflow.{value}. "
            "Use the name of an MLflow flavor with an autolog() function, such as 'sklearn', "
            "'pytorch', 'tensorflow', 'xgboost' or 'lightgbm'"
        )
        raise ValueError(msg)


def valid_link_template(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    valid_optional_text(instance, attribute, value)
    if value is not None:
        check_link_template(value)


def valid_own_link_template(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    valid_optional_text(instance, attribute, value)
    if value is not None:
        check_link_template(value, attribute.name, OWN_LINK_FIELDS)


def valid_console_url(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    valid_tracking_uri(instance, attribute, value)
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


def valid_metric_name(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    valid_optional_text(instance, attribute, value)
    if value is not None and not _METRIC_NAME.fullmatch(value):
        msg = (
            f"{attribute.name} must be an MLflow metric name, got {value!r}; valid characters are "
            "letters, digits, underscores, dashes, periods, slashes, colons and spaces"
        )
        raise ValueError(msg)


def valid_positive_float(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{attribute.name} must be a number of seconds or None, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if not (math.isfinite(value) and value > 0):
        msg = f"{attribute.name} must be a positive, finite number of seconds, got {value!r}"
        raise ValueError(msg)


def valid_outage_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        valid_positive_float(instance, attribute, value)  # its TypeError
    elif not (math.isfinite(value) and value >= 0):  # 0 means "never wait"
        msg = f"{attribute.name} must be a finite number of seconds, 0 or more, got {value!r}"
        raise ValueError(msg)


def valid_retries(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{attribute.name} must be an int or None, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if not 0 <= value <= 10:
        msg = f"{attribute.name} must be between 0 and 10, got {value!r}"
        raise ValueError(msg)


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
