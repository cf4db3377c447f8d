"""The exact ``custom_context`` codec: every setting as ``mlflow_<setting>``, one known kind per setting.

Flyte's ``custom_context`` is a flat ``dict[str, str]``, so decoding never guesses: a text keeps its
characters exactly (``"2024"`` and ``"true"`` stay strings), a flag is ``"true"`` or ``"false"``, a
mapping is a JSON object, a number its decimal text. An empty string means "not set": Flyte can only
add keys to a context, so that is how a scoped override clears one.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any, Final

from flyteplugins.mlflow._settings.checks import without_credentials
from flyteplugins.mlflow._settings.enums import (
    OnRetry,
    OnTrackingError,
    RankScope,
    RunMode,
    to_on_retry,
    to_on_tracking_error,
    to_rank_scope,
    to_report_goal,
    to_run_mode,
)
from flyteplugins.mlflow._settings.frozen import thaw
from flyteplugins.mlflow._settings.settings import FIELDS, MlflowTrackingSettings
from flyteplugins.mlflow._tags import CONTEXT_PREFIX

__all__ = ["decode_fields", "encode"]


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
    "tracing": _Kind.FLAG,
}
_DEFAULTS: Final = {f.name: f.default for f in FIELDS}


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
    for f in FIELDS:
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


def decode_fields(context: Mapping[str, str]) -> dict[str, object] | None:
    """The settings' values stored in a ``custom_context``; ``None`` when it holds none.

    Keys that do not name a setting are ignored.

    Raises:
        ValueError: a setting's value is malformed. The message names the key and the value.
    """
    values: dict[str, object] = {}
    found = False
    for f in FIELDS:
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
    return values if found else None
